"""What every node kind shares: the task context, the errors a task can raise."""

from __future__ import annotations

import logging
import operator
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..output import DEFAULT_LIMIT, Capture
from ..records import Flag, LLMUsage
from ..secrets import Masker
from .tracebacks import Trace


class TaskError(Exception):
    """An attempt failed; ``retryable`` says whether another attempt may help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        reason: str = "error",
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason = reason
        self.stdout: str | None = None
        self.stderr: str | None = None
        self.trace: Trace | None = None  # a Python exception's trimmed traceback


class TaskTimeout(TaskError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="timeout")


class Abandoned(BaseException):
    """Raised on a thread whose call was abandoned, once the call returns: the task
    went on on another thread (``nodes/python.py``), so this one only unwinds."""


class TaskEffects(Protocol):
    """How an attempt tells the coordinator what must outlive it (``runtime/worker.py``)."""

    def usage(self, ctx: Context, usage: LLMUsage) -> None:
        """A billed call: returns once the ledger row is committed (raises TaskError if not)."""

    def proc_started(self, ctx: Context, pid: int) -> str | None:
        """A command's group, noted for a takeover; its id, or None if it cannot be noted."""

    def proc_ended(self, ctx: Context, proc_id: str) -> None: ...


class RunScope:
    """One drive of a run as its tasks see it on one worker: flags, live processes, settings.

    The flags are the coordinator's (``runtime/effects.py``): ``threading.Event`` for
    threads, proxies of the coordinator's for worker processes.
    """

    def __init__(
        self,
        base_dir: Path,
        run_id: str,
        *,
        stop: Flag | None = None,
        abort: Flag | None = None,
        over_budget: Flag | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.base_dir = base_dir
        self.run_id = run_id
        self.stop: Flag = stop or threading.Event()  # SIGINT/SIGTERM: no new attempts
        self.grace_s = grace_s  # how long running work may go on after stop
        self.abort: Flag = abort or threading.Event()  # the grace period is over
        self.over_budget: Flag = over_budget or threading.Event()  # no new LLM calls
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.settings: dict[str, Any] = {}
        self.output_limit = DEFAULT_LIMIT  # bytes of what an attempt printed that are kept
        # append/extend keys the last step grew at their end: key -> (the list before, the
        # list after, whose first len(before) items are before's own); handed over with
        # a step's tasks, so a read-only view of the state freezes only the new items
        self.grown: dict[str, tuple[list[Any], list[Any]]] = {}
        # masks the run's secrets in every text a task hands back
        self.masker = Masker()

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)

    def untrack(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        from .command import kill_group

        with self._lock:
            procs = list(self._procs)
        for p in procs:
            kill_group(p)


_cancel_lock = threading.Lock()


@dataclass(slots=True)
class Context:
    """The ``ctx`` a Python node receives (and every node kind uses internally)."""

    run_id: str
    step: int
    node: str
    attempt: int
    item: Any
    index: int | None
    scope: RunScope
    usage: list[LLMUsage] = field(default_factory=list)
    output: Capture | None = None  # what the attempt prints goes here
    effects: TaskEffects | None = None  # None: nothing reaches a coordinator (a bare ctx)
    # made on first use: most calls never look at it (an Event is a condition variable)
    _cancelled: threading.Event | None = field(default=None, repr=False, compare=False)

    @property
    def cancelled(self) -> threading.Event:
        """Set once the call was abandoned (past its timeout, or the run interrupted)."""
        flag = self._cancelled
        if flag is None:
            with _cancel_lock:  # the call's thread and its waiter may ask at once
                flag = self._cancelled
                if flag is None:
                    flag = self._cancelled = threading.Event()
        return flag

    @property
    def workflow_dir(self) -> Path:
        """The workflow file's folder, which is also the working directory of the run."""
        return self.scope.base_dir

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"flowrun.node.{self.node}")

    def record_llm_usage(
        self,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cached: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
        reasoning: int = 0,
    ) -> None:
        """Report an LLM call made by the node itself, so the cost ledger counts it.

        ``tokens_in`` counts every input token, cache reads (``cached``) and cache
        writes (``cache_write``) included, as OpenAI reports them; ``cache_write_1h`` is
        the part of the writes made to Anthropic's 1-hour cache. ``tokens_out`` counts
        every output token, ``reasoning`` ones included. So ``cached + cache_write <=
        tokens_in``, ``cache_write_1h <= cache_write`` and ``reasoning <= tokens_out``.
        """
        counts = {
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cached": cached,
            "cache_write": cache_write,
            "cache_write_1h": cache_write_1h,
            "reasoning": reasoning,
        }
        for name, value in counts.items():
            try:
                counts[name] = operator.index(value)  # int, numpy ints; not floats or bools
            except TypeError:
                counts[name] = -1
            if isinstance(value, bool) or counts[name] < 0:
                raise ValueError(f"record_llm_usage: {name} must be an integer ≥ 0, not {value!r}")
        c = counts
        if c["cached"] > c["tokens_in"]:
            raise ValueError(
                f"record_llm_usage: cached ({c['cached']}) exceeds tokens_in ({c['tokens_in']}),"
                " which counts cached tokens too"
            )
        for part, whole in (
            ("cached + cache_write", "tokens_in"),
            ("cache_write_1h", "cache_write"),
            ("reasoning", "tokens_out"),
        ):
            n = sum(c[k] for k in part.split(" + "))
            if n > c[whole]:
                raise ValueError(
                    f"record_llm_usage: {part} ({n}) exceeds {whole} ({c[whole]}),"
                    " which counts them too"
                )
        u = LLMUsage(
            model,
            c["tokens_in"],
            c["tokens_out"],
            cached=c["cached"],
            cache_write=c["cache_write"],
            provider="python",
            attempt=self.attempt,
            cache_write_1h=c["cache_write_1h"],
            reasoning=c["reasoning"],
        )
        self.report_usage(u)

    def report_usage(self, usage: LLMUsage) -> None:
        """Hand one billed call to the run's cost ledger; returns once its row is committed."""
        self.usage.append(usage)
        if self.effects is not None:
            self.effects.usage(self, usage)


def template_scope(state: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    return {
        "state": state,
        "item": ctx.item,
        "index": ctx.index,
        "run": {"id": ctx.run_id, "step": ctx.step},
        "node": ctx.node,
    }
