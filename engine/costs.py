"""What LLM calls cost: a run's cost report (prices: ``pricing.py``; the live ledger:
``ledger.py``).

Prices (USD per million tokens, every kind of token) are :mod:`.pricing`'s. A call is
priced at its own time when its reply arrives, and the price it paid (the rates of its
tier) is stored beside it, so a report never depends on today's prices.

A model without a price is *unpriced*: its calls are counted and listed, never
billed silently as $0. A reply without usage is *unknown*: counted, not priced.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from .pricing import (
    PRICE_KEYS,
    Price,
    Prices,
    PriceSource,
    PriceTable,
    load_prices,
    parse_prices,
    reprice,
)
from .store.base import LLMCall

__all__ = [
    "PRICE_KEYS",
    "Price",
    "PriceSource",
    "PriceTable",
    "Prices",
    "cost_report",
    "load_prices",
    "parse_prices",
    "reprice",
    "usd",
]


def usd(value: float) -> str:
    """Money for people: small sums keep six decimals so they do not read as $0."""
    return f"${value:.6f}" if value < 1 else f"${value:,.4f}"


# reports ----------------------------------------------------------------------


def _totals(cs: list[LLMCall]) -> dict[str, Any]:
    known = [c.cost_usd for c in cs if c.cost_usd is not None]
    return {
        "calls": len(cs),
        "tokens_in": sum(c.tokens_in or 0 for c in cs),
        "tokens_out": sum(c.tokens_out or 0 for c in cs),
        "cached_tokens": sum(c.cached_tokens or 0 for c in cs),
        "cache_write_tokens": sum(c.cache_write_tokens or 0 for c in cs),
        "cache_write_1h_tokens": sum(c.cache_write_1h_tokens or 0 for c in cs),
        "reasoning_tokens": sum(c.reasoning_tokens or 0 for c in cs),
        # the known costs; None when no call's cost is known (never a made-up 0)
        "cost_usd": _money(known) if known or not cs else None,
        "unknown_cost_calls": len(cs) - len(known),
        "unpriced_calls": sum(1 for c in cs if c.price is None),
        "unknown_usage_calls": sum(1 for c in cs if c.tokens_in is None),
    }


def _group(calls: list[LLMCall], key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[LLMCall]] = {}
    for c in calls:
        groups.setdefault(getattr(c, key), []).append(c)
    out = []
    for name in sorted(groups):
        cs = groups[name]
        row: dict[str, Any] = {key: name, **_totals(cs)}
        if key == "node":
            row["models"] = sorted({c.model for c in cs})
        row["served_models"] = sorted({c.served_model for c in cs if c.served_model})
        out.append(row)
    return out


def _call(c: LLMCall) -> dict[str, Any]:
    """One ledger row as ``costs --json`` lists it (``model`` is the requested one)."""
    return {
        "step": c.step,
        "node": c.node,
        "index": c.index,
        "attempt": c.attempt,
        "provider": c.provider,
        "model": c.model,
        "served_model": c.served_model,
        "tokens_in": c.tokens_in,
        "tokens_out": c.tokens_out,
        "cached_tokens": c.cached_tokens,
        "cache_write_tokens": c.cache_write_tokens,
        "cache_write_1h_tokens": c.cache_write_1h_tokens,
        "reasoning_tokens": c.reasoning_tokens,
        "price": c.price,
        "cost_usd": c.cost_usd,
        "estimate_usd": c.estimate_usd,
        "ts": c.ts,
    }


def _money(values: Iterable[float]) -> float:
    return round(float(sum((Decimal(repr(v)) for v in values), Decimal(0))), 12)


def cost_report(
    run_id: str, calls: list[LLMCall], *, by_node: bool = False, by_call: bool = False
) -> dict[str, Any]:
    """SPEC §6's cost object: totals, ``by_model`` (and ``by_node``), ``unpriced_models``.

    ``total_usd`` sums the calls of known cost (None if there are calls and none is
    known); ``unknown_cost_calls`` counts the others (unpriced, or usage unknown), so
    the total is a lower bound whenever it is not 0. Rows name the requested
    ``model`` and the ``served_models`` the replies named; ``by_call`` lists every
    ledger row with its ``model`` and ``served_model`` (None: no usable reply).
    """
    totals = _totals(calls)
    report: dict[str, Any] = {"run_id": run_id, "total_usd": totals.pop("cost_usd"), **totals}
    del report["unpriced_calls"]
    report["by_model"] = _group(calls, "model")
    report["unpriced_models"] = sorted({c.model for c in calls if c.price is None})
    if by_node:
        report["by_node"] = _group(calls, "node")
    if by_call:
        report["by_call"] = [_call(c) for c in calls]
    return report
