"""After a step's tasks: merge their deltas in task order, route to the next frontier,
and the task events its commit carries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import RunFailed
from ..events import Outbox
from ..jsonvalue import dumps
from ..records import Frontier, Task
from ..spec.model import Workflow
from ..store.base import Event
from . import frontier as fr
from .messages import TaskReport
from .reducers import AppendLog, ReduceError, reduce
from .steplog import StepLog

Grown = dict[str, tuple[list[Any], list[Any]]]


class Merged:
    """A step's merge: the new state and what its commit stores.

    ``changed``: the JSON of the keys stored whole; ``appended``: the JSON of the items
    each append/extend key stored as a delta gained; ``digests``: the digests of those
    delta keys; ``grown``: append/extend keys that grew at their end (the list before,
    the list after), so the next step's read-only views freeze only the new items.
    """

    __slots__ = ("appended", "changed", "digests", "grown", "state")

    def __init__(
        self,
        state: dict[str, Any],
        changed: dict[str, str],
        appended: dict[str, str],
        digests: dict[str, str],
        grown: Grown,
    ) -> None:
        self.state, self.changed, self.appended = state, changed, appended
        self.digests, self.grown = digests, grown


class StepMerge:
    """Merges a step's deltas in task order as its tasks' reports arrive, whatever order
    they arrive in (``policy``: the conflict policy).

    A report waits only for those of the tasks before it: while tasks end roughly in
    order, what is held is about the dispatch window. The window counts settled
    results, not merged ones, so one slow task near the front keeps every report
    that arrives after it waiting here until it ends (a 20,000-item foreach whose
    first item sleeps holds 19,999). A merge that fails (a conflict, a reducer's
    error) is raised by :meth:`result`, once the step's tasks have all finished, as
    before. ``log`` gathers the step's task events as they merge.
    """

    def __init__(
        self,
        wf: Workflow,
        tasks: Sequence[Task],
        state: dict[str, Any],
        texts: dict[str, str],
        log: AppendLog,
        step: int,
        policy: str,
        on_conflict: Callable[[str, tuple[str, str]], None],
    ) -> None:
        self.wf, self.state, self.texts, self.appends = wf, state, texts, log
        self.step, self.policy, self.on_conflict = step, policy, on_conflict
        self.log = StepLog(tasks)
        self.new_state = dict(state)
        self.owned: set[str] = set()
        self.writer: dict[str, Task] = {}  # replace key -> the task that wrote it
        self.touched: dict[str, None] = {}  # keys written, in the order first written
        self.grown: dict[str, int] = {}  # append/extend key -> its length before this step
        self.waiting: dict[int, TaskReport] = {}  # arrived before a task ahead of them
        self.merged = 0  # the tasks merged: the position of the next one
        self.error: RunFailed | None = None

    def arrived(self, i: int, report: TaskReport) -> None:
        """The report of task ``i`` of the step: merged once those of the tasks before are."""
        if i != self.merged:
            self.waiting[i] = report
            return
        self._add(report)
        while self.merged in self.waiting:
            self._add(self.waiting.pop(self.merged))

    def _add(self, o: TaskReport) -> None:
        self.merged += 1
        self.log.add(o)
        if self.error is None:
            try:
                self._merge(o)
            except RunFailed as exc:
                self.error = exc

    def _merge(self, o: TaskReport) -> None:
        wf, new_state, owned, writer, grown = (
            self.wf,
            self.new_state,
            self.owned,
            self.writer,
            self.grown,
        )
        for k, v in (o.delta or {}).items():
            reducer = wf.state[k].reducer
            if reducer == "replace":
                if k in writer:
                    self.on_conflict(k, (writer[k].node, o.task.node))
                    if self.policy == "fail":
                        a, b = writer[k].label, o.task.label
                        raise RunFailed(
                            f"merge conflict on state key {k!r}: written by {a!r}"
                            f" and {b!r} in step {self.step}",
                            hint="give the key a reducer (append, merge, …) or set"
                            " config.conflict_policy: last_writer_wins",
                        )
                writer[k] = o.task
            if reducer in ("append", "extend") and k not in grown:
                before = new_state[k]
                grown[k] = len(before) if isinstance(before, list) else -1
            try:
                new_state[k] = reduce(reducer, new_state[k], v, k, owned=k in owned)
            except ReduceError as exc:
                raise RunFailed(f"node {o.task.node!r}: {exc}") from None
            if reducer in ("append", "extend", "merge"):
                owned.add(k)
            self.touched[k] = None

    def result(self) -> Merged:
        """The step's merge, once every task's report arrived; a failed merge raises."""
        if self.error is not None:
            raise self.error
        assert not self.waiting, "a report is still waiting for an earlier task's"
        state, new_state, texts, log = self.state, self.new_state, self.texts, self.appends
        changed, appended, digests = {}, {}, {}
        extended: Grown = {}
        for k in self.touched:
            start = self.grown.get(k, -1)
            if start >= 0 and not log.snapshot_due(k):
                if len(new_state[k]) == start:
                    continue  # extended by nothing
                items = dumps(new_state[k][start:])
                if "{" in items:  # hold dicts as stored (sorted keys), as below
                    new_state[k][start:] = json.loads(items)
                appended[k] = items
                digests[k] = log.delta(k, items, was_empty=start == 0)
                extended[k] = (state[k], new_state[k])  # the same items, then the new ones
                continue
            text = dumps(new_state[k])
            if "{" in text:  # hold dicts as stored (sorted keys), so a resume sees the same
                new_state[k] = json.loads(text)
            if start >= 0:
                digests[k] = log.snapshot(k, text)
            if text != texts[k]:
                changed[k] = text
        return Merged(new_state, changed, appended, digests, extended)


def advance(
    wf: Workflow,
    tasks: Iterable[Task],
    frontier: Frontier,
    state: dict[str, Any],
    run_id: str,
    step: int,
) -> Frontier:
    """The next frontier; a route that fails, or a join that can never run, fails the run."""
    try:
        nxt = fr.advance(wf, tasks, frontier, state, run_id, step)
    except fr.RouteError as exc:
        raise RunFailed(str(exc)) from None
    if not nxt.entries and nxt.held:
        waiting = ", ".join(h.node for h in nxt.held)
        raise RunFailed(
            f"join {waiting} can never run: a node it needs did not run",
            hint="check the needs: lists against the routes taken",
        )
    return nxt


def task_events(outbox: Outbox, step: int, outcomes: list[TaskReport]) -> list[Event]:
    """The events of the step's tasks: each retry, then how each ended."""
    events = []
    for o in outcomes:
        node = o.task.node
        for a in o.attempts[:-1]:  # the last attempt was not retried
            if a.error is not None:
                events.append(
                    outbox.make(
                        "task_retried",
                        step=step,
                        node=node,
                        attempt=a.attempt,
                        duration=a.duration,
                        error=a.error,
                        ts=a.started_at,
                        data={"index": o.task.index},
                    )
                )
        events.append(
            outbox.make(
                "task_succeeded" if o.status == "ok" else "task_failed",
                step=step,
                node=node,
                attempt=o.attempts[-1].attempt if o.attempts else 1,
                duration=o.duration,
                error=o.error,
                ts=o.started_at + o.duration,
                data={"index": o.task.index, "key": o.task.key},
            )
        )
    return events
