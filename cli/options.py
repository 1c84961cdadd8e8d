"""Options shared by several commands, and the one way errors are printed."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="FLOWRUN_DB",
        metavar="FILE",
        help="SQLite file (default .flowrun/flowrun.db) or postgresql:// URL.",
    ),
]
MaxConcurrency = Annotated[
    int | None,
    typer.Option("--max-concurrency", min=1, metavar="N", help="Tasks running at once."),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor",
        envvar="FLOWRUN_EXECUTOR",
        metavar="threads|processes|dask|tcp://HOST:PORT",
        help="Where tasks run: threads (default), processes, a Dask cluster started for"
        " the run, or an existing Dask scheduler.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the final summary.")]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="A line for each task's start and end (with its duration)."
    ),
]
Durability = Annotated[
    str,
    typer.Option(
        "--durability",
        metavar="normal|full",
        help="normal (WAL, synchronous=NORMAL) or full (fsync every commit).",
    ),
]
Events = Annotated[
    str | None,
    typer.Option(
        "--events", metavar="FILE.jsonl", help="Append every event to this JSON-lines file."
    ),
]
OutputLimit = Annotated[
    str | None,
    typer.Option(
        "--output-limit",
        envvar="FLOWRUN_OUTPUT_LIMIT",
        metavar="SIZE",
        help="Keep this much of what each task attempt prints, its end (default 1MiB).",
    ),
]
Junit = Annotated[
    str | None,
    typer.Option(
        "--junit",
        metavar="FILE.xml",
        envvar="FLOWRUN_JUNIT",
        help="Write a JUnit XML report here when the run ends, however it ends (atomic).",
    ),
]
RunRef = Annotated[
    str, typer.Argument(metavar="RUN_ID", help="Run id, a unique prefix, or 'latest'.")
]
WorkflowFile = Annotated[str, typer.Argument(metavar="FILE", help="The workflow YAML file.")]

T = TypeVar("T")

DEFAULT_DB = ".flowrun/flowrun.db"

_json_written = False  # main() prints an error object only if nothing was printed yet


def print_error(exc: Any) -> None:
    print(f"flowrun: error: {exc.message}", file=sys.stderr)
    if getattr(exc, "hint", None):
        print(f"  hint: {exc.hint}", file=sys.stderr)


MAX_ERRORS_SHOWN = 20  # an invalid workflow's errors on stderr; --json lists them all


def print_errors(errors: list[Any]) -> None:
    """Each error on its line (with its hint), the first :data:`MAX_ERRORS_SHOWN` of them."""
    for exc in errors[:MAX_ERRORS_SHOWN]:
        print_error(exc)
    more = len(errors) - MAX_ERRORS_SHOWN
    if more > 0:
        print(
            f"flowrun: error: and {more} more error{'s' if more > 1 else ''}"
            " (`flowrun validate --json FILE` lists them all)",
            file=sys.stderr,
        )


def write_json(data: Any) -> None:
    """The one JSON document of a ``--json`` command, on stdout: strict JSON or nothing."""
    from flowrun.engine.errors import StoreError
    from flowrun.engine.jsonvalue import JSONValueError, dumps

    try:
        text = dumps(data, compact=False)
    except JSONValueError as exc:  # only a database an older flowrun wrote can hold one
        raise StoreError(
            f"cannot print the result as JSON: {exc}",
            hint="the run holds a value JSON cannot (NaN/Infinity); read it without --json",
        ) from None
    global _json_written
    _json_written = True
    if sys.stdout is None:  # started with stdout closed
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def json_written() -> bool:
    return _json_written


@contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """While a ``--json`` run executes, whatever nodes print goes to stderr.

    Python nodes share this process's stdout (``print``, ``os.system``), which would
    corrupt the one JSON object stdout must hold; both ``sys.stdout`` and fd 1 are
    pointed at stderr until the block ends.
    """
    if not active or sys.stdout is None:
        yield
        return
    sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # stdout closed: nothing to protect
        saved = None
    previous = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = previous
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def open_sqlite(db: str, make: Callable[[], T]) -> T:
    """``make()`` the store at ``db``; a path that cannot be a database is a usage error
    (a server URL's failures are the store's own)."""
    from flowrun.engine import UsageError
    from flowrun.engine.errors import DatabaseRefused, StoreError

    existed = "://" in db or os.path.lexists(db)
    try:
        store = make()
    except StoreError as exc:
        if existed or isinstance(exc, DatabaseRefused):
            raise
        raise UsageError(
            exc.message, hint="pick a --db (or FLOWRUN_DB) in a folder you can write to"
        ) from None
    _opened.append(store)
    return store


_opened: list[Any] = []  # stores this command opened, closed by close_stores()


def close_stores() -> None:
    """Close every store the command opened, so SQLite folds its WAL back into the file
    and removes ``-wal``/``-shm`` (an interpreter exit does not close connections)."""
    while _opened:
        with contextlib.suppress(Exception):
            _opened.pop().close()


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")


def check_run_id(run_id: str | None) -> None:
    """A chosen ``--run-id`` must be typeable later as ``flowrun resume RUN_ID``."""
    from flowrun.engine import UsageError

    if run_id is None:
        return
    if run_id == "latest":
        raise UsageError(
            "--run-id latest: 'latest' always means the newest run",
            hint="pick another id, e.g. a CI job id",
        )
    if not _RUN_ID.fullmatch(run_id):
        raise UsageError(
            f"--run-id {run_id!r}: use letters, digits and . _ : @ + = -"
            " (at most 128, starting with a letter or digit)",
            hint='e.g. --run-id "$GITHUB_RUN_ID"',
        )


def output_limit(text: str | None) -> int | None:
    """``--output-limit`` in bytes (``512KiB``, ``1MiB``, ``65536``…); None: the default."""
    from flowrun.engine import UsageError
    from flowrun.engine.output import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--output-limit: {exc}") from None
