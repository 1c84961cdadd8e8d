"""Live hooks for progress views and metrics, called by the coordinator as effects arrive.

The coordinator calls them from its own thread, except ``backpressure`` and
``budget_warning``, which may come from a signal handler's thread too: be thread-safe.
(A task the coordinator runs inline has its effects' hooks called, one at a time, by
the thread its python call runs on, while the coordinator's thread waits for it; what
a hook prints there is not the task's output. ``llm_usage`` of a paid call that a
python call abandoned makes after its run's drive ended is called on that call's
thread.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import CountedTasks, Task


class Observer:
    """No-op base; the console view and the metrics exporter override what they need."""

    def run_found(self, run_id: str, status: str, step: int) -> None:
        """A start by id found the run recorded (``failed``, ``interrupted``, ``crashed``)
        and continues it from ``step``; ``run_started`` follows."""

    def run_started(self, run_id: str, workflow: str, step: int, resumed: bool) -> None: ...

    def step_started(self, step: int, tasks: Sequence[Task]) -> None:
        """The step's tasks are about to be dispatched. A big step's ``tasks`` is made on
        demand (``runtime/tasks.py``): count them with :meth:`node_counts`, and keep
        none of them past this call."""

    @staticmethod
    def node_counts(tasks: Sequence[Task]) -> dict[str, tuple[int, bool]]:
        """Each node's number of tasks among ``tasks``, and whether they are ``foreach``
        items; a step's lazy tasks are counted without making each of them."""
        if isinstance(tasks, CountedTasks):
            return tasks.node_counts()
        counts: dict[str, tuple[int, bool]] = {}
        for t in tasks:
            n, each = counts.get(t.node, (0, False))
            counts[t.node] = (n + 1, each or t.index is not None)
        return counts

    def task_queued(self, step: int, task: Task) -> None: ...

    def task_started(self, step: int, task: Task) -> None: ...

    def task_dropped(self, step: int, task: Task) -> None:
        """A queued task that will not start (budget spent, or a signal); resume runs it."""

    def task_finished(
        self,
        step: int,
        task: Task,
        status: str,
        duration: float,
        attempts: int,
        error: str | None,
        reused: bool,
    ) -> None: ...

    def task_retried(
        self,
        step: int,
        task: Task,
        attempt: int,
        reason: str,
        error: str,
        delay: float,
    ) -> None:
        """Attempt ``attempt`` of ``task`` failed with ``error``; the next starts in ``delay`` s."""

    def task_output(
        self, step: int, task: Task, attempt: int, stream: str, lines: list[str]
    ) -> None:
        """Complete lines a running task printed to ``stream`` (``stdout``/``stderr``)."""

    def wants_output(self) -> bool:
        """Whether ``task_output`` shows anything: if not, tasks' lines are not split."""
        return type(self).task_output is not Observer.task_output

    def backpressure(self) -> None: ...

    def merge_conflict(self, key: str, nodes: tuple[str, str]) -> None: ...

    def step_committed(self, step: int, duration: float) -> None: ...

    def llm_usage(
        self,
        node: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cached: int,
        cost: float | None,
    ) -> None: ...

    def budget_warning(self, level: float, spent_usd: float, max_cost_usd: float) -> None:
        """The run's LLM spend reached ``level`` (0.5, 0.8) of its budget."""

    def run_finished(self, status: str, error: str | None) -> None: ...


class Fanout(Observer):
    """Several observers as one."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = [o for o in observers if o is not None]

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name in ("observers", "wants_output", "node_counts"):
            return object.__getattribute__(self, name)
        targets = [getattr(o, name) for o in object.__getattribute__(self, "observers")]

        def call(*args: Any, **kwargs: Any) -> None:
            for t in targets:
                t(*args, **kwargs)

        return call

    def wants_output(self) -> bool:
        return any(o.wants_output() for o in object.__getattribute__(self, "observers"))
