"""After a step's tasks: merge their deltas in task order, route to the next frontier,
and the task events its commit carries."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def merge(
    wf: Workflow,
    outcomes: list[TaskReport],
    state: dict[str, Any],
    texts: dict[str, str],
    log: AppendLog,
    step: int,
    policy: str,
    on_conflict: Callable[[str, tuple[str, str]], None],
) -> Merged:
    """Merge the step's deltas in task order (``policy``: the conflict policy)."""
    new_state = dict(state)
    owned: set[str] = set()
    writer: dict[str, Task] = {}  # replace key -> the task that wrote it
    touched: list[str] = []
    grown: dict[str, int] = {}  # append/extend key -> its length before this step
    for o in outcomes:
        for k, v in (o.delta or {}).items():
            reducer = wf.state[k].reducer
            if reducer == "replace":
                if k in writer:
                    on_conflict(k, (writer[k].node, o.task.node))
                    if policy == "fail":
                        a, b = writer[k].label, o.task.label
                        raise RunFailed(
                            f"merge conflict on state key {k!r}: written by {a!r}"
                            f" and {b!r} in step {step}",
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
            if k not in touched:
                touched.append(k)
    changed, appended, digests = {}, {}, {}
    extended: Grown = {}
    for k in touched:
        start = grown.get(k, -1)
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
    tasks: list[Task],
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
