"""A run as Markdown, for a CI job's summary page (GitHub's ``GITHUB_STEP_SUMMARY``).

Built from stored data only: a heading with the workflow and its status, the run
id, steps and duration, a table per node (tasks, ok, failed, time), the LLM cost
table, and the first failure with the end of its stderr. ``append_summary`` adds
it to the end of the file, so what earlier steps of the job wrote stays.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .costs import cost_report, usd
from .report import last_outcomes, output_tails, stream_text
from .store.base import Store, TaskResult

STDERR_LINES = 30  # of the first failure's stderr

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")  # terminal escapes and the like


def summary_markdown(store: Store, run_id: str) -> str:
    rec = store.get_run(run_id)
    outcomes = last_outcomes(store, run_id)
    lines = [
        f"## flowrun: {_cell(rec.workflow_name)} {rec.status}",
        "",
        f"Run `{rec.run_id}`: {rec.step} step(s) in {seconds(rec.duration_s)}.",
    ]
    if rec.error:
        lines.append(f"Error: {_cell(rec.error)}")
    lines.append("")
    nodes: dict[str, dict[str, Any]] = {}
    for r in outcomes:
        n = nodes.setdefault(r.node, {"tasks": 0, "ok": 0, "failed": 0, "time": 0.0})
        n["tasks"] += 1
        n["ok" if r.status == "ok" else "failed"] += 1
        n["time"] += r.duration_s
    if nodes:
        lines += _table(
            ["node", "tasks", "ok", "failed", "time"],
            [
                [_cell(name), str(n["tasks"]), str(n["ok"]), str(n["failed"]), seconds(n["time"])]
                for name, n in nodes.items()
            ],
        )
    costs = cost_report(run_id, store.llm_calls(run_id))
    if costs["calls"]:
        lines += _table(
            ["model", "calls", "tokens in", "tokens out", "cost"],
            [
                [
                    _cell(m["model"]),
                    f"{m['calls']:,}",
                    f"{m['tokens_in']:,}",
                    f"{m['tokens_out']:,}",
                    "unknown" if m["cost_usd"] is None else usd(m["cost_usd"]),
                ]
                for m in costs["by_model"]
            ]
            + [
                [
                    "**total**",
                    f"{costs['calls']:,}",
                    f"{costs['tokens_in']:,}",
                    f"{costs['tokens_out']:,}",
                    usd(costs["total_usd"]) + (" + unknown" if costs["unpriced_models"] else ""),
                ]
            ],
        )
    failed = next((r for r in outcomes if r.status != "ok"), None)
    if failed is not None:
        lines += _failure(store, run_id, failed)
    return "\n".join(lines) + "\n"


def append_summary(store: Store, run_id: str, path: Path) -> None:
    """Append the run's summary to ``path`` (made if missing); raises ``OSError``."""
    text = summary_markdown(store, run_id)
    with open(path, "a", encoding="utf-8", errors="replace") as f:
        f.write(text if f.tell() == 0 else "\n" + text)


def seconds(s: float) -> str:
    if s < 60:
        return f"{s:.2f} s"
    m, rest = divmod(round(s), 60)
    return f"{m} min {rest} s" if m < 60 else f"{m // 60} h {m % 60} min"


def _failure(store: Store, run_id: str, r: TaskResult) -> list[str]:
    label = r.node if r.index is None else f"{r.node}[{r.index}]"
    out = [f"### First failure: `{label}`", "", _cell(r.error or "failed")]
    outputs = output_tails(store, run_id).get((r.step, r.order_key), [])
    stderr = stream_text(outputs[-1:], "stderr") or r.stderr or ""
    if stderr:
        kept = stderr.splitlines()[-STDERR_LINES:]
        text = _visible("\n".join(kept))
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall("`+", text)), default=0))
        out += ["", f"stderr, last {len(kept)} line(s):", "", f"{fence}text", text, fence]
    return out


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _cell(text: str) -> str:
    """One line of Markdown table text: pipes escaped, line breaks as spaces."""
    return _visible(" ".join(text.split())).replace("|", "\\|")


def _visible(text: str) -> str:
    """Control characters (an ANSI colour escape) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
