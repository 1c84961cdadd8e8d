"""The maintained price source: genai-prices' offline snapshot, behind one small adapter.

genai-prices (pydantic, MIT) ships its price data inside the package: price history
by date, long-context tiers, cache reads and writes, and the names each model is
called by (dated snapshots, aliases such as ``claude-opus-4-0`` or
``gpt-5-chat-latest``). This module is the only one that imports it, and only when a
price is first needed: ``flowrun --help`` and runs without LLM calls never load it.

Kept offline and deterministic:

- a private ``DataSnapshot`` over the bundled data, never the process-wide snapshot
  (which ``UpdatePrices``, run by another library in the same process, can replace
  with one fetched from the network); ``UpdatePrices`` is never used;
- each call is priced at its own time (``at``, as stored in the ledger), so the same
  call gets the same price whatever day a report is made.

Use::

    source = GenaiPrices()
    source.lookup("gpt-4o", served="gpt-4o-2024-05-13", at=time.time())
    # -> Price(input=5.0, output=15.0, ...): the served snapshot's own price

``lookup(requested, served=None, at=None)`` prices the served model (the one the reply
names) when the source knows it, else the requested one; None when it knows neither.
A name is matched as the source matches it (case-insensitive; dated snapshots take
their own price or their model's); a ``provider/`` prefix the source knows
(``vertex_ai/``, ``anthropic/``, ``bedrock/``, ``openrouter/``) picks that provider's
price, and any other prefix is dropped. Without a prefix the model name picks the
provider, not the endpoint it was sent to: gemini served through an
OpenAI-compatible endpoint is priced as Google prices it.

The returned :class:`~flowrun.engine.pricing.Price` has the source's rates and its
long-context tiers as ``tiers``. A rate the source leaves out is billed as the source
bills it: cache reads and writes at the input rate and reasoning at the output rate
(Price's own fallbacks, so they follow a pricing file's ``input``/``output``), 1-hour
writes at the 5-minute write rate (set explicitly).
"""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from .pricing import Price

# genai-prices key -> flowrun Price field
_KEYS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_reasoning_mtok": "reasoning",
}


class GenaiPrices:
    """A :class:`~flowrun.engine.pricing.PriceSource` over genai-prices' bundled snapshot."""

    def __init__(self) -> None:
        from genai_prices.data import providers
        from genai_prices.data_snapshot import DataSnapshot

        self.label = f"genai-prices {version('genai-prices')} snapshot"
        self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        self._lock = threading.Lock()  # the snapshot's lookup caches are plain dicts

    def lookup(
        self, requested: str, served: str | None = None, at: float | None = None
    ) -> Price | None:
        return (self.find(served, at) if served else None) or self.find(requested, at)

    def find(self, model: str, at: float | None = None) -> Price | None:
        """The price of one model name at time ``at`` (seconds since the epoch; None: now)."""
        found = self._match(model.strip().lower())
        if found is None:
            return None
        provider, info = found
        when = dt.datetime.fromtimestamp(at, dt.UTC) if at else dt.datetime.now(dt.UTC)
        return _price(info.get_prices(when), self.label, provider.id, info.id)

    def names(self) -> list[str]:
        """Every model id the source prices (for did-you-mean)."""
        return sorted({m.id for p in self._snapshot.providers for m in p.models})

    def _match(self, name: str) -> tuple[Any, Any] | None:
        from genai_prices.data_snapshot import find_provider_by_id

        snap = self._snapshot
        with self._lock:
            if "/" in name:
                prefix, rest = name.split("/", 1)
                provider = find_provider_by_id(snap.providers, prefix)
                if provider is not None:
                    model = provider.find_model(rest, all_providers=snap.providers)
                    if model is not None:
                        return provider, model
            for candidate in dict.fromkeys((name, name.rsplit("/", 1)[-1])):
                try:
                    return snap.find_provider_model(candidate, None, None, None)
                except LookupError:
                    continue
        return None


def _price(model_price: Any, source: str, provider: str, model: str) -> Price | None:
    """genai-prices' ``ModelPrice`` as a flowrun Price, tiers and fallbacks made explicit
    (None for a model without token prices: an image or audio model)."""
    from genai_prices.types import TieredPrices

    given: dict[str, Any] = {}
    for key, name in _KEYS.items():
        value = getattr(model_price, key, None)
        if value is not None:
            given[name] = value
    if "input" not in given and "output" not in given:
        return None
    starts = sorted(
        {t.start for v in given.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )

    def flat(above: int | None) -> dict[str, Any]:
        rates: dict[str, Any] = {}
        for name, value in given.items():
            rate = value
            if isinstance(value, TieredPrices):
                rate = value.base
                for tier in value.tiers:  # ascending; the source's rule: prompt > start
                    if above is not None and tier.start <= above:
                        rate = tier.price
            rates[name] = _float(rate)
        rates.setdefault("input", 0.0)
        rates.setdefault("output", 0.0)
        if "cache_write" in rates:  # the source bills 1-hour writes it has no rate for so
            rates.setdefault("cache_write_1h", rates["cache_write"])
        return rates

    tiers = tuple(Price(**flat(s), above=s) for s in starts)
    return Price(**flat(None), tiers=tiers, source=source, provider=provider, model=model)


def _float(value: Decimal) -> float:
    return float(value)
