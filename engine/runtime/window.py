"""One step's dispatch window (SPEC §3, backpressure; README, durability), counted on the
coordinator from what it sees: futures it submitted, tasks it heard start, futures
that completed and results it committed.

The coordinator hands a task to the executor only while fewer than ``queue_depth``
(at least one) wait to start and fewer than ``max_running + queue_depth`` are
unsettled: queued, running, or finished with a result not committed yet (it calls
:meth:`Window.settle` once it has). So a kill -9 loses the results of at most
``max_running + queue_depth`` finished tasks, however fast tasks finish. A task
counts as started when its ``TaskStarted`` effect arrives or, failing that, when its
future completes: nothing is counted inside a worker, so any executor works, and a
lost effect cannot stall the step.

That assumes the executor runs at most ``max_running`` tasks at once (a pool of that
many workers). One that may run more (a Dask scheduler with more workers; a pool
the caller made) is handed at most ``max_running`` tasks not completed yet
(``bounded=False``): the queue is then held on the coordinator, and the loss bound
is the same.
"""

from __future__ import annotations


class Window:
    def __init__(self, max_running: int, queue_depth: int, bounded: bool = True) -> None:
        self.max_running = max(1, max_running)
        self.queue_depth = max(0, queue_depth)
        self.bounded = bounded  # the executor itself runs at most max_running at once
        self.submitted = 0
        self.settled = 0
        self.completed = 0
        self._started: set[str] = set()  # keys heard of, not settled yet
        self._counted = 0  # started (heard of, or completed)

    def full(self) -> bool:
        unsettled = self.submitted - self.settled
        if unsettled >= self.max_running + self.queue_depth:
            return True
        if not self.bounded:
            return self.submitted - self.completed >= self.max_running
        return self.submitted - self._counted >= max(1, self.queue_depth)

    def submit(self) -> None:
        self.submitted += 1

    def unsubmit(self) -> None:
        """The executor refused the task it was handed."""
        self.submitted -= 1

    def started(self, key: str) -> None:
        if key not in self._started:
            self._started.add(key)
            self._counted += 1

    def complete(self, key: str) -> None:
        """Its future is done (ran, was skipped, or was cancelled before it started)."""
        self.started(key)
        self.completed += 1

    def settle(self, keys: list[str]) -> None:
        """Those tasks' futures are dealt with: their results are committed (or there were
        none: cancelled or skipped)."""
        self.settled += len(keys)
        self._started.difference_update(keys)  # held only while in flight

    def running(self) -> int:
        """How many of the step's tasks are running now (started, not completed)."""
        return max(0, self._counted - self.completed)
