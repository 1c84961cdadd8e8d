"""The live cost ledger of one run: a row per billed call the moment it ends, and the budget.

Every request that was sent is a row: a reply with usage is priced (by the served
model when the price source knows it, else the requested one); a call whose usage
never came back (a timeout, a dropped connection, a body that is not JSON, a reply
without usage) is a row of unknown usage and unknown cost. Under a budget such a
call counts at a conservative estimate, its token bounds (see ``nodes/llm.py``) at
the model's input and output prices; where no estimate can be made (no price, or no
bound on the output) a budgeted run stops, since it can no longer promise its cap.
Crossing 50% and 80% of the budget is noted once per drive of the run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from .costs import usd
from .errors import BudgetExceeded
from .pricing import Prices, PriceSource
from .store.base import LLMCall

if TYPE_CHECKING:
    from .observer import Observer
    from .records import LLMUsage
    from .store.base import Store

WARN_AT = (0.5, 0.8)  # fractions of the budget at which a run warns, once each


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """The run's spend reached ``level`` of its budget."""

    level: float
    spent_usd: float
    max_cost_usd: float

    def to_json(self) -> dict[str, float]:
        return {"level": self.level, "spent_usd": self.spent_usd, "max_cost_usd": self.max_cost_usd}


def _add(a: float, b: float) -> float:
    return float(Decimal(repr(a)) + Decimal(repr(b)))


class Ledger:
    """Writes each call as it ends and watches the budget.

    ``record`` is called by the coordinator as a call's usage arrives on the effects
    channel, and the attempt that made the call goes on only once it returned (the
    usage is a durable effect), so a crash after that point cannot lose the row.
    ``spent`` counts known costs and the estimates of calls of unknown cost.
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
        self.spent = 0.0
        self.estimated = 0  # calls counted at an estimate
        for c in before:
            self._count(c)
        self.unbounded: str | None = None  # why a call of this drive could not be counted
        self._warned: set[float] = set()
        self._warnings: list[BudgetWarning] = []
        self._note_levels()
        over_budget.clear()
        if self._over():
            over_budget.set()

    def _count(self, call: LLMCall) -> None:
        if call.cost_usd is not None:
            self.spent = _add(self.spent, call.cost_usd)
        elif call.estimate_usd is not None:
            self.spent = _add(self.spent, call.estimate_usd)
            self.estimated += 1

    def _over(self) -> bool:
        return self.max_cost is not None and self.spent > self.max_cost

    def _note_levels(self) -> None:  # under self._lock (or before any thread shares self)
        if not self.max_cost:
            return
        for level in WARN_AT:
            if level not in self._warned and self.spent >= level * self.max_cost:
                self._warned.add(level)
                self._warnings.append(BudgetWarning(level, self.spent, self.max_cost))

    @property
    def prices(self) -> PriceSource:
        if self._prices is None:
            self._prices = Prices()
        return self._prices

    def record(self, step: int, node: str, index: int | None, usage: LLMUsage) -> None:
        now = time.time()
        # the served model's price when the source knows it, else the requested one's
        price = self.prices.lookup(usage.model, served=usage.served_model, at=now)
        known = usage.tokens_in is not None and usage.tokens_out is not None
        cost = estimate = None
        if price is not None and known:
            cost = price.cost(
                usage.tokens_in or 0,
                usage.tokens_out or 0,
                usage.cached or 0,
                usage.cache_write or 0,
                usage.cache_write_1h or 0,
                usage.reasoning or 0,
            )
        elif price is not None and usage.bound_in is not None and usage.bound_out is not None:
            estimate = price.cost(usage.bound_in, usage.bound_out)  # all input at the input rate
        call = LLMCall(
            run_id=self.run_id,
            step=step,
            node=node,
            index=index,
            attempt=usage.attempt,
            provider=usage.provider,
            model=usage.model,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cached_tokens=usage.cached,
            cache_write_tokens=usage.cache_write,
            price=None if price is None else price.applied(usage.tokens_in or 0).to_json(),
            cost_usd=cost,
            ts=now,
            cache_write_1h_tokens=usage.cache_write_1h,
            reasoning_tokens=usage.reasoning,
            served_model=usage.served_model,
            estimate_usd=estimate,
        )
        self.store.record_llm_call(call)
        with self._lock:
            self.calls += 1
            self._count(call)
            if self.max_cost is not None and cost is None and estimate is None:
                self.unbounded = self.unbounded or _why_unbounded(node, usage, price)
            self._note_levels()
            over = self._over() or self.unbounded is not None
        if over:
            self.over_budget.set()
        if self.observer is not None:
            self.observer.llm_usage(
                node,
                usage.model,
                usage.tokens_in or 0,
                usage.tokens_out or 0,
                usage.cached or 0,
                cost,
            )

    def take_warnings(self) -> list[BudgetWarning]:
        """The budget levels reached since the last call (for the coordinator to announce)."""
        with self._lock:
            out, self._warnings = self._warnings, []
        return out

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if the run has spent more than its budget."""
        if self.over_budget.is_set() or self._over():
            self.over_budget.set()
            raise self.exceeded()

    def exceeded(self) -> BudgetExceeded:
        if self.unbounded is not None and not self._over():
            return BudgetExceeded(
                f"budget cannot be kept: {self.unbounded}, so it cannot be counted against"
                f" the max cost of {usd(self.max_cost or 0)}; no new task was dispatched",
                hint="give the node max_tokens (or its model a price with --pricing FILE),"
                f" then `flowrun resume {self.run_id}`",
            )
        guess = f", {self.estimated} of unknown cost at an estimate" if self.estimated else ""
        return BudgetExceeded(
            f"budget exceeded: {self.calls} LLM call(s) cost {usd(self.spent)}{guess}, more than"
            f" the max cost of {usd(self.max_cost or 0)}; no new task was dispatched",
            hint=f"continue with `flowrun resume {self.run_id} --max-cost HIGHER`",
        )


def _why_unbounded(node: str, usage: LLMUsage, price: object) -> str:
    if price is None:
        return f"node {node!r} called {usage.model}, which has no price"
    return (
        f"node {node!r} made a call to {usage.model} whose usage never came back and"
        " whose output has no max_tokens to bound it"
    )
