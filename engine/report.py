"""What a run looks like from the outside: the dicts behind ``--json``, ``show`` and ``runs``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .costs import cost_report
from .store.base import RunRecord, Store, TaskOutput, TaskResult

STATUSES = ("running", "succeeded", "failed", "interrupted")  # every status a run can have
STATUS_EXIT = {"succeeded": 0, "failed": 1, "interrupted": 130}
STDERR_TAIL = 500  # characters of a failed task's stderr in ``show``


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


def display_status(status: str, live: bool) -> str:
    """The status a person should read: a ``running`` run that no process holds crashed."""
    return "crashed" if status == "running" and not live else status


def list_summaries(store: Store, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    """``flowrun runs``: the newest runs, each with ``live`` (a process is executing it now)."""
    rows = []
    for rec in store.list_runs(status=status, limit=limit):
        row = run_summary(rec)
        row["live"] = rec.status == "running" and store.run_is_live(rec.run_id)
        rows.append(row)
    return rows


def run_result(store: Store, run_id: str) -> dict[str, Any]:
    """The ``--json`` object of run/resume: summary plus the whole state."""
    rec = store.get_run(run_id)
    out = run_summary(rec)
    out["state"] = store.load_latest(run_id).state
    out["digest"] = rec.state_digest
    return out


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    """Everything ``flowrun show`` prints: status, steps, per-node attempts and errors, state.

    Durations are wall times: ``duration_s`` the run's, each ``step_log`` entry's
    ``duration_s`` its step's (their sum is ``steps_duration_s``); a node's
    ``duration_s`` sums its tasks, each from its first attempt's start to its last's
    end (retry waits included), and ``retries`` lists each failed attempt with its own.
    A node's ``errors`` are its tasks that failed or were interrupted (``status``),
    each with its stderr tail and, for a Python exception, the ``traceback`` trimmed to
    the user's frames and the raising frame's ``file`` and ``line``.
    """
    out = run_result(store, run_id)
    nodes: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "tasks": 0,
            "ok": 0,
            "failed": 0,
            "interrupted": 0,
            "attempts": 0,
            "duration_s": 0.0,
            "errors": [],
            "retries": [],
        }
    )
    for r in store.task_results(run_id):
        n = nodes[r.node]
        n["tasks"] += 1
        n[r.status if r.status in ("ok", "interrupted") else "failed"] += 1
        n["attempts"] += r.attempts
        n["duration_s"] = round(n["duration_s"] + r.duration_s, 6)
        if r.error:
            n["errors"].append(
                {
                    "step": r.step,
                    "index": r.index,
                    "status": "interrupted" if r.status == "interrupted" else "failed",
                    "attempt": r.attempts,
                    "error": r.error,
                    "stderr": (r.stderr or "")[-STDERR_TAIL:] or None,
                    "traceback": r.traceback,
                    "file": r.error_file,
                    "line": r.error_line,
                }
            )
    step_s: dict[int, float] = {}
    for e in store.events(run_id):
        if e.type == "step_committed" and e.step is not None:
            step_s[e.step] = e.duration or 0.0
        elif e.type == "task_retried" and e.node is not None:
            nodes[e.node]["retries"].append(
                {
                    "step": e.step,
                    "index": (e.data or {}).get("index"),
                    "attempt": e.attempt,
                    "duration_s": round(e.duration or 0.0, 6),
                    "error": e.error,
                }
            )
    out["nodes"] = dict(nodes)
    out["live"] = store.run_is_live(run_id)  # a "running" run that is not live has crashed
    out["step_log"] = [
        {**s, "duration_s": round(step_s.get(s["step"], 0.0), 6)} for s in store.steps(run_id)
    ]
    # the sum of the durations shown, so the figures a user adds up agree to the digit
    out["steps_duration_s"] = round(sum(s["duration_s"] for s in out["step_log"]), 6)
    out["costs"] = cost_report(run_id, store.llm_calls(run_id))
    return out


def last_outcomes(store: Store, run_id: str) -> list[TaskResult]:
    """Each task's last outcome, in task order: a task a resume ran again counts once.

    Task order is step by step, and within a step its tasks' order (as committed; the
    step a run stopped in by its frontier's nodes, then index), as ``flowrun logs``.
    """
    last: dict[tuple[int, str], TaskResult] = {}
    for r in store.task_results(run_id):
        last[(r.step, r.order_key)] = r
    position = {
        (s["step"], t["key"]): i for s in store.steps(run_id) for i, t in enumerate(s["tasks"])
    }
    frontier = store.load_latest(run_id).frontier.entries
    nodes: dict[str, int] = {}
    for i, e in enumerate(frontier):
        nodes.setdefault(e.node, i)

    def place(r: TaskResult) -> tuple[int, int, int, int]:
        at = position.get((r.step, r.order_key))
        if at is not None:
            return (r.step, at, 0, 0)
        return (r.step, len(position), nodes.get(r.node, len(nodes)), r.index or 0)

    return sorted(last.values(), key=place)


def output_tails(store: Store, run_id: str) -> dict[tuple[int, str], list[TaskOutput]]:
    """The stored output of each task, ``(step, order_key)`` to its attempts in order."""
    tails: dict[tuple[int, str], list[TaskOutput]] = defaultdict(list)
    for o in store.task_outputs(run_id):
        tails[(o.step, o.order_key)].append(o)
    return dict(tails)


def stream_text(outputs: list[TaskOutput], stream: str) -> str:
    """What the attempts wrote to one stream, each attempt after the first headed."""
    parts = []
    for o in outputs:
        text = "".join(t for s, t in o.chunks if s == stream)
        if not text:
            continue
        head = f"--- attempt {o.attempt} ---\n" if len(outputs) > 1 else ""
        cut = f"… {o.cut:,} bytes of output cut …\n" if o.cut else ""
        parts.append(head + cut + text)
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)
