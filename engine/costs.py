"""What LLM calls cost: price tables and a run's cost report (the live ledger: ``ledger.py``).

Prices are USD per million tokens. A call is priced when its reply arrives and the
price it used is stored beside it, so a report never depends on today's table.
Cached input tokens are billed at their own rate and never also as plain input:
``tokens_in`` counts every input token, and ``cached``/``cache_write`` are carved
out of it before the input rate applies; of ``cache_write``, the 1-hour writes
(``cache_write_1h``) are carved out again and billed at their own rate.

A model without a price is *unpriced*: its calls are counted and listed, never
billed silently as $0. A reply without usage is *unknown*: counted, not priced.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from .errors import WorkflowError
from .store.base import LLMCall

PRICE_KEYS = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
_META_KEYS = ("as_of", "sources", "currency", "unit")
_MILLION = Decimal(1_000_000)
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. Missing cache rates fall back to the input rate, except
    1-hour cache writes, which Anthropic bills at twice the input rate."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None  # 5-minute cache writes
    cache_write_1h: float | None = None

    def cost(
        self,
        tokens_in: int,
        tokens_out: int,
        cached: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
    ) -> float:
        """The cost of one call, exact to the float (decimal arithmetic, one rounding).

        ``cache_write_1h`` is the part of ``cache_write`` written to the 1-hour cache.
        """
        d = Decimal
        plain = max(0, tokens_in - cached - cache_write)
        hour = min(max(0, cache_write_1h), cache_write)
        read_rate = d(str(self.input if self.cached_input is None else self.cached_input))
        write_rate = d(str(self.input if self.cache_write is None else self.cache_write))
        hour_rate = (
            2 * d(str(self.input)) if self.cache_write_1h is None else d(str(self.cache_write_1h))
        )
        total = (
            d(plain) * d(str(self.input))
            + d(cached) * read_rate
            + d(cache_write - hour) * write_rate
            + d(hour) * hour_rate
            + d(tokens_out) * d(str(self.output))
        )
        return float(total / _MILLION)

    def to_json(self) -> dict[str, float]:
        out = {"input": self.input, "output": self.output}
        if self.cached_input is not None:
            out["cached_input"] = self.cached_input
        if self.cache_write is not None:
            out["cache_write"] = self.cache_write
        if self.cache_write_1h is not None:
            out["cache_write_1h"] = self.cache_write_1h
        return out


class PriceSource(Protocol):
    """Anything that prices a model name (the built-in table, a file, a test's dict)."""

    def lookup(self, model: str) -> Price | None: ...


def price_for(prices: PriceSource, model: str, served_model: str | None = None) -> Price | None:
    """The price of one call: the served model's when the source knows it, else the
    requested model's. Every call is priced through here (the ledger, ``--pricing``
    repricing), so a new price source takes over in one place."""
    if served_model and served_model != model:
        price = prices.lookup(served_model)
        if price is not None:
            return price
    return prices.lookup(model)


class PriceTable:
    def __init__(
        self, prices: dict[str, Price], *, as_of: str | None = None, sources: Iterable[str] = ()
    ) -> None:
        self.prices = {k.lower(): v for k, v in prices.items()}
        self.as_of = as_of
        self.sources = list(sources)

    def lookup(self, model: str) -> Price | None:
        """Exact name, then without a ``provider/`` prefix, then without a date suffix."""
        name = model.strip().lower()
        for candidate in (name, name.rsplit("/", 1)[-1]):
            if candidate in self.prices:
                return self.prices[candidate]
            base = _SNAPSHOT.sub("", candidate)
            if base in self.prices:
                return self.prices[base]
        return None

    def overridden_by(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s entries added or replacing whole entries."""
        return PriceTable(
            {**self.prices, **other.prices},
            as_of=self.as_of,
            sources=[*self.sources, *other.sources],
        )

    @classmethod
    def builtin(cls) -> PriceTable:
        """The table shipped in ``pricing.yaml`` (read once per process)."""
        return _builtin()

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkflowError(
                f"pricing file {p}: {exc.strerror or exc}", hint="check --pricing / FLOWRUN_PRICING"
            ) from None
        table = parse_prices(text, str(p))
        table.sources = [str(p)]
        return table


@functools.lru_cache(maxsize=1)
def _builtin() -> PriceTable:
    text = resources.files("flowrun.engine").joinpath("pricing.yaml").read_text("utf-8")
    return parse_prices(text, "<built-in pricing.yaml>")


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The built-in table, extended or overridden by the pricing file at ``path``."""
    table = PriceTable.builtin()
    return table if path is None else table.overridden_by(PriceTable.from_file(path))


def parse_prices(text: str, file: str) -> PriceTable:
    """A pricing YAML: ``model: {input, output, cached_input?, cache_write?, cache_write_1h?}``,
    at the top level (SPEC §6) or under ``models:`` (as the built-in file has them)."""
    from .spec.validate import did_you_mean
    from .spec.yamlpos import load

    doc = load(text, file)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a pricing file is a mapping of model names to prices")
    models: dict[str, Any] = data
    prefix: tuple[str, ...] = ()
    if isinstance(data.get("models"), dict):
        models, prefix = data["models"], ("models",)
    prices: dict[str, Price] = {}
    for name, entry in models.items():
        path = (*prefix, name)
        if not prefix and name in _META_KEYS and not isinstance(entry, dict):
            continue
        if not isinstance(entry, dict):
            raise doc.error(
                path,
                "a price is a mapping like {input: 0.15, output: 0.60}",
                hint="USD per million tokens: input, output, cached_input, cache_write,"
                " cache_write_1h",
            )
        for k in entry:
            if k not in PRICE_KEYS:
                raise doc.error(
                    (*path, k),
                    f"unknown price key {k!r}",
                    key=True,
                    hint=did_you_mean(str(k), PRICE_KEYS) or f"allowed: {', '.join(PRICE_KEYS)}",
                )
        for k in ("input", "output"):
            if k not in entry:
                raise doc.error(path, f"missing {k!r}", hint="e.g. {input: 0.15, output: 0.60}")
        values: dict[str, float] = {}
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise doc.error(
                    (*path, k), f"{k} must be a number ≥ 0 (USD per million tokens), got {v!r}"
                )
            values[k] = float(v)
        prices[str(name)] = Price(**values)
    as_of = data.get("as_of")
    sources = data.get("sources")
    if not isinstance(sources, list):
        sources = []
    return PriceTable(
        prices, as_of=None if as_of is None else str(as_of), sources=[str(s) for s in sources]
    )


def reprice(calls: Iterable[LLMCall], prices: PriceSource) -> list[LLMCall]:
    """Price the calls that were unpriced when made (priced ones keep their stored price)."""
    out = []
    for c in calls:
        if c.price is None and c.tokens_in is not None and c.tokens_out is not None:
            p = price_for(prices, c.model, c.served_model)
            if p is not None:
                cost = p.cost(
                    c.tokens_in,
                    c.tokens_out,
                    c.cached_tokens or 0,
                    c.cache_write_tokens or 0,
                    c.cache_write_1h_tokens or 0,
                )
                c = replace(c, price=p.to_json(), cost_usd=cost)
        out.append(c)
    return out


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
