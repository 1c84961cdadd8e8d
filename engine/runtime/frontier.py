"""Frontiers: which tasks run in the next superstep, in tree order.

A frontier is JSON: ``{"entries": [...], "held": [...], "since": {join: [nodes]}}``.
Entries are routed-to nodes (node, parent order key, edge index); they become
tasks at the start of their step, when ``foreach`` is expanded against that
step's state. ``held`` are joins (``needs``) still waiting; ``since`` records which
needed nodes completed since each join last ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..records import Task
from ..spec import templates
from ..spec.model import END, Workflow
from .ordering import order_key


class RouteError(Exception):
    pass


def entry(node: str, parent: str, edge: int) -> dict[str, Any]:
    return {"node": node, "parent": parent, "edge": edge}


def initial(workflow: Workflow) -> dict[str, Any]:
    entries = [entry(n, "", i) for i, n in enumerate(workflow.start)]
    return arrange(workflow, entries, {"entries": [], "held": [], "since": {}}, set())


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


def expand(
    workflow: Workflow,
    entries: list[dict[str, Any]],
    state: Mapping[str, Any],
    run_id: str,
    step: int,
) -> list[Task]:
    """Turn a frontier's entries into the step's tasks (``foreach`` becomes one per item)."""
    tasks: list[Task] = []
    for e in entries:
        node = workflow.nodes[e["node"]]
        parent, edge = e["parent"], e["edge"]
        if node.foreach is None:
            tasks.append(Task(node.name, parent, edge, order_key(parent, node.name, edge)))
            continue
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
        if not items:
            # an empty map still completes, so what follows it runs (like Prefect's map)
            key = order_key(parent, node.name, edge)
            tasks.append(Task(node.name, parent, edge, key, skip=True))
            continue
        for i, item in enumerate(items):
            tasks.append(Task(node.name, parent, i, order_key(parent, node.name, i), item, i))
    return tasks


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
    tasks: list[Task],
    frontier: dict[str, Any],
    state: Mapping[str, Any],
    run_id: str,
    step: int,
) -> dict[str, Any]:
    """The next frontier, after the step's tasks finished and their deltas merged."""
    since: dict[str, list[str]] = {k: list(v) for k, v in frontier.get("since", {}).items()}
    joins = workflow.joins
    for t in tasks:
        for j, needs in joins.items():
            if t.node in needs and t.node not in since.setdefault(j, []):
                since[j].append(t.node)
    routed: list[dict[str, Any]] = []
    seen: set[str] = set()
    for t in tasks:
        for edge, name in targets(workflow, t, state, run_id, step):
            if name == END or name in seen:
                continue
            seen.add(name)
            routed.append(entry(name, t.key, edge))
    nxt = {"entries": [], "held": [], "since": since}
    return arrange(workflow, routed, nxt, set(), held=frontier.get("held", []))


def arrange(
    workflow: Workflow,
    routed: list[dict[str, Any]],
    nxt: dict[str, Any],
    seen: set[str],
    held: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Place routed entries: joins whose needs are met run (held ones first), others wait."""
    since = nxt["since"]
    entries: list[dict[str, Any]] = nxt["entries"]
    waiting: list[dict[str, Any]] = nxt["held"]

    def ready(name: str) -> bool:
        return set(workflow.nodes[name].needs) <= set(since.get(name, []))

    for h in held or []:
        if h["node"] in seen:
            continue
        seen.add(h["node"])
        if ready(h["node"]):
            entries.append(h)
            since[h["node"]] = []
        else:
            waiting.append(h)
    for r in routed:
        name = r["node"]
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
    return nxt
