"""Every failure flowrun reports to a user is a :class:`FlowrunError`.

The tree::

    FlowrunError                 exit 1 unless a subclass says otherwise
    ├── WorkflowError            exit 2  invalid workflow file (file:line:col, key, hint);
    │                                    ``errors`` holds every error the file has
    ├── UsageError               exit 2  bad flags or arguments
    ├── ResumeRefused            exit 3  unknown run, ambiguous prefix, live lease
    │   └── RunExists            exit 3  a new run's id is taken (``start`` may continue it)
    ├── RunFailed                exit 1  a task failed after its last attempt
    │   └── BudgetExceeded       exit 1  the cost ledger passed --max-cost
    ├── Interrupted              exit 130 SIGINT/SIGTERM
    └── StoreError               exit 1  the database cannot be used
        ├── DatabaseRefused      exit 2  --db is no flowrun database (a folder, another
        │                                application's file): left exactly as it was
        ├── LeaseLost            exit 1  another process took the run over
        └── StepAlreadyCommitted exit 1  a step's idempotency key was seen before

Each carries a one-line ``message`` and, optionally, a ``hint``; the CLI has one
handler that prints both and exits with ``exit_code``.
"""

from __future__ import annotations

from collections.abc import Sequence


class FlowrunError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class WorkflowError(FlowrunError):
    """An invalid workflow: names the file, line, column and key."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
        hint: str | None = None,
        errors: Sequence[WorkflowError] = (),
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        where = ""
        if file is not None:
            where = file
            if line is not None:
                where += f":{line}:{column or 1}"
            where += ": "
        super().__init__(f"{where}{message}", hint=hint)
        self.cause = message
        # every error found in one pass, this one first; ``message`` is the first's
        self.errors: tuple[WorkflowError, ...] = tuple(errors) or (self,)

    @classmethod
    def collected(cls, errors: Sequence[WorkflowError]) -> WorkflowError:
        """One error standing for ``errors`` (at least one): the first, carrying them all."""
        first = errors[0]
        return cls(
            first.cause,
            file=first.file,
            line=first.line,
            column=first.column,
            key=first.key,
            hint=first.hint,
            errors=errors,
        )


class UsageError(FlowrunError):
    exit_code = 2


class ResumeRefused(FlowrunError):
    exit_code = 3


class RunExists(ResumeRefused):
    """The id chosen for a new run is already recorded (raised by the store's insert)."""


class RunFailed(FlowrunError):
    exit_code = 1


class BudgetExceeded(RunFailed):
    pass


class Interrupted(FlowrunError):
    exit_code = 130


class StoreError(FlowrunError):
    exit_code = 1


class DatabaseRefused(StoreError):
    exit_code = 2


class LeaseLost(StoreError):
    pass


class StepAlreadyCommitted(StoreError):
    pass
