"""Prices from the maintained source (genai-prices' offline snapshot), every kind of token.

Known prices are pinned through the call's timestamp (the source keeps price history,
so a past date gives the same price whatever the package's newer entries say). The
loopback servers (tests/support/llm_servers.py) speak the real wire formats and keep their own
bill from the providers' published rate cards; flowrun's ledger must equal it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import warnings
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import pytest
from flowrun.engine.costs import Price, load_prices
from flowrun.engine.llm.openai import parse_usage
from flowrun.engine.price_source import GenaiPrices

from tests.engine.llm.test_llm_leftovers import ANTHROPIC_KEY, clean_env, flowrun, ledger, write
from tests.support.llm_servers import AnthropicServer, OpenAIServer, RateCard, Reply

SNAPSHOT = f"genai-prices {version('genai-prices')} snapshot"
OCT_2025 = dt.datetime(2025, 10, 20, tzinfo=dt.UTC).timestamp()
JAN_2026 = dt.datetime(2026, 1, 15, tzinfo=dt.UTC).timestamp()
APR_2026 = dt.datetime(2026, 4, 15, tzinfo=dt.UTC).timestamp()

# published prices (USD per million tokens), as the providers' pages state them
GEMINI_25_PRO = RateCard("1.25", "10", "0.125", above=200_000, long=RateCard("2.5", "15", "0.25"))
SONNET_45 = RateCard(
    "3", "15", "0.3", "3.75", "6", above=200_000, long=RateCard("6", "22.5", "0.6", "7.5", "12")
)
GPT_5 = RateCard("1.25", "10", "0.125")


def exact(value: float) -> Fraction:
    return Fraction(str(value))


# the source: names, tiers, history -------------------------------------------------
def test_gemini_2_5_pro_over_200k_prompt_tokens_is_billed_at_the_long_context_tier() -> None:
    p = load_prices().lookup("gemini-2.5-pro", at=OCT_2025)
    assert p is not None and p.source == SNAPSHOT and p.provider == "google"
    assert abs(p.cost(250_000, 2_000) - 0.655) < 1e-9
    assert abs(p.cost(200_000, 2_000) - (0.25 + 0.02)) < 1e-9  # at the line: the base rates
    paid = p.applied(250_000)
    assert (paid.input, paid.output, paid.cached_input, paid.above) == (2.5, 15.0, 0.25, 200_000)
    assert paid.to_json()["above"] == 200_000 and "tiers" not in paid.to_json()


def test_current_models_and_aliases_are_priced_by_their_own_entries() -> None:
    prices = load_prices()
    got = {n: prices.lookup(n, at=APR_2026) for n in (
        "gpt-5.1", "claude-opus-4-5", "claude-sonnet-4-6", "gemini-3-pro-preview",
        "claude-opus-4-0", "gpt-5-chat-latest", "o4-mini-high",
    )}  # fmt: skip
    assert all(p is not None for p in got.values()), got
    opus45, opus40 = got["claude-opus-4-5"], got["claude-opus-4-0"]
    assert opus45 is not None and opus40 is not None
    assert (opus45.input, opus45.output, opus45.cache_write_1h) == (5.0, 25.0, 10.0)
    assert (opus40.input, opus40.output, opus40.cache_write_1h) == (15.0, 75.0, 30.0)
    chat, mini = got["gpt-5-chat-latest"], got["o4-mini-high"]
    assert chat is not None and chat.model == "gpt-5"
    assert mini is not None and mini.model == "o4-mini"


def test_a_provider_prefix_gets_that_providers_price() -> None:
    prices = load_prices()
    vertex = prices.lookup("vertex_ai/gemini-2.5-pro", at=OCT_2025)
    assert vertex is not None and vertex.provider == "google"
    assert vertex == prices.lookup("gemini-2.5-pro", at=OCT_2025)
    anthropic = prices.lookup("anthropic/claude-opus-4-1", at=OCT_2025)
    assert anthropic is not None and anthropic.provider == "anthropic" and anthropic.input == 15
    bedrock = prices.lookup("bedrock/anthropic.claude-3-5-haiku-20241022-v1:0", at=OCT_2025)
    assert bedrock is not None and bedrock.provider == "aws"
    assert prices.lookup("nosuchvendor/gpt-4o", at=OCT_2025) == prices.lookup("gpt-4o")


def test_price_history_is_kept_so_the_calls_own_time_picks_the_price() -> None:
    """claude-sonnet-4-6 had a 200k tier until 2026-03-13, then one flat price."""
    p_before = load_prices().lookup("claude-sonnet-4-6", at=JAN_2026)
    p_after = load_prices().lookup("claude-sonnet-4-6", at=APR_2026)
    assert p_before is not None and p_after is not None
    assert exact(p_before.cost(300_000, 1_000)) == (300_000 * 6 + 1_000 * Fraction("22.5")) / 10**6
    assert exact(p_after.cost(300_000, 1_000)) == Fraction(300_000 * 3 + 1_000 * 15, 10**6)


def test_the_served_snapshot_is_priced_when_the_source_knows_it() -> None:
    source = GenaiPrices()
    served = source.lookup("gpt-4o", served="gpt-4o-2024-05-13", at=OCT_2025)
    assert served == Price(5.0, 15.0) and served.model == "gpt-4o-2024-05-13"
    unknown = source.lookup("gpt-4o", served="gpt-4o-loopback-build", at=OCT_2025)
    assert unknown == source.find("gpt-4o", OCT_2025)
    assert load_prices().lookup("gpt-4o", "gpt-4o-2024-05-13", OCT_2025) == Price(5.0, 15.0)


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("gemini-2.5-pro", {"input_tokens": 250_000, "cache_read_tokens": 40_000}),
        ("claude-sonnet-4-5", {"input_tokens": 210_000, "cache_read_tokens": 1_000,
                               "cache_write_tokens": 9_000, "cache_write_1h_tokens": 4_000}),
        ("claude-haiku-4-5", {"input_tokens": 5_000, "cache_write_tokens": 3_000,
                              "cache_write_1h_tokens": 3_000}),
        ("gpt-5.6-cyber", {"input_tokens": 8_000, "cache_read_tokens": 1_000,
                           "cache_write_tokens": 2_000}),
        ("gpt-5", {"input_tokens": 3_000, "cache_read_tokens": 1_024}),
    ],
)  # fmt: skip
def test_flowrun_bills_every_token_kind_exactly_as_the_source_calculates(
    model: str, usage: dict[str, int]
) -> None:
    """Our arithmetic over the adapter's rates equals genai-prices' own calc_price."""
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import Usage

    snap = DataSnapshot(providers=providers, from_auto_update=False)
    when = dt.datetime.fromtimestamp(OCT_2025 + 200 * 86400, dt.UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = snap.calc(Usage(**usage, output_tokens=700), model, None, None, when).total_price
    p = load_prices().lookup(model, at=when.timestamp())
    assert p is not None
    got = p.cost(
        usage["input_tokens"],
        700,
        usage.get("cache_read_tokens", 0),
        usage.get("cache_write_tokens", 0),
        usage.get("cache_write_1h_tokens", 0),
    )
    assert exact(got) == Fraction(want)


def test_reasoning_tokens_are_billed_as_output_once() -> None:
    gpt5 = load_prices().lookup("gpt-5", at=OCT_2025)
    assert gpt5 is not None
    with_reasoning = gpt5.cost(1_000, 500, reasoning=300)
    assert exact(with_reasoning) == Fraction(1_000 * Fraction("1.25") + 500 * 10, 10**6)
    assert with_reasoning == gpt5.cost(1_000, 500)
    own_rate = Price(1.0, 2.0, reasoning=4.0)  # a source with its own reasoning rate
    assert exact(own_rate.cost(0, 500, reasoning=300)) == Fraction(200 * 2 + 300 * 4, 10**6)


def test_a_partial_override_keeps_the_sources_cache_rates_and_tiers(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("gemini-2.5-pro: {input: 1, output: 2}\nmine: {input: 0.5, output: 1}\n")
    prices = load_prices(f)
    p = prices.lookup("gemini-2.5-pro", at=OCT_2025)
    assert p is not None and p.source == f"{f} over {SNAPSHOT}"
    assert (p.input, p.output, p.cached_input) == (1.0, 2.0, 0.125)
    long = p.applied(250_000)
    assert (long.input, long.output, long.cached_input) == (1.0, 2.0, 0.25)
    mine = prices.lookup("mine")
    assert mine == Price(0.5, 1.0) and mine.source == str(f) and mine.provider is None


# the wire: usage parsing and the ledger -------------------------------------------
def test_openai_usage_reads_cache_writes_and_reasoning_inside_the_totals() -> None:
    u = parse_usage(
        {
            "prompt_tokens": 9_000,
            "completion_tokens": 800,
            "prompt_tokens_details": {"cached_tokens": 1_000, "cache_write_tokens": 2_000},
            "completion_tokens_details": {"reasoning_tokens": 500},
        }
    )
    assert u is not None
    assert (u.tokens_in, u.tokens_out, u.cached, u.cache_write, u.reasoning) == (
        9_000, 800, 1_000, 2_000, 500,
    )  # fmt: skip


LLM_RUN = """
name: priced
state: {a: {default: null}, b: {default: null}}
nodes:
  long:
    llm: {model: gemini-2.5-pro, provider: openai, base_url: URL, prompt: "long"}
    save: a
    next: think
  think:
    llm: {model: gpt-5, provider: openai, base_url: URL, prompt: "think"}
    save: b
