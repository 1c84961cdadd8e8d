"""Prices, the cost ledger, ``flowrun costs``, ``ctx.record_llm_usage`` and budgets."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from flowrun.engine.costs import Price, cost_report, load_prices, parse_prices
from flowrun.engine.errors import WorkflowError
from flowrun.engine.store.base import LLMCall

from tests.engine.llm.test_llm import ANTHROPIC_KEY, OPENAI_KEY, clean_env, flowrun, ledger
from tests.support.installed import FLOWRUN
from tests.support.llm_servers import AnthropicServer, OpenAIServer

Write = Callable[[str, str], Path]


# prices --------------------------------------------------------------------------
def test_cached_input_is_priced_at_its_own_rate_and_never_twice() -> None:
    p = Price(input=0.15, output=0.60, cached_input=0.075)
    # OpenAI: 1,000 prompt tokens of which 400 cached, 200 out
    assert p.cost(1000, 200, cached=400) == pytest.approx(
        (600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6, abs=1e-15
    )
    a = Price(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75)
    # Anthropic: 100 plain + 1,000 cache reads + 500 cache writes, 50 out
    assert a.cost(1600, 50, cached=1000, cache_write=500) == pytest.approx(
        (100 * 3.0 + 1000 * 0.30 + 500 * 3.75 + 50 * 15.0) / 1e6, abs=1e-15
    )
    # no cache rates given: cached tokens cost the input rate, once
    assert Price(1.0, 2.0).cost(1000, 0, cached=999) == pytest.approx(1000 / 1e6)


def test_the_maintained_source_names_its_snapshot_and_prices_models_of_three_providers() -> None:
    table = load_prices()
    mini = table.lookup("gpt-4o-mini")
    assert mini is not None and mini.source == f"genai-prices {version('genai-prices')} snapshot"
    for model in (
        "gpt-4o-mini",
        "gpt-4.1",
        "claude-sonnet-4",
        "claude-3-5-haiku",
        "gemini-2.5-pro",
    ):
        assert table.lookup(model) is not None, model
    haiku = table.lookup("claude-3-5-haiku")
    assert haiku is not None and haiku.cache_write is not None


def test_lookup_takes_dated_snapshots_and_provider_prefixes_but_not_other_models() -> None:
    table = load_prices()
    mini = table.lookup("gpt-4o-mini")
    assert table.lookup("gpt-4o-mini-2024-07-18") == mini
    assert table.lookup("openai/gpt-4o-mini") == mini
    assert table.lookup("GPT-4o-mini") == mini
    assert table.lookup("claude-3-5-haiku-20241022") == table.lookup("claude-3-5-haiku")
    audio = table.lookup("gpt-4o-audio-preview")  # its own model, not silently gpt-4o
    assert audio is not None and audio.model == "gpt-4o-audio-preview"
    assert table.lookup("my-local-model") is None


def test_a_pricing_file_extends_and_overrides_the_builtin_table(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "gpt-4o-mini: {input: 1, output: 2}\nmy-local-model: {input: 0, output: 0}\n",
        encoding="utf-8",
    )
    table = load_prices(f)
    # the entry names input and output only: the source's cache read rate stays
    assert table.lookup("gpt-4o-mini") == Price(1.0, 2.0, cached_input=0.075)
    assert table.lookup("my-local-model") == Price(0.0, 0.0)
    assert table.lookup("gpt-4o") == load_prices().lookup("gpt-4o")


def test_a_bad_pricing_file_names_file_line_column_and_the_near_miss() -> None:
    with pytest.raises(WorkflowError) as info:
        parse_prices("gpt-4o-mini: {input: 1, output: 2}\nx: {input: 1, ouput: 2}\n", "p.yaml")
    assert info.value.message.startswith("p.yaml:2:")
    assert "ouput" in info.value.message and info.value.hint == "did you mean 'output'?"
    with pytest.raises(WorkflowError, match="must be a number"):
        parse_prices("x: {input: cheap, output: 2}\n", "p.yaml")


def test_the_report_lists_unpriced_models_and_unknown_usage() -> None:
    calls = [
        LLMCall(
            "r", 0, "a", None, 1, "openai", "m1", 10, 5, 0, 0, {"input": 1, "output": 1}, 1.5e-5
        ),
        LLMCall("r", 0, "a", None, 1, "openai", "m1", None, None, None, None, {"input": 1}, None),
        LLMCall("r", 1, "b", None, 1, "python", "local", 7, 3, 0, 0, None, None),
    ]
    r = cost_report("r", calls, by_node=True)
    assert r["calls"] == 3 and r["tokens_in"] == 17 and r["total_usd"] == 1.5e-5
    assert r["unpriced_models"] == ["local"] and r["unknown_usage_calls"] == 1
    by_model = {m["model"]: m for m in r["by_model"]}
    assert by_model["local"]["cost_usd"] is None  # unpriced: never $0
    assert by_model["m1"]["unknown_usage_calls"] == 1
    assert [n["node"] for n in r["by_node"]] == ["a", "b"]


# flowrun costs for a run with two models ---------------------------------------------
TWO_MODELS = """
    name: two-models
    state:
      topics: {default: ["kettles", "toasters"]}
      drafts: {default: [], reducer: append}
      review: {default: null}
    nodes:
      draft:
        foreach: "{{ state.topics }}"
        llm: {model: gpt-4o-mini, prompt: "Draft a line about {{ item }}"}
        save: drafts
        next: review
      review:
        llm: {model: claude-3-5-haiku, system: Be brief., prompt: "Review {{ state.drafts }}"}
        save: review
