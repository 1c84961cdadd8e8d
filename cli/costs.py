"""``flowrun costs``, and the LLM options of ``run``/``resume`` (prices, budget, cassettes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from flowrun.engine import Settings, Store
    from flowrun.engine.pricing import Prices

Pricing = Annotated[
    str | None,
    typer.Option(
        "--pricing",
        metavar="FILE.yaml",
        envvar="FLOWRUN_PRICING",
        help="A YAML file of LLM prices (USD per million tokens) over the maintained ones"
        " (genai-prices), model by model.",
    ),
]
MaxCost = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0,
        metavar="USD",
        help="Fail the run once its LLM calls cost more than this many USD"
        " (overrides config.max_cost_usd).",
    ),
]
LLMRecord = Annotated[
    str | None,
    typer.Option(
        "--llm-record", metavar="FILE", help="Append every LLM request/reply to this cassette file."
    ),
]
LLMReplay = Annotated[
    str | None,
    typer.Option(
        "--llm-replay",
        metavar="FILE",
        help="Answer every llm node from this cassette file (no network; unseen requests fail).",
    ),
]


@dataclass
class LLMOptions:
    pricing: str | None = None
    max_cost: float | None = None
    record: str | None = None
    replay: str | None = None
    prices: Prices | None = None

    def prepare(self) -> LLMOptions:
        """Check the files before anything runs (bad input: exit 2 with a hint)."""
        from flowrun.engine import UsageError
        from flowrun.engine.costs import load_prices

        if self.record and self.replay:
            raise UsageError(
                "--llm-record and --llm-replay exclude each other",
                hint="replay from one cassette, or record a new one",
            )
        if self.replay:
            from flowrun.engine.llm import Cassette, CassetteError

            try:
                Cassette.load(self.replay)
            except CassetteError as exc:
                raise UsageError(f"--llm-replay {exc}") from None
            self.replay = str(Path(self.replay).resolve())
        if self.record:
            target = Path(self.record).resolve()
            if target.is_dir():
                raise UsageError(f"--llm-record {self.record}: is a folder, not a file")
            if not target.parent.is_dir():
                raise UsageError(f"--llm-record {self.record}: no such directory")
            self.record = str(target)
        if self.pricing:  # else the engine reads the maintained source when a call arrives
            self.prices = load_prices(self.pricing)
        return self

    def apply(self, settings: Settings) -> None:
        settings.prices = self.prices
        if self.max_cost is not None:
            settings.max_cost_usd = self.max_cost
        if self.record:
            settings.extra["llm_record"] = self.record
        if self.replay:
            settings.extra["llm_replay"] = self.replay


def run_costs(store: Store, run_id: str, *, by_node: bool = False) -> dict[str, Any]:
    from flowrun.engine.costs import cost_report

    return cost_report(run_id, store.llm_calls(run_id), by_node=by_node)


def do_costs(*, ref: str, by: str, db: str | None, json_out: bool, pricing: str | None) -> None:
    from flowrun.engine import UsageError
    from flowrun.engine.costs import cost_report, load_prices, reprice

    from . import console
    from .database import open_store
    from .options import write_json

    if by not in ("model", "node", "call"):
        raise UsageError(f"--by must be model or node (or call: every call), not {by!r}")
    store = open_store(db, create=False, readonly=True)
    run_id = store.resolve_run_id(ref)
    calls = store.llm_calls(run_id)
    if pricing:  # price what was unpriced when it ran; stored prices stay as they were
        calls = reprice(calls, load_prices(pricing))
    report = cost_report(run_id, calls, by_node=by == "node", by_call=by == "call")
    if json_out:
        write_json(report)
        return
    if not calls:
        console.out(f"run {run_id} made no LLM calls")
        return
    console.cost_table(report, by=by, report=True)
