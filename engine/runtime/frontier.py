"""Frontiers: which tasks run in the next superstep, in tree order.

A frontier (``records.Frontier``) holds entries: routed-to nodes (node, parent order
key, edge index); they become tasks at the start of their step, when ``foreach`` is
expanded against that step's state (``runtime/tasks.py``). ``held`` are joins
(``needs``) still waiting; ``since`` records which needed nodes completed since each
join last ran. It is JSON only in the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..records import Entry, Frontier, Task
from ..spec import templates
from ..spec.model import END, Workflow
from .ordering import order_key


class RouteError(Exception):
    pass


def initial(workflow: Workflow) -> Frontier:
    return arrange(workflow, [Entry(n, "", i) for i, n in enumerate(workflow.start)], {}, ())


def scope_for(
    state: Mapping[str, Any],
    run_id: str,
    step: int,
    node: str,
    item: Any = None,
    index: int | None = None,
) -> dict[str, Any]:
    return {
        "state": state,
        "item": item,
        "index": index,
        "run": {"id": run_id, "step": step},
        "node": node,
    }


def items_of(
    workflow: Workflow, e: Entry, state: Mapping[str, Any], run_id: str, step: int
) -> list[Any] | tuple[Any, ...] | None:
    """The items of a ``foreach`` entry (None: its node has no ``foreach``)."""
    node = workflow.nodes[e.node]
    if node.foreach is None:
        return None
    items = node.foreach
    if isinstance(items, str):
        try:
            items = templates.render(items, scope_for(state, run_id, step, node.name))
        except templates.TemplateError as exc:
            raise RouteError(f"node {node.name!r}: foreach: {exc}") from None
    if isinstance(items, dict):
        items = [{"key": k, "value": v} for k, v in items.items()]
    if not isinstance(items, list | tuple):
        raise RouteError(f"node {node.name!r}: foreach gave {type(items).__name__}, not a list")
    return items


def expand(
    workflow: Workflow,
    entries: Iterable[Entry],
    state: Mapping[str, Any],
    run_id: str,
    step: int,
) -> list[Task]:
    """Turn a frontier's entries into the step's tasks (``foreach`` becomes one per item).

    The engine holds a big step's tasks lazily (``tasks.StepTasks``), the same tasks."""
    tasks: list[Task] = []
    for e in entries:
        items = items_of(workflow, e, state, run_id, step)
        tasks.extend(entry_tasks(e, items))
    return tasks


def entry_tasks(e: Entry, items: Sequence[Any] | None) -> list[Task]:
    """The tasks of one entry, given its ``foreach`` items (None: it has no ``foreach``)."""
    if items is None:
        return [Task(e.node, e.parent, e.edge, order_key(e.parent, e.node, e.edge))]
    if not items:
        # an empty map still completes, so what follows it runs (like Prefect's map)
        return [Task(e.node, e.parent, e.edge, order_key(e.parent, e.node, e.edge), skip=True)]
    return [item_task(e, i, item) for i, item in enumerate(items)]


def item_task(e: Entry, i: int, item: Any) -> Task:
    """Task ``i`` of a ``foreach`` entry."""
    return Task(e.node, e.parent, i, order_key(e.parent, e.node, i), item, i)


def targets(
    workflow: Workflow, task: Task, state: Mapping[str, Any], run_id: str, step: int
) -> list[tuple[int, str]]:
    """Where a finished task routes to: ``(edge_index, node)`` pairs."""
    node = workflow.nodes[task.node]
    if node.next:
        return list(enumerate(node.next))
    for route in node.routes:
        if route.when is None:
            return list(enumerate(route.to))
        scope = scope_for(state, run_id, step, node.name, task.item, task.index)
        try:
            if templates.evaluate(route.when, scope):
                return list(enumerate(route.to))
        except templates.TemplateError as exc:
            raise RouteError(f"node {node.name!r}: routes: {exc}") from None
    return []


def advance(
    workflow: Workflow,
    tasks: Iterable[Task],
    frontier: Frontier,
    state: Mapping[str, Any],
    run_id: str,
    step: int,
) -> Frontier:
    """The next frontier, after the step's tasks finished and their deltas merged."""
    since: dict[str, list[str]] = {k: list(v) for k, v in frontier.since.items()}
    joins = workflow.joins
    routed: list[Entry] = []
    seen: set[str] = set()
    last: tuple[str, str] | None = None  # the node and parent of the task before
    for t in tasks:
        same = last == (t.node, t.parent)  # a foreach's next item: the same joins, routes
        last = (t.node, t.parent)
        if not same:
            for j, needs in joins.items():
                if t.node in needs and t.node not in since.setdefault(j, []):
                    since[j].append(t.node)
        if same and workflow.nodes[t.node].next:
            continue  # its first item routed to all of them already
        for edge, name in targets(workflow, t, state, run_id, step):
            if name == END or name in seen:
                continue
            seen.add(name)
            routed.append(Entry(name, t.key, edge))
    return arrange(workflow, routed, since, frontier.held)


def arrange(
    workflow: Workflow,
    routed: Iterable[Entry],
    progress: Mapping[str, list[str]],
    held: Iterable[Entry],
) -> Frontier:
    """Place routed entries: joins whose needs are met run (held ones first), others wait."""
    since = {k: list(v) for k, v in progress.items()}
    entries: list[Entry] = []
    waiting: list[Entry] = []
    seen: set[str] = set()

    def ready(name: str) -> bool:
        return set(workflow.nodes[name].needs) <= set(since.get(name, []))

    for h in held:
        if h.node in seen:
            continue
        seen.add(h.node)
        if ready(h.node):
            entries.append(h)
            since[h.node] = []
        else:
            waiting.append(h)
    for r in routed:
        name = r.node
        if name in seen:
            continue
        seen.add(name)
        if workflow.nodes[name].needs:
            if ready(name):
                entries.append(r)
                since[name] = []
            else:
                waiting.append(r)
        else:
            entries.append(r)
    return Frontier(tuple(entries), tuple(waiting), {k: tuple(v) for k, v in since.items()})