"""

SPEC_KEYS = {"run_id", "total_usd", "tokens_in", "tokens_out", "cached_tokens", "calls"}
MODEL_KEYS = {"model", "calls", "tokens_in", "tokens_out", "cached_tokens", "cost_usd"}


def test_flowrun_costs_for_a_run_with_two_models_in_table_and_json(
    write: Write, tmp_path: Path
) -> None:
    wf = write("wf.yaml", TWO_MODELS)
    db = tmp_path / "f.db"
    with (
        OpenAIServer(api_key=OPENAI_KEY, cached=8) as o,
        AnthropicServer(api_key=ANTHROPIC_KEY, cached=16, cache_write=32) as a,
    ):
        env = clean_env(
            OPENAI_BASE_URL=o.url,
            OPENAI_API_KEY=OPENAI_KEY,
            ANTHROPIC_BASE_URL=a.url,
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        )
        p = flowrun("run", str(wf), "--db", str(db), "--run-id", "two", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr

    j = flowrun("costs", "two", "--db", str(db), "--json", cwd=tmp_path, env=clean_env())
    assert j.returncode == 0, j.stderr
    data = json.loads(j.stdout)
    assert SPEC_KEYS | {"by_model", "unpriced_models"} <= set(data)
    assert data["run_id"] == "two" and data["calls"] == 3 and data["unpriced_models"] == []
    assert [m["model"] for m in data["by_model"]] == ["claude-3-5-haiku", "gpt-4o-mini"]
    assert all(set(m) >= MODEL_KEYS for m in data["by_model"])
    billed = o.billed + a.billed
    assert data["tokens_in"] == sum(u["tokens_in"] for u in billed)
    assert data["tokens_out"] == sum(u["tokens_out"] for u in billed)
    assert data["cached_tokens"] == 2 * 8 + 16
    haiku, mini = (
        load_prices().lookup("claude-3-5-haiku"),
        load_prices().lookup("gpt-4o-mini"),
    )
    assert haiku is not None and mini is not None
    want = sum(mini.cost(u["tokens_in"], u["tokens_out"], u["cached"]) for u in o.billed) + sum(
        haiku.cost(u["tokens_in"], u["tokens_out"], u["cached"], u["cache_write"]) for u in a.billed
    )
    assert data["total_usd"] == pytest.approx(want, abs=1e-12)
    assert sum(m["cost_usd"] for m in data["by_model"]) == pytest.approx(want, abs=1e-12)

    t = flowrun("costs", "two", "--db", str(db), cwd=tmp_path, env=clean_env())
    assert t.returncode == 0 and t.stderr == ""  # the report is on stdout
    lines = t.stdout.splitlines()
    assert lines[0] == "LLM costs of run two"
    assert lines[1].split() == ["model", "calls", "input", "cached", "output", "cost"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:5]}
    assert rows["gpt-4o-mini"][1] == "2" and rows["claude-3-5-haiku"][1] == "1"
    assert rows["Total"][1] == "3" and rows["Total"][2] == f"{data['tokens_in']:,}"
    assert rows["Total"][5] == f"${data['total_usd']:.6f}"
    assert p.stderr.endswith(t.stdout)  # the same table closed the run itself, on stderr

    n = flowrun(
        "costs", "two", "--db", str(db), "--by", "node", "--json", cwd=tmp_path, env=clean_env()
    )
    by_node = {r["node"]: r for r in json.loads(n.stdout)["by_node"]}
    assert by_node["draft"]["calls"] == 2 and by_node["draft"]["models"] == ["gpt-4o-mini"]
    assert by_node["review"]["cost_usd"] == pytest.approx(
        next(m["cost_usd"] for m in data["by_model"] if m["model"] == "claude-3-5-haiku")
    )
    bad = flowrun("costs", "two", "--db", str(db), "--by", "colour", cwd=tmp_path, env=clean_env())
    assert bad.returncode == 2 and "--by must be model or node" in bad.stderr


# ctx.record_llm_usage, unpriced models, --pricing ------------------------------------
SELF_CALLING = """
    name: self-calling
    state: {out: {default: null}}
    nodes:
      call:
        python: sdk:call
        save: out