"""


def test_a_run_through_an_openai_compatible_endpoint_costs_what_the_provider_bills(
    tmp_path: Path,
) -> None:
    script = [
        Reply(usage={"tokens_in": 250_000, "tokens_out": 2_000}),
        Reply(usage={"tokens_in": 3_000, "tokens_out": 900, "cached": 1_024, "reasoning": 600}),
    ]
    rates = {"gemini-2.5-pro": GEMINI_25_PRO, "gpt-5": GPT_5}
    db = tmp_path / "f.db"
    with OpenAIServer(script=script, rates=rates) as s:  # a local endpoint: no key
        wf = write(tmp_path, "wf.yaml", LLM_RUN.replace("URL", s.url))
        r = flowrun("run", str(wf), "--db", str(db), "--json", cwd=tmp_path, env=clean_env())
        assert r.returncode == 0, r.stderr
        billed, answered = s.billed_usd, len(s.served)
    costs = json.loads(r.stdout)["costs"]
    assert answered == costs["calls"] == 2
    assert abs(Fraction(str(costs["total_usd"])) - billed) < Fraction(1, 10**9)
    by_model = {m["model"]: m for m in costs["by_model"]}
    assert abs(by_model["gemini-2.5-pro"]["cost_usd"] - 0.655) < 1e-9
    assert costs["reasoning_tokens"] == 600 and by_model["gpt-5"]["reasoning_tokens"] == 600
    rows = {row["model"]: row for row in ledger(db)}
    paid = json.loads(rows["gemini-2.5-pro"]["price"])
    assert (paid["input"], paid["output"], paid["above"]) == (2.5, 15.0, 200_000)
    assert paid["source"] == SNAPSHOT and paid["provider"] == "google"
    assert rows["gpt-5"]["reasoning_tokens"] == 600 and rows["gpt-5"]["cached_tokens"] == 1_024


def test_anthropic_cache_reads_and_5_minute_and_1_hour_writes_cost_what_anthropic_bills(
    tmp_path: Path,
) -> None:
    wf = write(
        tmp_path,
        "wf.yaml",
        """
        name: cached
        state: {a: {default: [], reducer: append}}
        nodes:
          ask:
            foreach: [1, 2]
            llm: {model: claude-sonnet-4-5-20250929, prompt: "context {{ item }}"}
            save: a
        """,
    )
    script = [
        Reply(usage={"tokens_in": 12_000, "tokens_out": 300, "cached": 2_000,
                     "cache_write": 9_000, "cache_write_1h": 4_000}),
        Reply(usage={"tokens_in": 230_000, "tokens_out": 100, "cached": 200_000,
                     "cache_write": 10_000, "cache_write_1h": 0}),
    ]  # fmt: skip
    rates = {"claude-sonnet-4-5-20250929": SONNET_45}
    db = tmp_path / "f.db"
    with AnthropicServer(api_key=ANTHROPIC_KEY, script=script, rates=rates) as a:
        env = clean_env(ANTHROPIC_BASE_URL=a.url, ANTHROPIC_API_KEY=ANTHROPIC_KEY)
        r = flowrun("run", str(wf), "--db", str(db), "--json", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        billed, answered = a.billed_usd, len(a.served)
    costs = json.loads(r.stdout)["costs"]
    assert answered == costs["calls"] == 2
    assert abs(Fraction(str(costs["total_usd"])) - billed) < Fraction(1, 10**9)
    assert (costs["cached_tokens"], costs["cache_write_tokens"]) == (202_000, 19_000)
    assert costs["cache_write_1h_tokens"] == 4_000


SDK = """
def call(state, ctx):
    ctx.record_llm_usage("claude-haiku-4-5", 5_000, 400, cached=1_000, cache_write=3_000,
                         cache_write_1h=1_000, reasoning=150)
    return "done"
