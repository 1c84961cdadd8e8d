"""What a run looks like from the outside: the dicts behind ``--json``, ``show`` and ``runs``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .store.base import RunRecord, Store

STATUSES = ("running", "succeeded", "failed", "interrupted")  # every status a run can have
STATUS_EXIT = {"succeeded": 0, "failed": 1, "interrupted": 130}


def run_summary(rec: RunRecord) -> dict[str, Any]:
    return {
        "run_id": rec.run_id,
        "workflow": rec.workflow_name,
        "status": rec.status,
        "steps": rec.step,
        "created_at": rec.created_at,
        "finished_at": rec.finished_at,
        "duration_s": round(rec.duration_s, 6),
        "error": rec.error,
        "forked_from": None
        if rec.parent_run_id is None
        else {"run_id": rec.parent_run_id, "step": rec.parent_step},
    }


def run_result(store: Store, run_id: str) -> dict[str, Any]:
    """The ``--json`` object of run/resume: summary plus the whole state."""
    rec = store.get_run(run_id)
    out = run_summary(rec)
    out["state"] = store.load_latest(run_id).state
    out["digest"] = rec.state_digest
    return out


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    """Everything ``flowrun show`` prints: status, steps, per-node attempts and errors, state."""
    out = run_result(store, run_id)
    nodes: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"tasks": 0, "ok": 0, "failed": 0, "attempts": 0, "duration_s": 0.0, "errors": []}
    )
    for r in store.task_results(run_id):
        n = nodes[r.node]
        n["tasks"] += 1
        n["ok" if r.status == "ok" else "failed"] += 1
        n["attempts"] += r.attempts
        n["duration_s"] = round(n["duration_s"] + r.duration_s, 6)
        if r.error:
            n["errors"].append(
                {
                    "step": r.step,
                    "index": r.index,
                    "attempt": r.attempts,
                    "error": r.error,
                    "stderr": (r.stderr or "")[-500:] or None,
                }
            )
    out["nodes"] = dict(nodes)
    out["live"] = store.run_is_live(run_id)  # a "running" run that is not live has crashed
    out["step_log"] = store.steps(run_id)
    return out
