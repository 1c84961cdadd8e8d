"""What LLM calls cost: the live ledger of a run, and a run's cost report.

Prices (USD per million tokens, every kind of token) are :mod:`.pricing`'s. A call is
priced at its own time when its reply arrives, and the price it paid (the rates of its
tier) is stored beside it, so a report never depends on today's prices.

A model without a price is *unpriced*: its calls are counted and listed, never
billed silently as $0. A reply without usage is *unknown*: counted, not priced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import BudgetExceeded
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
    "Ledger",
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

if TYPE_CHECKING:
    from .nodes.base import Context, LLMUsage
    from .runtime.observer import Observer
    from .store.base import Store


class Ledger:
    """The live ledger of one run: writes each call as it arrives and watches the budget.

    ``record`` is the run scope's usage listener; it runs on whichever thread got
    the reply and writes through the store's own lock, so the row is committed
    before the node's attempt goes on (a crash after that point cannot lose it).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        prices: PriceSource | None,
        max_cost: float | None,
        observer: Observer | None,
        over_budget: threading.Event,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self._prices = prices  # None: the maintained source, read when the first call arrives
        self.max_cost = max_cost
        self.observer = observer
        self.over_budget = over_budget
        self._lock = threading.Lock()
        before = store.llm_calls(run_id)
        self.calls = len(before)
        self.spent = float(sum(Decimal(repr(c.cost_usd)) for c in before if c.cost_usd))
        over_budget.clear()
        if self._over():
            over_budget.set()

    def _over(self) -> bool:
        return self.max_cost is not None and self.spent > self.max_cost

    @property
    def prices(self) -> PriceSource:
        if self._prices is None:
            self._prices = Prices()
        return self._prices

    def record(self, ctx: Context, usage: LLMUsage) -> None:
        now = time.time()
        price = self.prices.lookup(usage.model, at=now)
        known = usage.tokens_in is not None and usage.tokens_out is not None
        cost = None
        if price is not None and known:
            cost = price.cost(
                usage.tokens_in or 0,
                usage.tokens_out or 0,
                usage.cached or 0,
                usage.cache_write or 0,
                usage.cache_write_1h or 0,
                usage.reasoning or 0,
            )
        paid = None if price is None else price.applied(usage.tokens_in or 0).to_json()
        self.store.record_llm_call(
            LLMCall(
                run_id=self.run_id,
                step=ctx.step,
                node=ctx.node,
                index=ctx.index,
                attempt=ctx.attempt,
                provider=usage.provider,
                model=usage.model,
                tokens_in=usage.tokens_in,
                tokens_out=usage.tokens_out,
                cached_tokens=usage.cached,
                cache_write_tokens=usage.cache_write,
                price=paid,
                cost_usd=cost,
                ts=now,
                cache_write_1h_tokens=usage.cache_write_1h,
                reasoning_tokens=usage.reasoning,
            )
        )
        with self._lock:
            self.calls += 1
            if cost:
                self.spent = float(Decimal(repr(self.spent)) + Decimal(repr(cost)))
            over = self._over()
        if over:
            self.over_budget.set()
        if self.observer is not None:
            self.observer.llm_usage(
                ctx.node,
                usage.model,
                usage.tokens_in or 0,
                usage.tokens_out or 0,
                usage.cached or 0,
                cost,
            )

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if the run has spent more than its budget."""
        if self.over_budget.is_set() or self._over():
            self.over_budget.set()
            raise self.exceeded()

    def exceeded(self) -> BudgetExceeded:
        return BudgetExceeded(
            f"budget exceeded: {self.calls} LLM call(s) cost {usd(self.spent)}, more than the"
            f" max cost of {usd(self.max_cost or 0)}; no new task was dispatched",
            hint=f"continue with `flowrun resume {self.run_id} --max-cost HIGHER`",
        )


def usd(value: float) -> str:
    """Money for people: small sums keep six decimals so they do not read as $0."""
    return f"${value:.6f}" if value < 1 else f"${value:,.4f}"


# reports ----------------------------------------------------------------------


def _group(calls: list[LLMCall], key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[LLMCall]] = {}
    for c in calls:
        groups.setdefault(getattr(c, key), []).append(c)
    out = []
    for name in sorted(groups):
        cs = groups[name]
        priced = [c.cost_usd for c in cs if c.cost_usd is not None]
        row: dict[str, Any] = {
            key: name,
            "calls": len(cs),
            "tokens_in": sum(c.tokens_in or 0 for c in cs),
            "tokens_out": sum(c.tokens_out or 0 for c in cs),
            "cached_tokens": sum(c.cached_tokens or 0 for c in cs),
            "cache_write_tokens": sum(c.cache_write_tokens or 0 for c in cs),
            "cache_write_1h_tokens": sum(c.cache_write_1h_tokens or 0 for c in cs),
            "reasoning_tokens": sum(c.reasoning_tokens or 0 for c in cs),
            "cost_usd": _money(priced) if priced or all(c.price for c in cs) else None,
            "unpriced_calls": sum(1 for c in cs if c.price is None),
            "unknown_usage_calls": sum(1 for c in cs if c.tokens_in is None),
        }
        if key == "node":
            row["models"] = sorted({c.model for c in cs})
        out.append(row)
    return out


def _money(values: Iterable[float]) -> float:
    return round(float(sum((Decimal(repr(v)) for v in values), Decimal(0))), 12)


def cost_report(run_id: str, calls: list[LLMCall], *, by_node: bool = False) -> dict[str, Any]:
    """SPEC §6's cost object: totals, ``by_model`` (and ``by_node``), ``unpriced_models``.

    ``total_usd`` sums the priced calls; ``unpriced_models`` and
    ``unknown_usage_calls`` say when it is a lower bound.
    """
    report: dict[str, Any] = {
        "run_id": run_id,
        "total_usd": _money(c.cost_usd for c in calls if c.cost_usd is not None),
        "tokens_in": sum(c.tokens_in or 0 for c in calls),
        "tokens_out": sum(c.tokens_out or 0 for c in calls),
        "cached_tokens": sum(c.cached_tokens or 0 for c in calls),
        "cache_write_tokens": sum(c.cache_write_tokens or 0 for c in calls),
        "cache_write_1h_tokens": sum(c.cache_write_1h_tokens or 0 for c in calls),
        "reasoning_tokens": sum(c.reasoning_tokens or 0 for c in calls),
        "calls": len(calls),
        "unknown_usage_calls": sum(1 for c in calls if c.tokens_in is None),
        "by_model": _group(calls, "model"),
        "unpriced_models": sorted({c.model for c in calls if c.price is None}),
    }
    if by_node:
        report["by_node"] = _group(calls, "node")
    return report