"""

SDK = """
import os, pathlib, time

def call(state, ctx):
    ctx.record_llm_usage("gpt-4o-mini", 1200, 300, cached=200)
    ctx.record_llm_usage("my-local-model", 50, 70)
    marker = pathlib.Path(os.environ["MARKER"])
    if not marker.exists():          # the first run stops here (and gets killed)
        marker.write_text("x")
        time.sleep(60)
    return "done"
"""


def test_record_llm_usage_survives_a_kill_9_and_unpriced_models_are_flagged(
    write: Write, tmp_path: Path
) -> None:
    wf = write("wf.yaml", SELF_CALLING)
    write("sdk.py", SDK)
    db = tmp_path / "f.db"
    marker = tmp_path / "marker"
    env = clean_env(MARKER=str(marker))
    proc = subprocess.Popen(
        [FLOWRUN, "run", str(wf), "--db", str(db)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(ledger(db)) == 2  # reported before the crash, committed at once
    r = flowrun("resume", "latest", "--db", str(db), "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    costs = json.loads(r.stdout)["costs"]
    assert costs["calls"] == 4  # both reports of the lost attempt, both of the repeat
    assert costs["unpriced_models"] == ["my-local-model"]
    mini = load_prices().lookup("gpt-4o-mini")
    assert mini is not None
    assert costs["total_usd"] == pytest.approx(2 * mini.cost(1200, 300, 200), abs=1e-12)
    assert "unpriced" in r.stderr and "no price for my-local-model" in r.stderr

    prices = write("prices.yaml", "my-local-model: {input: 1000, output: 1000}\n")
    c = flowrun(
        "costs",
        "latest",
        "--db",
        str(db),
        "--json",
        "--pricing",
        str(prices),
        cwd=tmp_path,
        env=clean_env(),
    )
    repriced = json.loads(c.stdout)
    assert repriced["unpriced_models"] == []
    assert repriced["total_usd"] == pytest.approx(costs["total_usd"] + 2 * 120 * 1000 / 1e6)
    # FLOWRUN_PRICING works like --pricing; a broken file is exit 2 with file:line:col
    broken = write("broken.yaml", "m: {input: 1, outptu: 2}\n")
    b = flowrun(
        "run",
        str(wf),
        "--db",
        str(db),
        cwd=tmp_path,
        env=clean_env(MARKER=str(marker), FLOWRUN_PRICING=str(broken)),
    )
    assert b.returncode == 2
    assert f"{broken}:1:" in b.stderr and "did you mean 'output'?" in b.stderr
    assert "Traceback" not in b.stderr


# budgets -------------------------------------------------------------------------
BUDGET_WF = """
    name: budget
    state:
      items: {default: [1, 2, 3, 4]}
      answers: {default: [], reducer: append}
    config:
      max_concurrency: 1
      max_cost_usd: 0.0001
    nodes:
      ask:
        foreach: "{{ state.items }}"
        llm: {model: gpt-4o-mini, prompt: "Question {{ item }}"}
        save: answers