"""


def test_record_llm_usage_takes_every_token_kind(tmp_path: Path) -> None:
    wf = write(
        tmp_path,
        "wf.yaml",
        """
        name: sdk
        state: {out: {default: null}}
        nodes:
          call: {python: sdk:call, save: out}
        """,
    )
    write(tmp_path, "sdk.py", SDK)
    db = tmp_path / "f.db"
    r = flowrun("run", str(wf), "--db", str(db), "--json", cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, r.stderr
    (row,) = ledger(db)
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (1_000, 3_000)
    assert (row["cache_write_1h_tokens"], row["reasoning_tokens"]) == (1_000, 150)
    want = (1_000 * 1 + 1_000 * Fraction("0.1") + 2_000 * Fraction("1.25") + 1_000 * 2
            + 400 * 5) / Fraction(10**6)  # fmt: skip
    assert Fraction(str(row["cost_usd"])) == want
    assert json.loads(r.stdout)["costs"]["reasoning_tokens"] == 150


def test_record_llm_usage_refuses_parts_larger_than_their_whole() -> None:
    from flowrun.engine.nodes.base import Context, RunScope

    ctx = Context("r", 0, "n", 1, None, None, RunScope(Path("."), "r"))
    for kwargs, part in (
        ({"cached": 60, "cache_write": 50}, "cached + cache_write (110) exceeds tokens_in"),
        ({"cache_write": 10, "cache_write_1h": 11}, "cache_write_1h (11) exceeds cache_write"),
        ({"reasoning": 21}, "reasoning (21) exceeds tokens_out"),
    ):
        with pytest.raises(ValueError, match=re.escape(part)):
            ctx.record_llm_usage("gpt-5", 100, 20, **kwargs)
    assert ctx.usage == []


# flowrun prices, and loading it lazily ---------------------------------------------
def test_flowrun_prices_shows_rates_tiers_provider_and_source(tmp_path: Path) -> None:
    r = flowrun("prices", "gemini-2.5-pro", "claude-opus-4-0", cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"gemini-2.5-pro: google gemini-2.5-pro, from {SNAPSHOT}"
    assert lines[1].split() == [
        "USD", "per", "1M", "tokens", "input", "output", "cached", "input", "cache", "write",
        "1h", "cache", "write", "reasoning",
    ]  # fmt: skip
    assert lines[2].split()[:5] == ["prompt", "≤", "200,000", "1.25", "10"]
    assert lines[3].split()[:6] == ["prompt", ">", "200,000", "2.5", "15", "0.25"]
    assert f"claude-opus-4-0: anthropic claude-opus-4-0, from {SNAPSHOT}" in lines
    assert lines[-1].split() == ["15", "75", "1.5", "18.75", "30", "75"]

    f = tmp_path / "p.yaml"
    f.write_text("gpt-4o: {input: 3, output: 12}\n")
    j = flowrun("prices", "gpt-4o", "claude-sonet-4-5", "--json", "--pricing", str(f),
                cwd=tmp_path, env=clean_env())  # fmt: skip
    assert j.returncode == 1  # a model is unpriced
    gpt4o, typo = json.loads(j.stdout)
    assert gpt4o["source"] == f"{f} over {SNAPSHOT}" and gpt4o["provider"] == "openai"
    assert gpt4o["rates"]["input"] == 3.0 and gpt4o["rates"]["cached_input"] == 1.25
    assert typo == {
        "model": "claude-sonet-4-5",
        "priced": False,
        "did_you_mean": "did you mean 'claude-sonnet-4-5'?",
    }
    text = flowrun("prices", "claude-sonet-4-5", cwd=tmp_path, env=clean_env())
    assert text.returncode == 1
    assert text.stdout.startswith("claude-sonet-4-5: unpriced (did you mean 'claude-sonnet-4-5'?)")


PROBE = """
import sys
from flowrun.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, file=sys.stderr)
print("genai_prices" in sys.modules, file=sys.stderr)
"""


def probe(tmp_path: Path, *args: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return p.stderr.strip().splitlines()[-2:]


def test_help_and_a_run_without_llm_nodes_never_import_the_price_source(tmp_path: Path) -> None:
    assert probe(tmp_path, "--help") == ["exit 0", "False"]
    wf = write(
        tmp_path,
        "wf.yaml",
        """
        name: plain
        state: {a: {default: null}}
        nodes:
          one: {run: [echo, hi], save: a}
        """,
    )
    assert probe(tmp_path, "run", str(wf), "--db", str(tmp_path / "a.db")) == ["exit 0", "False"]
    # the probe sees the import when there is one: a run whose node reports an LLM call
    write(tmp_path, "sdk.py", SDK)
    sdk = write(
        tmp_path,
        "sdk.yaml",
        """
        name: sdk
        state: {out: {default: null}}
        nodes:
          call: {python: sdk:call, save: out}
        """,
    )
    assert probe(tmp_path, "run", str(sdk), "--db", str(tmp_path / "b.db")) == ["exit 0", "True"]
