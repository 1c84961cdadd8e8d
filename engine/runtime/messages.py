"""What the coordinator hands a worker, and what comes back: plain, picklable values.

A :class:`TaskSpec` is one task with everything it needs: the workflow by digest
(its text rides along only where a worker may not have it yet), the step's state
as a plain dict, the settings and secrets as plain values, and the drive's effects
sink and stop flags (``runtime/effects.py``). A :class:`TaskReport` is what the task
did. Neither holds a lock, an open file or a callback of the coordinator's: a
thread pool passes them by reference, a process pool or Dask pickles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..nodes.tracebacks import Trace
from ..records import Task
from ..store.base import TaskOutput
from .effects import Control, EffectSink, UsageReported


@dataclass(frozen=True, slots=True)
class WorkflowRef:
    """The workflow by digest; ``text`` is None where the worker has it installed."""

    digest: str
    path: str  # the file it was loaded from: its folder is the run's working directory
    text: str | None = None


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """The run's settings a task needs, one object per drive."""

    output_limit: int
    grace_s: float
    secrets: tuple[str, ...] = ()  # the values the masker hides
    extra: dict[str, Any] = field(default_factory=dict)  # llm_replay, llm_record
    live_output: bool = False  # send complete output lines as they are printed


@dataclass(frozen=True, slots=True)
class TaskSpec:
    run_id: str
    drive: str  # this drive of the run: worker-side caches are per drive
    step: int
    task: Task
    workflow: WorkflowRef
    state: dict[str, Any]  # the step's snapshot; tasks must not change it
    settings: TaskSettings
    effects: EffectSink
    control: Control
    # append/extend keys the last step grew at their end, for in-process workers only
    # (a read-only view then freezes only the new items); empty where pickled
    grown: dict[str, tuple[list[Any], list[Any]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    started_at: float
    duration: float
    error: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class TaskReport:
    """One task's outcome.

    ``status``: ok | failed | interrupted (stopped by SIGINT/SIGTERM: resume runs it
    again) | skipped (never ran: picked up after the budget or a signal). Every text
    in it is masked by the run's secrets. ``effects`` counts the effects this execution
    of the task sent before this report; ``usage`` repeats its billed calls (applied once).
    """

    task: Task
    status: str
    delta: dict[str, Any] | None
    attempts: tuple[Attempt, ...] = ()
    started_at: float = 0.0
    duration: float = 0.0
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    usage: tuple[UsageReported, ...] = ()
    outputs: tuple[TaskOutput, ...] = ()  # what each attempt printed
    trace: Trace | None = None  # the last attempt's Python traceback, trimmed
    effects: int = 0
    host: str = ""
    pid: int = 0
    reused: bool = False  # a result saved before a crash, not run again
    execution: str = ""  # the id its effects carry (a re-run of the task has another)


TaskOutcome = TaskReport  # what ``Engine(after_task=...)`` receives
