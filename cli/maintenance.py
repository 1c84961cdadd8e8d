"""``flowrun fork`` and ``flowrun prune``: new runs from old checkpoints, and old runs gone."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from flowrun.engine import (
    Engine,
    ResumeRefused,
    RunResult,
    UsageError,
    load_workflow,
    new_run_id,
)
from flowrun.engine.report import STATUSES, run_summary
from flowrun.engine.store.base import RunRecord

from . import console
from .costs import LLMOptions
from .database import open_store
from .options import check_run_id, write_json
from .running import Shown, _execute, stored_workflow

_SECONDS = re.compile(r"^\s*\d+(\.\d+)?\s*$")  # a bare number: seconds, as in a workflow


def do_fork(
    *,
    ref: str,
    from_step: int,
    workflow: str | None,
    run_id: str | None,
    db: str | None,
    durability: str,
    shown: Shown,
    llm: LLMOptions | None = None,
) -> None:
    """Copy a run's checkpoint before ``from_step`` into a new run, then drive it as a resume."""
    check_run_id(run_id)
    llm = (llm or LLMOptions()).prepare()
    store = open_store(db, durability, create=False)
    parent = store.resolve_run_id(ref)
    rec = store.get_run(parent)
    if from_step > rec.step:  # past the step it stopped in; too big for SQLite, even
        raise _bad_step(rec, from_step)
    wf = load_workflow(workflow) if workflow else stored_workflow(store, parent)
    try:
        base = store.load_at(parent, from_step)
    except ResumeRefused:
        raise _bad_step(rec, from_step) from None
    if not base.frontier.entries:
        raise _bad_step(rec, from_step)
    missing = sorted(set(base.frontier.nodes()) - set(wf.nodes))
    if missing:
        raise UsageError(
            f"step {from_step} of run {parent} runs {', '.join(missing)},"
            f" which {wf.path} does not define",
            hint="fork onto a workflow that has these nodes, or from another step",
        )
    new_id = run_id or new_run_id()
    fixed: dict[str, Any] = {}
    if workflow:
        fixed = {
            "workflow_name": wf.name,
            "workflow_path": str(wf.base_dir / Path(wf.path).name),
            "workflow_text": wf.source,
            "workflow_digest": wf.digest,
        }
    store.fork_run(parent, from_step, new_id, **fixed)
    console.err(f"run {new_id} forked from {parent} at step {from_step}")

    def go(engine: Engine) -> RunResult:
        llm.apply(engine.settings)
        return engine.resume(wf, new_id)

    _execute(store, go, new_id, wf, shown)


def _bad_step(rec: RunRecord, step: int) -> UsageError:
    first = rec.parent_step or 0  # a fork holds no checkpoint before the step it began at
    last = rec.step - 1  # its last committed step
    until = last if rec.status == "succeeded" else rec.step  # a stopped run: its stopped step
    if step < first:
        return UsageError(
            f"--from-step {step}: run {rec.run_id} is a fork that begins at step {first}",
            hint=f"fork its parent {rec.parent_run_id}, or pick a step from {first} to {until}",
        )
    return UsageError(
        f"--from-step {step} is beyond run {rec.run_id}'s last committed step ({last})",
        hint=f"pick a step from {first} to {until}"
        + ("" if until == last else f" ({until}: the step it stopped in)"),
    )


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``500ms`` (or bare seconds) to seconds."""
    from flowrun.engine.spec.validate import parse_duration

    try:
        return parse_duration(float(text) if _SECONDS.match(text) else text)
    except ValueError:
        raise UsageError(
            f"--older-than {text!r} is not a duration", hint="e.g. 30d, 12h, 90m or 45s"
        ) from None


def do_prune(
    *, older_than: str, dry_run: bool, status: str | None, db: str | None, json_out: bool
) -> None:
    age = parse_age(older_than)
    if status is not None and status not in STATUSES:
        raise UsageError(
            f"--status must be one of {', '.join(STATUSES)}, not {status!r}",
        )
    store = open_store(db, create=False)
    result = store.prune_runs(before=time.time() - age, status=status, dry_run=dry_run)
    if result.vacuum_error:
        console.warn(
            f"the runs were deleted but VACUUM failed ({result.vacuum_error});"
            " run `flowrun prune` again later to reclaim the space"
        )
    if json_out:
        report = {
            "dry_run": dry_run,
            "older_than_s": age,
            "status": status,
            "runs": [run_summary(r) for r in result.runs],
            "count": len(result.runs),
            "skipped_live": result.skipped_live,
            "bytes_reclaimed": result.bytes_reclaimed,
            "vacuum_error": result.vacuum_error,
        }
        write_json(report)
        return
    if dry_run:
        for r in result.runs:
            console.out(f"would delete {r.run_id}  {r.status:<11} {r.workflow_name}")
    n = len(result.runs)
    runs = f"{n} run{'s' if n != 1 else ''}"
    kept = f"; kept {len(result.skipped_live)} with a live lease" if result.skipped_live else ""
    if dry_run:
        console.out(f"dry run: would delete {runs}{kept}")
    else:
        freed = result.bytes_reclaimed  # None: the server's space (autovacuum reuses it)
        reclaimed = "" if freed is None else f", reclaimed {_fmt_bytes(freed)}"
        console.out(f"deleted {runs}{reclaimed}{kept}")


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
