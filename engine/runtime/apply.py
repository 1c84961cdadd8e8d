"""The coordinator applies what tasks send: ledger rows, process notes, observer calls.

Effects arrive on the drive's channel (``runtime/effects.py``) while tasks run and
are applied here, on the coordinator, in arrival order; a durable one is
acknowledged once applied. Applying is idempotent where a report repeats an effect:
a billed call is one ledger row whatever carried it (keyed by the task's execution,
attempt and call), and an execution's report forgets whatever process notes its
commands left (not those of an earlier execution of the task, whose worker died).
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import FlowrunError
from ..ledger import Ledger
from ..observer import Observer
from ..records import Task
from ..store.base import ProcRecord, Store
from ..store.leases import me
from .effects import (
    Channel,
    Effect,
    OutputLines,
    ProcEnded,
    ProcStarted,
    TaskRetried,
    TaskStarted,
    UsageReported,
)
from .messages import TaskReport
from .window import Window


class ProcLog:
    """Notes of commands in flight, for a takeover to kill: a row per group as it starts,
    deleted as it ends. Owned by this coordinator (its death orphans them)."""

    def __init__(self, store: Store, run_id: str, token: int) -> None:
        self.store = store
        self.run_id = run_id
        self.token = token
        self.owner = me()
        self.rows: dict[str, int] = {}  # proc id -> row id
        # (task key, execution) -> proc ids
        self.of_task: defaultdict[tuple[str, str], set[str]] = defaultdict(set)

    def started(self, e: ProcStarted) -> None:
        owner = self.owner
        if owner.start is None:
            return  # no /proc here: a takeover could not tell this process from another
        row = self.store.record_proc(
            self.run_id,
            self.token,
            ProcRecord(
                run_id=self.run_id,
                host=e.host,
                owner_pid=owner.pid,
                owner_start=owner.start,
                pid=e.pid,
                pgid=e.pgid,
                start_time=e.start_time,
                step=e.step,
                node=e.node,
                started_at=e.started_at,
                pidns=e.pidns,
                boot=e.boot,
            ),
        )
        self.rows[e.proc_id] = row
        self.of_task[e.key, e.execution].add(e.proc_id)

    def ended(self, key: str, execution: str, proc_id: str) -> None:
        row = self.rows.pop(proc_id, None)
        self.of_task[key, execution].discard(proc_id)
        if row is not None:
            self.store.forget_procs(self.run_id, self.token, [row])

    def task_done(self, key: str, execution: str) -> None:
        """That execution of the task is over: none of its commands runs any more."""
        for proc_id in list(self.of_task.pop((key, execution), ())):
            self.ended(key, execution, proc_id)


class Applier:
    """Applies one drive's effects; :meth:`track` names the tasks they come from (those of
    the step in flight)."""

    def __init__(
        self, ledger: Ledger, procs: ProcLog, observer: Observer, channel: Channel
    ) -> None:
        self.ledger = ledger
        self.procs = procs
        self.observer = observer
        self.channel = channel
        self.step = 0
        self.tasks: dict[str, Task] = {}
        self.window = Window(1, 0)
        # (key, execution) -> effects applied
        self.seen: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._billed: set[tuple[str, str, int, int]] = set()

    def begin_step(self, step: int, window: Window) -> None:
        self.step, self.window = step, window
        self.tasks = {}
        self.seen.clear()
        self._billed.clear()

    def track(self, task: Task) -> None:
        """``task`` of the step is handed to the executor: its effects are the step's."""
        self.tasks[task.key] = task

    def untrack(self, key: str) -> None:
        """The task never ran (or its report is applied): forget it."""
        self.tasks.pop(key, None)

    def apply(self, e: Effect) -> str | None:
        """Apply ``e``; return why it could not be applied (None: it was).

        An effect of a task that is no longer the step's (a Python call abandoned past
        its timeout that goes on calling an API) is still billed and its commands
        still noted; the observer hears only of the step's own tasks.
        """
        task = self.tasks.get(e.key) if e.step == self.step else None
        if task is not None:
            self.seen[e.key, e.execution] += 1
        try:
            if isinstance(e, UsageReported):
                self._bill(e)
            elif isinstance(e, ProcStarted):
                self.procs.started(e)
            elif isinstance(e, ProcEnded):
                self.procs.ended(e.key, e.execution, e.proc_id)
            elif task is None:
                pass
            elif isinstance(e, TaskStarted):
                self.window.started(e.key)
                self.observer.task_started(e.step, task)
            elif isinstance(e, OutputLines):
                self.observer.task_output(e.step, task, e.attempt, e.stream, list(e.lines))
            elif isinstance(e, TaskRetried):
                self.observer.task_retried(e.step, task, e.attempt, e.reason, e.error, e.delay)
        except FlowrunError as exc:  # the lease is lost, or the store cannot be written
            return exc.message
        return None

    def _bill(self, e: UsageReported) -> None:
        mark = (e.key, e.execution, e.usage.attempt, e.call)
        if mark in self._billed:
            return
        self._billed.add(mark)
        self.ledger.record(e.step, e.node, e.index, e.usage)
        if self.ledger.over_budget.is_set():
            self.channel.control.over_budget.set()

    def missing(self, report: TaskReport) -> int:
        """How many of the effects ``report`` counts have not been applied yet."""
        return report.effects - self.seen.get((report.task.key, report.execution), 0)

    def finish(self, report: TaskReport) -> None:
        """Apply what ``report`` repeats of its effects (once), then close its task."""
        key = report.task.key
        for u in report.usage:
            self._bill(u)
        self.procs.task_done(key, report.execution)
        self.seen.pop((key, report.execution), None)
        self.untrack(key)
