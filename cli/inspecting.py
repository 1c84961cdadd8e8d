"""``runs``, ``show``, ``validate``, ``graph`` and ``schema``: read-only commands."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from flowrun.engine import ResumeRefused, UsageError
from flowrun.engine.report import (
    STATUS_EXIT,
    STATUSES,
    display_status,
    list_summaries,
    run_detail,
)

from . import console
from .options import write_json
from .reports import ci_reports

STATE_CUT = 200  # characters of a state value `show` prints unless --full
STDERR_LINES = 10  # lines of a failed task's stderr tail `show` prints


def _out(data: Any) -> None:
    write_json(data)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns as wide as their widest cell; ``right`` holds the right-aligned ones."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    ]


def _one_line(text: str | None, limit: int) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def do_runs(*, status: str | None, limit: int, db: str | None, json_out: bool) -> None:
    from .database import open_store  # the store: only the database commands load it

    if status is not None and status not in STATUSES:
        raise UsageError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    try:
        store = open_store(db, create=False, readonly=True)
    except ResumeRefused:  # no database yet: no runs, and none is made by looking
        _out([]) if json_out else console.out("no runs")
        return
    limit = min(limit, 2**62)  # SQLite integers are 64-bit
    rows = list_summaries(store, status=status, limit=limit)
    if json_out:
        _out(rows)
        return
    if not rows:
        console.out("no runs")
        return
    head = ["run", "status", "workflow", "steps", "started", "duration", "error"]
    body = [
        [
            r["run_id"],
            display_status(r["status"], r["live"]),
            r["workflow"],
            str(r["steps"]),
            _when(r["created_at"]),
            console.fmt_s(r["duration_s"]),
            _one_line(r["error"], 80),
        ]
        for r in rows
    ]
    for line in _table(head, body, right={3, 5}):
        console.out(line)


def _state_lines(state: dict[str, Any], full: bool) -> list[str]:
    if full:
        return json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    lines = []
    width = max((len(k) for k in state), default=0)
    for key in sorted(state):
        text = json.dumps(state[key], sort_keys=True, ensure_ascii=False)
        if len(text) > STATE_CUT:
            text = f"{text[:STATE_CUT]}… ({len(text):,} characters; --full shows all)"
        lines.append(f"  {key.ljust(width)}  {text}")
    return lines


def _cost_line(costs: dict[str, Any]) -> str:
    if not costs["calls"]:
        return "no LLM calls"
    total = console.cost_text(costs, "total_usd")
    return (
        f"{total} in {costs['calls']:,} LLM call(s),"
        f" {costs['tokens_in']:,} tokens in, {costs['tokens_out']:,} out"
    )


def do_show(
    *,
    ref: str,
    db: str | None,
    json_out: bool,
    events: bool,
    full: bool = False,
    junit: str | None = None,
) -> int:
    from .database import open_store

    store = open_store(db, create=False, readonly=True)
    run_id = store.resolve_run_id(ref)
    target = ci_reports(junit, summary=False).junit
    if target is not None:  # asked for, so a file that cannot be written is an error
        from flowrun.engine.junit import write_junit

        try:
            write_junit(store, run_id, target)
        except OSError as exc:
            raise UsageError(f"--junit {junit}: not written: {exc.strerror or exc}") from None
    detail = run_detail(store, run_id)
    if events:
        detail["events"] = [e.to_json() for e in store.events(run_id)]
    if json_out:
        _out(detail)
    else:
        _show_text(detail, events=events, full=full)
    code = STATUS_EXIT.get(detail["status"], 1)
    if code:
        sys.exit(code)
    return 0


def _show_text(detail: dict[str, Any], *, events: bool, full: bool) -> None:
    out = console.out
    fmt = console.fmt_s
    out(f"run       {detail['run_id']}")
    out(f"workflow  {detail['workflow']}")
    if detail["forked_from"]:
        parent = detail["forked_from"]
        out(f"forked    from {parent['run_id']} at step {parent['step']}")
    status = display_status(detail["status"], detail["live"])
    out(f"status    {status}" + (f": {detail['error']}" if detail["error"] else ""))
    if status == "crashed":
        out(
            f"          (no process is executing it: it crashed or was killed;"
            f" `flowrun resume {detail['run_id']}` continues it)"
        )
    out(f"started   {_when(detail['created_at'])}")
    out(f"finished  {_when(detail['finished_at'])}")
    total, in_steps = detail["duration_s"], detail["steps_duration_s"]
    out(
        f"duration  {fmt(total)}: {detail['steps']} committed step(s) {fmt(in_steps)},"
        f" outside them {fmt(max(0.0, total - in_steps))}"
    )
    out(f"costs     {_cost_line(detail['costs'])}")
    out("nodes     (busy: each task from its first attempt to its last, summed)")
    # the interrupted column only when a signal stopped some task
    stopped = any(n["interrupted"] for n in detail["nodes"].values())
    counts = ["ok", "failed", *(["interrupted"] if stopped else [])]
    head = ["node", "tasks", *counts, "attempts", "busy"]
    names = list(detail["nodes"])
    body = [
        [
            f"  {name}",
            str(n["tasks"]),
            *(str(n[c]) for c in counts),
            str(n["attempts"]),
            fmt(n["duration_s"]),
        ]
        for name, n in detail["nodes"].items()
    ]
    lines = _table([f"  {head[0]}", *head[1:]], body, right=set(range(1, len(head))))
    out(lines[0])
    for name, line in zip(names, lines[1:], strict=True):
        out(line)
        n = detail["nodes"][name]
        for r in n["retries"][-3:]:
            where = f"step {r['step']}" + (f" [{r['index']}]" if r["index"] is not None else "")
            out(
                f"      {where}: attempt {r['attempt']} failed after {fmt(r['duration_s'])}:"
                f" {_one_line(r['error'], 100)}"
            )
        for e in n["errors"][-3:]:
            for line in _error_lines(e):
                out(line)
    if events:
        out("events:")
        for e in detail["events"]:
            out(
                f"  {e['event_id']}  step={e['step']}  {e['type']:<15} {e['node'] or ''}"
                f"{'  ' + e['error'] if e['error'] else ''}"
            )
    out("state:")
    for line in _state_lines(detail["state"], full):
        out(line)


def _error_lines(e: dict[str, Any]) -> list[str]:
    """A failed or interrupted task: its error, then its traceback and stderr tail."""
    where = f"step {e['step']}" + (f" [{e['index']}]" if e["index"] is not None else "")
    lines = [f"      {where}: {e['status']} after {e['attempt']} attempt(s): {e['error']}"]
    if e["traceback"]:
        lines.extend(f"        {line}" for line in e["traceback"].splitlines())
    if e["stderr"]:
        tail = e["stderr"].rstrip("\n").splitlines()[-STDERR_LINES:]
        lines.append(f"        stderr (last {len(tail)} line(s)):")
        lines.extend(f"          {line}" for line in tail)
    return lines


def do_validate(*, file: str, json_out: bool) -> None:
    from flowrun.engine import load_workflow  # YAML and Jinja2: only the file commands load them

    wf = load_workflow(file)
    if json_out:
        _out({"valid": True, "name": wf.name, "nodes": list(wf.nodes), "digest": wf.digest})
    else:
        console.out(f"{file}: ok ({wf.name}: {len(wf.nodes)} nodes, {len(wf.state)} state keys)")


def do_graph(*, file: str, fmt: str) -> None:
    from flowrun.engine import load_workflow

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
    console.out("\n".join(lines))


def do_schema() -> None:
    from flowrun.engine.spec.schema import workflow_schema

    sys.stdout.write(json.dumps(workflow_schema(), indent=2, ensure_ascii=False) + "\n")
