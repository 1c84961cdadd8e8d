"""``flowrun prices MODEL...``: what models cost now and where each price came from."""

from __future__ import annotations

from typing import Any

import typer

_COLUMNS = (
    ("input", "input"),
    ("output", "output"),
    ("cached_input", "cached input"),
    ("cache_write", "cache write"),
    ("cache_write_1h", "1h cache write"),
    ("reasoning", "reasoning"),
)


def do_prices(*, models: list[str], json_out: bool, pricing: str | None) -> None:
    from flowrun.engine.pricing import load_prices, price_report

    from . import console
    from .options import write_json

    report = price_report(models, load_prices(pricing))
    if json_out:
        write_json(report)
    else:
        for i, entry in enumerate(report):
            if i:
                console.out("")
            for line in _lines(entry):
                console.out(line)
    if not all(e["priced"] for e in report):
        raise typer.Exit(1)


def _lines(entry: dict[str, Any]) -> list[str]:
    name = entry["model"]
    if not entry["priced"]:
        hint = entry.get("did_you_mean")
        return [f"{name}: unpriced{f' ({hint})' if hint else ''}; add it with --pricing FILE.yaml"]
    who = " ".join(x for x in (entry["provider"], entry["matched"]) if x)
    lines = [f"{name}: {who + ', ' if who else ''}from {entry['source']}"]
    tiers = entry["tiers"]
    rows = [("", entry["rates"])]
    if tiers:
        rows = [(f"prompt ≤ {tiers[0]['above']:,}", entry["rates"])]
        rows += [(f"prompt > {t['above']:,}", t["rates"]) for t in tiers]
    head = ["USD per 1M tokens", *(label for _, label in _COLUMNS)]
    body = [[label, *(_num(rates[k]) for k, _ in _COLUMNS)] for label, rates in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    for r in [head, *body]:
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _num(value: float) -> str:
    return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"
