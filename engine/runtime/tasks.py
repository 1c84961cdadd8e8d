"""A step's tasks: its frontier's entries expanded, held lazily when there are many.

A ``foreach`` of a million items is a million tasks; holding each as a ``Task`` (its
order key a 64-character digest) costs far more than the items themselves, which
the step's state holds anyway. Above :data:`LAZY_ABOVE` tasks a step's tasks are a
:class:`StepTasks`: each entry with its items, a task made when it is asked for, in
the same tree order and with the same order keys as ``frontier.expand`` gives.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from ..records import Entry, Task
from ..spec.model import Workflow
from . import frontier as fr
from .ordering import order_key

LAZY_ABOVE = 16_384  # a step of more tasks holds them lazily (fewer: a list is faster)

Group = tuple[Entry, Sequence[Any] | None]  # an entry and its foreach items (None: no foreach)


def step_tasks(
    workflow: Workflow,
    entries: Iterable[Entry],
    state: Mapping[str, Any],
    run_id: str,
    step: int,
    *,
    lazy_above: int = LAZY_ABOVE,
) -> Sequence[Task]:
    """The step's tasks, in tree order: a list, or a :class:`StepTasks` past ``lazy_above``."""
    groups = [(e, fr.items_of(workflow, e, state, run_id, step)) for e in entries]
    if sum(len(items) if items else 1 for _, items in groups) > lazy_above:
        return StepTasks(groups)
    return [t for e, items in groups for t in fr.entry_tasks(e, items)]


class StepTasks(Sequence[Task]):
    """The tasks of a step's entries, each made on demand (a ``foreach`` item's order key
    too): indexing, ``len`` and iteration in tree order, nothing held per task."""

    __slots__ = ("_groups", "_len", "_starts")

    def __init__(self, groups: Sequence[Group]) -> None:
        self._groups = list(groups)
        self._starts: list[int] = []  # the position of each group's first task
        n = 0
        for _, items in self._groups:
            self._starts.append(n)
            n += len(items) if items else 1  # an empty foreach is one task (it skips)
        self._len = n

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> Task: ...

    @overload
    def __getitem__(self, i: slice) -> list[Task]: ...

    def __getitem__(self, i: int | slice) -> Task | list[Task]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("task index out of range")
        g = bisect.bisect_right(self._starts, i) - 1
        e, items = self._groups[g]
        if not items:
            return fr.entry_tasks(e, items)[0]
        at = i - self._starts[g]
        return fr.item_task(e, at, items[at])

    def __iter__(self) -> Iterator[Task]:
        for e, items in self._groups:
            if not items:
                yield from fr.entry_tasks(e, items)
                continue
            node, parent = e.node, e.parent
            for i, item in enumerate(items):
                yield Task(node, parent, i, order_key(parent, node, i), item, i)

    def node_counts(self) -> dict[str, tuple[int, bool]]:
        """Each node's number of tasks, and whether they are ``foreach`` items."""
        counts: dict[str, tuple[int, bool]] = {}
        for e, items in self._groups:
            n, each = counts.get(e.node, (0, False))
            counts[e.node] = (n + (len(items) if items else 1), each or bool(items))
        return counts


class StepKeys(Sequence[dict[str, Any]]):
    """A step's task list as its commit stores it (each task's order key, node and
    index, in order), made from the step's tasks as it is read: no dict per task."""

    __slots__ = ("_listed", "_tasks")

    def __init__(self, tasks: Sequence[Task]) -> None:
        self._tasks = tasks
        # both digests hash the keys: a step of a list's size lists them once, a big
        # step's (a StepTasks) are made as they are read
        self._listed = [t.key for t in tasks] if isinstance(tasks, list) else None

    def keys(self) -> Iterable[str]:
        """The tasks' order keys, in order (what the idempotency key and digest hash)."""
        return self._listed if self._listed is not None else (t.key for t in self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [_row(t) for t in self._tasks[i]]
        return _row(self._tasks[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (_row(t) for t in self._tasks)


def _row(t: Task) -> dict[str, Any]:
    return {"key": t.key, "node": t.node, "index": t.index}
