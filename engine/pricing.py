"""What a model costs: :class:`Price`, pricing files, and overrides over the maintained source.

Prices are USD per million tokens. They come from the maintained source (genai-prices'
offline snapshot, behind :mod:`.price_source`); a pricing file (``--pricing FILE`` or
``FLOWRUN_PRICING``) overrides it per model, key by key: a file entry that names only
``input``/``output`` keeps the source's cache rates and long-context tiers for the
rest. :func:`load_prices` builds that combination; nothing here imports genai-prices
until a price is looked up.

Token kinds. ``tokens_in`` counts every input token; ``cached`` (cache reads) and
``cache_write`` are carved out of it before the input rate applies, and of
``cache_write`` the 1-hour writes (``cache_write_1h``) are carved out again.
``tokens_out`` counts every output token, reasoning ones included (as OpenAI and
Anthropic report them); ``reasoning`` is the part of it billed at the ``reasoning``
rate, which is the output rate unless a price says otherwise. No token is billed twice.

Long-context tiers. A price may carry ``tiers``: the rates that apply to the whole
call once its prompt (``tokens_in``, cache reads and writes included) is larger than
the tier's ``above`` (gemini-2.5-pro costs $2.50/$15 instead of $1.25/$10 above 200k
prompt tokens). :meth:`Price.applied` is the flat price one call pays; that is what the
ledger stores with each call.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import WorkflowError
from .store.base import LLMCall

if TYPE_CHECKING:
    from .price_source import GenaiPrices

PRICE_KEYS = ("input", "output", "cached_input", "cache_write", "cache_write_1h", "reasoning")
_MILLION = Decimal(1_000_000)
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, and where the price came from.

    Missing rates fall back: cache reads and 5-minute writes to ``input``, 1-hour
    writes to twice ``input`` (Anthropic's rule), reasoning to ``output``. Prices from
    the maintained source have every rate filled in, as the source bills them.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None  # 5-minute cache writes
    cache_write_1h: float | None = None
    reasoning: float | None = None
    tiers: tuple[Price, ...] = ()  # long-context rates, each with its ``above``, ascending
    above: int | None = None  # these rates apply to calls with more prompt tokens than this
    source: str | None = field(default=None, compare=False)  # "genai-prices 0.2.3 snapshot"
    provider: str | None = field(default=None, compare=False)  # as the source names it
    model: str | None = field(default=None, compare=False)  # the source's model id

    def applied(self, tokens_in: int) -> Price:
        """The flat price a call with ``tokens_in`` prompt tokens pays: its tier's rates."""
        chosen = self
        for tier in self.tiers:
            if tier.above is not None and tokens_in > tier.above:
                chosen = tier
        return replace(
            chosen, tiers=(), source=self.source, provider=self.provider, model=self.model
        )

    def cost(
        self,
        tokens_in: int,
        tokens_out: int,
        cached: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
        reasoning: int = 0,
    ) -> float:
        """The cost of one call, exact to the float (decimal arithmetic, one rounding)."""
        r = {k: Decimal(str(v)) for k, v in self.applied(tokens_in).rates().items()}
        d = Decimal
        plain = max(0, tokens_in - cached - cache_write)
        hour = min(max(0, cache_write_1h), cache_write)
        thought = min(max(0, reasoning), tokens_out)
        total = (
            d(plain) * r["input"]
            + d(cached) * r["cached_input"]
            + d(cache_write - hour) * r["cache_write"]
            + d(hour) * r["cache_write_1h"]
            + d(tokens_out - thought) * r["output"]
            + d(thought) * r["reasoning"]
        )
        return float(total / _MILLION)

    def rates(self) -> dict[str, float]:
        """Every rate as billed, the fallbacks resolved (USD per million tokens)."""
        return {
            "input": self.input,
            "output": self.output,
            "cached_input": _pick(self.cached_input, self.input),
            "cache_write": _pick(self.cache_write, self.input),
            "cache_write_1h": _pick(self.cache_write_1h, 2 * self.input),
            "reasoning": _pick(self.reasoning, self.output),
        }

    def over(self, base: Price | None) -> Price:
        """This (partial) price with the rates it leaves out taken from ``base``.

        The rates this price names replace ``base``'s at every tier; the others keep
        ``base``'s, tiers included. Without ``base``, this price as it is.
        """
        if base is None:
            return self
        given = {k: getattr(self, k) for k in PRICE_KEYS if getattr(self, k) is not None}
        source = " over ".join(s for s in (self.source, base.source) if s)
        return replace(
            base,
            **given,
            tiers=tuple(replace(t, **given) for t in base.tiers),
            source=source or None,
        )

    def to_json(self) -> dict[str, Any]:
        """The rates, the tier (``above``) and the source; ``tiers`` only on an unapplied price."""
        out: dict[str, Any] = {"input": self.input, "output": self.output}
        for k in PRICE_KEYS[2:]:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.above is not None:
            out["above"] = self.above
        if self.tiers:
            out["tiers"] = [t.to_json() for t in self.tiers]
        for k in ("source", "provider", "model"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> Price:
        known = {f.name for f in fields(Price)} - {"tiers"}
        tiers = tuple(Price.from_json(t) for t in data.get("tiers") or ())
        return Price(**{k: v for k, v in data.items() if k in known}, tiers=tiers)


def _pick(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


class PriceSource(Protocol):
    """Anything that prices a model (the maintained source, a file, a test's table).

    ``served`` is the model the reply named (a dated snapshot, say): priced when the
    source knows it, else ``requested`` is. ``at`` is the call's time (``time.time()``;
    None: now), for prices that changed on a date.
    """

    def lookup(
        self, requested: str, served: str | None = None, at: float | None = None
    ) -> Price | None: ...


class PriceTable:
    """A pricing file's prices by model name (the names as written, matched loosely)."""

    def __init__(self, prices: dict[str, Price], *, sources: Iterable[str] = ()) -> None:
        self.prices = {k.lower(): v for k, v in prices.items()}
        self.sources = list(sources)

    def find(self, model: str) -> Price | None:
        """Exact name, then without a ``provider/`` prefix, then without a date suffix."""
        name = model.strip().lower()
        for candidate in (name, name.rsplit("/", 1)[-1]):
            if candidate in self.prices:
                return self.prices[candidate]
            base = _SNAPSHOT.sub("", candidate)
            if base in self.prices:
                return self.prices[base]
        return None

    def lookup(
        self, requested: str, served: str | None = None, at: float | None = None
    ) -> Price | None:
        return (self.find(served) if served else None) or self.find(requested)

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkflowError(
                f"pricing file {p}: {exc.strerror or exc}", hint="check --pricing / FLOWRUN_PRICING"
            ) from None
        return parse_prices(text, str(p))


class Prices:
    """The maintained source with a pricing file's entries over it (the ``PriceSource``
    every run uses). A name is priced by the served model when the file or the source
    knows it, else by the requested one; a file entry is merged over the source's."""

    def __init__(self, overrides: PriceTable | None = None, source: Any = None) -> None:
        self.overrides = overrides
        self._source: GenaiPrices | None = source  # None: the maintained one, when first needed

    @property
    def source(self) -> GenaiPrices:
        if self._source is None:
            self._source = maintained_source()
        return self._source

    def lookup(
        self, requested: str, served: str | None = None, at: float | None = None
    ) -> Price | None:
        for name in (served, requested):
            if not name:
                continue
            mine = self.overrides.find(name) if self.overrides is not None else None
            base = self.source.find(name, at)
            if mine is not None or base is not None:
                return mine.over(base) if mine is not None else base
        return None

    def suggest(self, model: str) -> str | None:
        """A did-you-mean for a name nobody prices."""
        from .spec.validate import did_you_mean

        names = [*(self.overrides.prices if self.overrides else ()), *self.source.names()]
        return did_you_mean(model.strip().lower(), names)


@functools.lru_cache(maxsize=1)
def maintained_source() -> GenaiPrices:
    """The maintained price source, built once per process (importing it takes ~0.5 s)."""
    from .price_source import GenaiPrices

    return GenaiPrices()


def load_prices(path: str | Path | None = None) -> Prices:
    """The maintained source, with the pricing file at ``path`` over it."""
    return Prices(None if path is None else PriceTable.from_file(path))


def parse_prices(text: str, file: str) -> PriceTable:
    """A pricing YAML: ``model: {input, output, cached_input?, cache_write?, cache_write_1h?,
    reasoning?}``, at the top level (or under ``models:``)."""
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
        if not isinstance(entry, dict):
            raise doc.error(
                path,
                "a price is a mapping like {input: 0.15, output: 0.60}",
                hint="USD per million tokens: " + ", ".join(PRICE_KEYS),
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
        values: dict[str, Any] = {}
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise doc.error(
                    (*path, k), f"{k} must be a number ≥ 0 (USD per million tokens), got {v!r}"
                )
            values[k] = float(v)
        prices[str(name)] = Price(**values, source=file)
    return PriceTable(prices, sources=[file])


def reprice(calls: Iterable[LLMCall], prices: PriceSource) -> list[LLMCall]:
    """Price the calls that were unpriced when made (priced ones keep their stored price)."""
    out = []
    for c in calls:
        if c.price is None and c.tokens_in is not None and c.tokens_out is not None:
            p = prices.lookup(c.model, served=c.served_model, at=c.ts or None)
            if p is not None:
                cost = p.cost(
                    c.tokens_in,
                    c.tokens_out,
                    c.cached_tokens or 0,
                    c.cache_write_tokens or 0,
                    c.cache_write_1h_tokens or 0,
                    c.reasoning_tokens or 0,
                )
                c = replace(c, price=p.applied(c.tokens_in).to_json(), cost_usd=cost)
        out.append(c)
    return out


def price_report(
    models: Iterable[str], prices: Prices, at: float | None = None
) -> list[dict[str, Any]]:
    """What each model costs at ``at`` (None: now), as ``flowrun prices`` shows it.

    Per model: ``priced``; the rates billed (``rates``: every kind of token, fallbacks
    resolved) and long-context ``tiers``; the ``provider`` and the source's model id
    (``matched``); ``source`` (the snapshot, a pricing file, or the file over the
    snapshot). An unknown name gets ``priced: false`` and a did-you-mean.
    """
    out: list[dict[str, Any]] = []
    for name in models:
        p = prices.lookup(name, at=at)
        if p is None:
            out.append({"model": name, "priced": False, "did_you_mean": prices.suggest(name)})
            continue
        out.append(
            {
                "model": name,
                "priced": True,
                "provider": p.provider,
                "matched": p.model,
                "source": p.source,
                "rates": p.rates(),
                "tiers": [{"above": t.above, "rates": t.rates()} for t in p.tiers],
            }
        )
    return out
