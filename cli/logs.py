"""``flowrun logs``: what a run's tasks printed, as stored with their results."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from flowrun.engine import Store, UsageError, load_workflow
from flowrun.engine.errors import WorkflowError
from flowrun.engine.output import cut_note
from flowrun.engine.spec.checks import did_you_mean
from flowrun.engine.store.base import TaskOutput

from . import console
from .console import output_lines
from .database import open_store
from .options import write_json

MARKS = {"stdout": "|", "stderr": "!"}  # `fetch | out`, `fetch ! err`


def do_logs(
    *,
    ref: str,
    node: str | None,
    index: int | None,
    attempt: int | None,
    db: str | None,
    json_out: bool,
) -> None:
    store = open_store(db, create=False)
    run_id = store.resolve_run_id(ref)
    if node is not None:
        _check_node(store, run_id, node)
    outputs = store.task_outputs(run_id, node=node, index=index, attempt=attempt)
    if json_out:
        write_json([_to_json(o) for o in outputs])
        return
    if not outputs:
        what = f"node {node!r} of run {run_id}" if node else f"run {run_id}"
        console.err(f"{what}: no output stored (its tasks printed nothing, or have not run)")
        return
    try:
        for o in outputs:
            sys.stdout.write(_render(o))
        sys.stdout.flush()
    except BrokenPipeError:  # `flowrun logs … | head`: the reader has seen enough
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _render(o: TaskOutput) -> str:
    label = o.label if o.attempt == 1 else f"{o.label} (attempt {o.attempt})"
    parts = [output_lines(label, [cut_note(o.cut)])] if o.cut else []
    parts.extend(output_lines(label, [line], MARKS[stream]) for stream, line in o.lines())
    return "".join(parts)


def _to_json(o: TaskOutput) -> dict[str, Any]:
    return {
        "step": o.step,
        "node": o.node,
        "index": o.index,
        "attempt": o.attempt,
        "cut_bytes": o.cut,
        "lines": [{"stream": s, "text": t} for s, t in o.lines()],
    }


def _check_node(store: Store, run_id: str, node: str) -> None:
    """An unknown node is a usage error (exit 2) naming the near miss."""
    path, text = store.workflow_text(run_id)
    try:
        names = set(load_workflow(path, text=text).nodes)
    except WorkflowError:  # a stored workflow that no longer validates: the nodes that printed
        names = {o.node for o in store.task_outputs(run_id)}
    if node in names:
        return
    hint = did_you_mean(node, names) or f"its nodes: {', '.join(sorted(names)) or '(none)'}"
    raise UsageError(f"run {run_id} has no node {node!r}", hint=hint)
