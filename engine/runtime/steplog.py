"""A step's task events, kept compactly until its commit writes them.

Each task of a committed step leaves one ``task_succeeded`` event (after a
``task_retried`` one per failed attempt before it). Holding a million ``Event``s
until the commit would cost more than the step's state; :class:`StepLog` keeps, as
the step's reports merge in task order, only what an event needs that its task
does not say (when it ended, how long it ran, its last attempt), and
:class:`StepEvents` makes the events from it, in the same order and with the same
sequence numbers and fields as making them all at once would give.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import overload

from ..events import Outbox
from ..records import Task
from ..store.base import Event
from .messages import Attempt, TaskReport


class StepLog:
    """What the events of a step's tasks need, gathered as their reports merge in order."""

    __slots__ = ("_count", "attempt", "duration", "ended", "odd", "tasks")

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.tasks = tasks
        self.ended = array("d")  # when each task ended (started_at + duration)
        self.duration = array("d")
        self.attempt = array("q")  # the number of its last attempt
        # position -> (status, error, its retried attempts), for a task that did not simply
        # succeed (few): what its events say beyond the arrays
        self.odd: dict[int, tuple[str, str | None, tuple[Attempt, ...]]] = {}
        self._count = 0  # the events they leave

    def add(self, o: TaskReport) -> None:
        """The next task's report, in task order."""
        i = len(self.ended)
        attempts = o.attempts
        self.ended.append(o.started_at + o.duration)
        self.duration.append(o.duration)
        self.attempt.append(attempts[-1].attempt if attempts else 1)
        retried = (
            tuple(a for a in attempts[:-1] if a.error is not None) if len(attempts) > 1 else ()
        )
        if retried or o.status != "ok" or o.error is not None:
            self.odd[i] = (o.status, o.error, retried)
        self._count += 1 + len(retried)

    def __len__(self) -> int:
        """How many events the step's tasks leave."""
        return self._count

    def events(self, outbox: Outbox, step: int) -> StepEvents:
        """The step's events: its tasks' (their sequence numbers taken from ``outbox``
        now), then what is appended to its ``tail`` (made after them)."""
        return StepEvents(self, outbox, step, outbox.reserve(len(self)))


class StepEvents(Sequence[Event]):
    """A step's events, made as they are read: its tasks' in task order, then its tail.

    Iterating twice gives equal events. Indexing past the tasks' events (the step's
    own, last) is immediate; an index among them iterates to it."""

    __slots__ = ("_first", "_log", "_n", "_outbox", "_step", "tail")

    def __init__(self, log: StepLog, outbox: Outbox, step: int, first_seq: int) -> None:
        self._log, self._outbox, self._step, self._first = log, outbox, step, first_seq
        self._n = len(log)
        self.tail: list[Event] = []

    def __len__(self) -> int:
        return self._n + len(self.tail)

    @overload
    def __getitem__(self, i: int) -> Event: ...

    @overload
    def __getitem__(self, i: slice) -> list[Event]: ...

    def __getitem__(self, i: int | slice) -> Event | list[Event]:
        if isinstance(i, slice):
            return list(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("event index out of range")
        if i >= self._n:
            return self.tail[i - self._n]
        for j, e in enumerate(self._task_events()):
            if j == i:
                return e
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[Event]:
        yield from self._task_events()
        yield from self.tail

    def _task_events(self) -> Iterator[Event]:
        log, make, step = self._log, self._outbox.make, self._step
        seq = self._first
        odd, ended, duration, attempt = log.odd, log.ended, log.duration, log.attempt
        for i, t in enumerate(log.tasks):
            status, error, retried = odd.get(i, ("ok", None, ()))
            for a in retried:
                yield make(
                    "task_retried",
                    step=step,
                    node=t.node,
                    attempt=a.attempt,
                    duration=a.duration,
                    error=a.error,
                    ts=a.started_at,
                    data={"index": t.index},
                    seq=seq,
                )
                seq += 1
            yield make(
                "task_succeeded" if status == "ok" else "task_failed",
                step=step,
                node=t.node,
                attempt=attempt[i],
                duration=duration[i],
                error=error,
                ts=ended[i],
                data={"index": t.index, "key": t.key},
                seq=seq,
            )
            seq += 1
