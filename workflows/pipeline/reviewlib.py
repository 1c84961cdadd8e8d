"""Python nodes of the example pipeline: fn(state, ctx) -> delta, or a value with `save:`."""

from __future__ import annotations

import json
import pathlib
import re

NEGATIVE = {"broke", "terrible", "awful", "burnt", "leaks", "sticks", "worst"}
POSITIVE = {"love", "great", "fast", "nice", "evenly", "powerful", "quiet"}


def score(state, ctx):
    """One review (ctx.item): normalised words and a crude sentiment score."""
    review = ctx.item
    words = re.findall(r"[a-z]+", review["text"].lower())
    value = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return {"id": review["id"], "product": review["product"], "score": value, "words": len(words)}


def check(state, ctx):
    """The join: runs once both branches are done; counts the reviews to flag."""
    flagged = [s["id"] for s in state["scored"] if s["score"] < 0]
    return {"flagged": flagged}


def report(state, ctx):
    """Write a small Markdown report next to the workflow and return its path."""
    by_product: dict[str, list[int]] = {}
    for s in state["scored"]:
        by_product.setdefault(s["product"], []).append(s["score"])
    lines = [f"# Review report ({ctx.run_id})", "", f"Source: {state['source_info']}", ""]
    lines += ["| product | reviews | mean score |", "|---|---|---|"]
    for product, scores in sorted(by_product.items()):
        lines.append(f"| {product} | {len(scores)} | {sum(scores) / len(scores):+.2f} |")
    if state["flagged"]:
        lines += ["", f"Flagged review ids: {json.dumps(state['flagged'])}"]
    if state.get("summaries"):
        lines += ["", "## Summaries (LLM)", ""]
        for review, summary in zip(state["reviews"], state["summaries"], strict=False):
            lines.append(f"- #{review['id']} {review['product']}: {summary}")
    out = pathlib.Path(__file__).parent / "out" / "report.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(pathlib.Path.cwd())}")  # shown as `report | wrote …`
    return {"report": str(out.relative_to(pathlib.Path(__file__).parent))}