"""


def test_budget_stops_dispatch_fails_the_run_and_resume_with_more_continues(
    write: Write, tmp_path: Path
) -> None:
    wf = write("wf.yaml", BUDGET_WF)
    db = tmp_path / "f.db"
    # ~200 output tokens of gpt-4o-mini: $0.00012 a call, over the $0.0001 budget at once
    with OpenAIServer(api_key=OPENAI_KEY, answer=lambda m, p: "ok " * 199 + p) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=OPENAI_KEY)
        p = flowrun("run", str(wf), "--db", str(db), "--json", cwd=tmp_path, env=env)
        assert p.returncode == 1
        assert "budget exceeded" in p.stderr and "--max-cost" in p.stderr
        out = json.loads(p.stdout)
        assert out["status"] == "failed" and "budget exceeded" in out["error"]
        assert len(o.served) == 1 and out["costs"]["calls"] == 1  # no new task was started
        conn = sqlite3.connect(db)
        saved = conn.execute("SELECT count(*) FROM task_results WHERE status = 'ok'").fetchone()
        conn.close()
        assert saved == (1,)  # the finished task's result is kept

        same = flowrun("resume", "latest", "--db", str(db), cwd=tmp_path, env=env)
        assert same.returncode == 1 and "budget exceeded" in same.stderr
        assert len(o.served) == 1  # refused before any call

        more = flowrun(
            "resume", "latest", "--db", str(db), "--max-cost", "1", "--json", cwd=tmp_path, env=env
        )
        assert more.returncode == 0, more.stderr
    done = json.loads(more.stdout)
    assert len(done["state"]["answers"]) == 4
    assert len(o.served) == 4 and done["costs"]["calls"] == 4  # item 1 was not asked again
    assert done["costs"]["total_usd"] == pytest.approx(
        sum(
            load_prices().lookup("gpt-4o-mini").cost(u["tokens_in"], u["tokens_out"])  # type: ignore[union-attr]
            for u in o.billed
        ),
        abs=1e-12,
    )


def test_max_cost_flag_overrides_the_workflow_budget(write: Write, tmp_path: Path) -> None:
    wf = write("wf.yaml", BUDGET_WF)
    with OpenAIServer(api_key=OPENAI_KEY) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=OPENAI_KEY)
        p = flowrun(
            "run", str(wf), "--db", str(tmp_path / "f.db"), "--max-cost", "5", cwd=tmp_path, env=env
        )
    assert p.returncode == 0, p.stderr
    assert len(o.served) == 4
    neg = flowrun("run", str(wf), "--max-cost", "-1", cwd=tmp_path, env=clean_env())
    assert neg.returncode == 2


def test_the_ledger_is_migration_2_of_the_schema(tmp_path: Path) -> None:
    from flowrun.engine import SQLiteStore

    db = tmp_path / "f.db"
    SQLiteStore(db).close()
    conn = sqlite3.connect(db)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(llm_calls)")]
    conn.close()
    assert {"run_id", "step", "node", "attempt", "model", "tokens_in", "tokens_out"} <= set(cols)
    assert {"cached_tokens", "cache_write_tokens", "price", "cost_usd"} <= set(cols)
