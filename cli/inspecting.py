"""``runs``, ``show``, ``validate``, ``graph`` and ``schema``: read-only commands."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from flowrun.engine import ResumeRefused, UsageError, load_workflow
from flowrun.engine.report import STATUS_EXIT, STATUSES, run_detail, run_summary

from . import console
from .options import write_json
from .running import open_store


def _out(data: Any) -> None:
    write_json(data)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def do_runs(*, status: str | None, limit: int, db: str | None, json_out: bool) -> None:
    if status is not None and status not in STATUSES:
        raise UsageError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    try:
        store = open_store(db, create=False, readonly=True)
    except ResumeRefused:  # no database yet: no runs, and none is made by looking
        _out([]) if json_out else console.err("no runs")
        return
    limit = min(limit, 2**62)  # SQLite integers are 64-bit
    rows = [run_summary(r) for r in store.list_runs(status=status, limit=limit)]
    if json_out:
        _out(rows)
        return
    if not rows:
        console.err("no runs")
        return
    for r in rows:
        console.err(
            f"{r['run_id']}  {r['status']:<11} {r['workflow']:<24} steps={r['steps']:<5}"
            f" {_when(r['created_at'])}  {console._fmt_s(r['duration_s'])}"
        )


def do_show(*, ref: str, db: str | None, json_out: bool, events: bool) -> int:
    store = open_store(db, create=False, readonly=True)
    run_id = store.resolve_run_id(ref)
    detail = run_detail(store, run_id)
    if events:
        detail["events"] = [e.to_json() for e in store.events(run_id)]
    if json_out:
        _out(detail)
    else:
        console.err(f"run       {detail['run_id']}")
        console.err(f"workflow  {detail['workflow']}")
        if detail["forked_from"]:
            parent = detail["forked_from"]
            console.err(f"forked    from {parent['run_id']} at step {parent['step']}")
        console.err(
            f"status    {detail['status']}" + (f": {detail['error']}" if detail["error"] else "")
        )
        if detail["status"] == "running" and not detail["live"]:
            console.err(
                f"          (no process is executing it: it crashed or was killed;"
                f" `flowrun resume {detail['run_id']}` continues it)"
            )
        console.err(f"steps     {detail['steps']}")
        console.err(f"duration  {console._fmt_s(detail['duration_s'])}")
        console.err("nodes:")
        for name, n in detail["nodes"].items():
            console.err(
                f"  {name:<20} tasks={n['tasks']} ok={n['ok']} failed={n['failed']}"
                f" attempts={n['attempts']} time={console._fmt_s(n['duration_s'])}"
            )
            for e in n["errors"][-3:]:
                console.err(f"    step {e['step']}: {e['error']}")
        if events:
            console.err("events:")
            for e in detail["events"]:
                console.err(
                    f"  {e['event_id']}  step={e['step']}  {e['type']:<15} {e['node'] or ''}"
                    f"{'  ' + e['error'] if e['error'] else ''}"
                )
        console.err("state:")
        console.err(json.dumps(detail["state"], indent=2, sort_keys=True, ensure_ascii=False))
    code = STATUS_EXIT.get(detail["status"], 1)
    if code:
        sys.exit(code)
    return 0


def do_validate(*, file: str, json_out: bool) -> None:
    wf = load_workflow(file)
    if json_out:
        _out({"valid": True, "name": wf.name, "nodes": list(wf.nodes), "digest": wf.digest})
    else:
        console.err(f"{file}: ok ({wf.name}: {len(wf.nodes)} nodes, {len(wf.state)} state keys)")


def do_graph(*, file: str, fmt: str) -> None:
    wf = load_workflow(file)
    if fmt not in ("mermaid", "dot"):
        raise UsageError(f"--format must be mermaid or dot, not {fmt!r}")
    lines: list[str] = []
    if fmt == "mermaid":
        lines.append("flowchart TD")
        for s in wf.start:
            lines.append(f"  START((start)) --> {s}")
        for name, node in wf.nodes.items():
            shape = f"{name}[[{name}]]" if node.foreach is not None else f"{name}[{name}]"
            lines.append(f"  {shape}")
            for t in node.next:
                lines.append(f"  {name} --> {'END((end))' if t == 'END' else t}")
            for r in node.routes:
                for t in r.to:
                    label = f"|{r.when.replace('|', '/')}|" if r.when else ""
                    lines.append(f"  {name} -->{label} {'END((end))' if t == 'END' else t}")
            for n in node.needs:
                lines.append(f"  {n} -.-> {name}")
    else:
        lines.append(f'digraph "{wf.name}" {{')
        for s in wf.start:
            lines.append(f'  "START" -> "{s}";')
        for name, node in wf.nodes.items():
            for t in node.next:
                lines.append(f'  "{name}" -> "{t}";')
            for r in node.routes:
                for t in r.to:
                    label = json.dumps(r.when or "else")
                    lines.append(f'  "{name}" -> "{t}" [label={label}];')
            for n in node.needs:
                lines.append(f'  "{n}" -> "{name}" [style=dashed];')
        lines.append("}")
    sys.stdout.write("\n".join(lines) + "\n")


def do_schema() -> None:
    from flowrun.engine.spec.schema import workflow_schema

    sys.stdout.write(json.dumps(workflow_schema(), indent=2, ensure_ascii=False) + "\n")
