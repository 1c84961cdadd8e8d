"""No billed call left out, budgets that hold, the served model, the Responses API.

Each case runs the installed ``flowrun`` against a loopback server speaking the real
wire format (``tests/support/llm_servers.py``) that keeps its own ledger: what it received in
full, what it billed, and which usage reached the client. flowrun's call count must
equal the requests the server received, its known totals the usage that reached it
(to the token and 1e-9 USD), and every billed call whose usage was lost must be a
row of unknown cost: ``null``, never 0.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from fractions import Fraction
from pathlib import Path
from typing import Any

from tests.engine.llm.test_llm import Write, clean_env, flowrun, ledger
from tests.support.llm_servers import OpenAIServer, Reply

PRICES = {  # USD per million tokens; the snapshot is dearer than the alias
    "gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075},
    "gpt-4o": {"input": 2.5, "output": 10.0},
    "gpt-4o-2024-05-13": {"input": 5.0, "output": 15.0},
    "pricey": {"input": 1.0, "output": 1.0},
}


def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "".join(
            f"{m}: {{{', '.join(f'{k}: {v}' for k, v in p.items())}}}\n" for m, p in PRICES.items()
        )
    )
    return path


def cost(model: str, u: dict[str, int]) -> Fraction:
    p = {k: Fraction(str(v)) for k, v in PRICES[model].items()}
    plain = u["tokens_in"] - u["cached"]
    return (
        plain * p["input"]
        + u["cached"] * p.get("cached_input", p["input"])
        + u["tokens_out"] * p["output"]
    ) / 1_000_000


def one_node(write: Write, llm: str, *, extra: str = "") -> Path:
    return write(
        "wf.yaml",
        f"""
        name: ledger
        state: {{out: {{default: null}}, items: {{default: [1, 2, 3, 4, 5, 6]}}}}
        config: {{max_concurrency: 1}}
        nodes:
          ask:
            llm: {llm}
            save: out
        {extra}
        """,
    )


def run(tmp_path: Path, wf: Path, server: OpenAIServer, *args: str) -> Any:
    p = flowrun(
        "run", str(wf), "--db", str(tmp_path / "f.db"), "--json", "--pricing",
        str(prices(tmp_path)), *args, cwd=tmp_path, env=clean_env(OPENAI_BASE_URL=server.url),
    )  # fmt: skip
    return p


def matches_the_server(costs: dict[str, Any], server: OpenAIServer, model: str) -> None:
    """flowrun's totals are the server's own ledger, call for call and token for token."""
    server.settle()
    seen = server.billed  # the usage that reached the client
    assert costs["calls"] == server.received  # every request received in full is a row
    assert costs["unknown_cost_calls"] == server.charged_unseen
    assert costs["tokens_in"] == sum(u["tokens_in"] for u in seen)
    assert costs["tokens_out"] == sum(u["tokens_out"] for u in seen)
    assert costs["cached_tokens"] == sum(u["cached"] for u in seen)
    want = sum((cost(model, u) for u in seen), Fraction(0))
    if seen:
        assert abs(Fraction(costs["total_usd"]) - want) < Fraction(1, 10**9)
    else:
        assert costs["total_usd"] is None  # nothing is known: never a made-up $0


# no billed call is left out --------------------------------------------------------
def test_a_reply_after_the_nodes_timeout_is_a_row_of_unknown_cost(
    write: Write, tmp_path: Path
) -> None:
    wf = one_node(write, "{model: gpt-4o-mini, prompt: hi, max_tokens: 50}", extra="")
    wf.write_text(wf.read_text().replace("save: out", "save: out\n    timeout: 1s"))
    with OpenAIServer(script=[Reply(delay=3.0)]) as o:
        p = run(tmp_path, wf, o)
        assert p.returncode == 1 and "timed out" in p.stderr, p.stderr
        (row,) = ledger(tmp_path / "f.db")
        assert row["tokens_in"] is None and row["cost_usd"] is None and row["served_model"] is None
        assert row["estimate_usd"] is not None  # a budget would count it
        matches_the_server(json.loads(p.stdout)["costs"], o, "gpt-4o-mini")
        assert o.received == 1 and o.charged_unseen == 1


def test_dropped_cut_and_non_json_replies_are_rows_and_the_retry_is_priced(
    write: Write, tmp_path: Path
) -> None:
    wf = one_node(write, "{model: gpt-4o-mini, prompt: tell me}")
    script = [Reply(drop=True), Reply(raw="<html>502 from a proxy</html>"), Reply(cut=True)]
    with OpenAIServer(script=[*script, Reply()]) as o:
        p = run(tmp_path, wf, o)
        assert p.returncode == 0, p.stderr
        rows = ledger(tmp_path / "f.db")
        assert [r["tokens_in"] is None for r in rows] == [True, True, True, False]
        assert [r["cost_usd"] is None for r in rows] == [True, True, True, False]
        costs = json.loads(p.stdout)["costs"]
        matches_the_server(costs, o, "gpt-4o-mini")
        assert costs["calls"] == 4 and costs["unknown_cost_calls"] == 3
        table = flowrun(
            "costs", "latest", "--db", str(tmp_path / "f.db"), cwd=tmp_path, env=clean_env()
        )
        assert "+ 3 calls of unknown cost" in table.stdout, table.stdout


def test_a_request_never_sent_records_nothing(write: Write, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = one_node(
        write, f"{{model: gpt-4o-mini, prompt: hi, base_url: 'http://127.0.0.1:{port}/v1'}}"
    )
    p = flowrun("run", str(wf), "--db", str(tmp_path / "f.db"), cwd=tmp_path, env=clean_env())
    assert p.returncode == 1 and "cannot reach" in p.stderr, p.stderr
    assert ledger(tmp_path / "f.db") == []


def test_a_reply_without_usage_costs_null_in_json_and_unknown_in_tables(
    write: Write, tmp_path: Path
) -> None:
    wf = one_node(write, "{model: gpt-4o-mini, prompt: hi}")
    with OpenAIServer(script=[Reply(omit_usage=True)]) as o:
        p = run(tmp_path, wf, o)
        assert p.returncode == 0, p.stderr
        costs = json.loads(p.stdout)["costs"]
        matches_the_server(costs, o, "gpt-4o-mini")
    (model,) = costs["by_model"]
    assert model["cost_usd"] is None and model["unknown_cost_calls"] == 1
    db = str(tmp_path / "f.db")
    again = flowrun("costs", "latest", "--db", db, "--json", cwd=tmp_path, env=clean_env())
    assert json.loads(again.stdout)["by_model"][0]["cost_usd"] is None
    table = flowrun(
        "costs", "latest", "--db", db, cwd=tmp_path, env=clean_env()
    ).stdout.splitlines()
    assert table[-1].split()[0] == "Total" and table[-1].split()[-1] == "unknown"


# the served model ------------------------------------------------------------------
def test_the_served_snapshot_is_recorded_and_priced_not_the_requested_name(
    write: Write, tmp_path: Path
) -> None:
    wf = one_node(write, "{model: gpt-4o, prompt: hello there}")
    with OpenAIServer(script=[Reply(served_model="gpt-4o-2024-05-13")]) as o:
        p = run(tmp_path, wf, o)
        assert p.returncode == 0, p.stderr
        costs = json.loads(p.stdout)["costs"]
        matches_the_server(costs, o, "gpt-4o-2024-05-13")  # the snapshot's price
    (row,) = ledger(tmp_path / "f.db")
    assert row["model"] == "gpt-4o" and row["served_model"] == "gpt-4o-2024-05-13"
    paid = json.loads(row["price"])  # the rates paid, and where they came from
    assert {k: paid[k] for k in ("input", "output")} == PRICES["gpt-4o-2024-05-13"]
    assert paid["model"] == "gpt-4o-2024-05-13" and "prices.yaml" in paid["source"]
    assert costs["by_model"][0]["served_models"] == ["gpt-4o-2024-05-13"]
    db = str(tmp_path / "f.db")
    calls = flowrun(
        "costs", "latest", "--db", db, "--by", "call", "--json", cwd=tmp_path, env=clean_env()
    )
    (call,) = json.loads(calls.stdout)["by_call"]
    assert call["model"] == "gpt-4o" and call["served_model"] == "gpt-4o-2024-05-13"


# budgets ---------------------------------------------------------------------------
FOREACH = """
        name: budget
        state: {items: {default: [1, 2, 3, 4, 5, 6]}, out: {reducer: append}}
        config: {max_concurrency: 1}
        nodes:
          ask:
            foreach: "{{ state.items }}"
            llm: LLM
            save: out
"""
THOUSAND = {"tokens_in": 1000, "tokens_out": 1000}  # $0.002 a call at "pricey"


def max_cost(db: Path) -> Any:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT max_cost_usd FROM runs").fetchone()[0]
    finally:
        conn.close()


def test_the_budget_is_kept_by_a_plain_resume_replaced_by_resume_max_cost_and_warns(
    write: Write, tmp_path: Path
) -> None:
    wf = write("wf.yaml", FOREACH.replace("LLM", '{model: pricey, prompt: "n {{ item }}"}'))
    db = tmp_path / "f.db"
    events = tmp_path / "events.jsonl"
    metrics = tmp_path / "metrics.prom"
    with OpenAIServer(script=[Reply(usage=THOUSAND) for _ in range(6)]) as o:
        p = run(
            tmp_path, wf, o, "--max-cost", "0.003", "--events", str(events),
            "--metrics-file", str(metrics),
        )  # fmt: skip
        assert p.returncode == 1 and "budget exceeded" in p.stderr, p.stderr
        assert o.received == 2 and max_cost(db) == 0.003
        assert "reached 50% of the budget" in p.stderr and "reached 80% of the budget" in p.stderr
        warned = [json.loads(x) for x in events.read_text().splitlines()]
        levels = [e["data"]["level"] for e in warned if e["type"] == "budget_warning"]
        assert levels == [0.5, 0.8]
        assert 'flowrun_budget_warnings_total{level="0.8"} 1.0' in metrics.read_text()

        env = clean_env(OPENAI_BASE_URL=o.url)
        plain = flowrun("resume", "latest", "--db", str(db), "--json", cwd=tmp_path, env=env)
        assert plain.returncode == 1 and "budget exceeded" in plain.stderr, plain.stderr
        assert o.received == 2  # the stored budget held: not one more call

        raised = flowrun(
            "resume", "latest", "--db", str(db), "--json", "--max-cost", "1",
            "--pricing", str(prices(tmp_path)), cwd=tmp_path, env=env,
        )  # fmt: skip
        assert raised.returncode == 0, raised.stderr
        assert max_cost(db) == 1.0 and o.received == 6
        matches_the_server(json.loads(raised.stdout)["costs"], o, "pricey")


def test_calls_of_unknown_cost_count_at_their_estimate(write: Write, tmp_path: Path) -> None:
    llm = '{model: pricey, prompt: "n {{ item }}", max_tokens: 100}'
    wf = write("wf.yaml", FOREACH.replace("LLM", llm))
    # every try of every attempt is dropped after the request was read
    with OpenAIServer(script=[Reply(drop=True) for _ in range(40)]) as o:
        p = run(tmp_path, wf, o, "--max-cost", "0.0005")
        assert p.returncode == 1 and "of unknown cost at an estimate" in p.stderr, p.stderr
        rows = ledger(tmp_path / "f.db")
        assert len(rows) == o.received and all(r["cost_usd"] is None for r in rows)
    # at most len("n 1") bytes + 64 framing tokens in, max_tokens out, at the model's prices
    estimate = Fraction(3 + 64) * 1 / 10**6 + Fraction(100) * 1 / 10**6
    assert all(abs(Fraction(r["estimate_usd"]) - estimate) < Fraction(1, 10**12) for r in rows)
    # $0.000167 each: the third passes $0.0005, and nothing is sent after it
    assert len(rows) == 3


def test_a_call_that_cannot_be_estimated_stops_a_budgeted_run(write: Write, tmp_path: Path) -> None:
    wf = write("wf.yaml", FOREACH.replace("LLM", '{model: pricey, prompt: "n {{ item }}"}'))
    with OpenAIServer(script=[Reply(drop=True) for _ in range(40)]) as o:
        p = run(tmp_path, wf, o, "--max-cost", "5")
        assert p.returncode == 1 and "budget cannot be kept" in p.stderr, p.stderr
        assert "max_tokens" in p.stderr and o.received == 1
        assert len(ledger(tmp_path / "f.db")) == 1


# the Responses API -----------------------------------------------------------------
def test_the_responses_api_is_spoken_recorded_and_replayed(write: Write, tmp_path: Path) -> None:
    llm = "{model: gpt-4o-mini, api: responses, system: Be brief., prompt: hello, max_tokens: 40}"
    wf = one_node(write, llm)
    cassette = tmp_path / "c.jsonl"
    with OpenAIServer(cached=4, script=[Reply(reasoning=5)]) as o:
        p = run(tmp_path, wf, o, "--llm-record", str(cassette))
        assert p.returncode == 0, p.stderr
        (served,) = o.served
        assert served.path == "/v1/responses" and "messages" not in served.body
        assert served.body["input"] == "hello" and served.body["instructions"] == "Be brief."
        assert served.body["max_output_tokens"] == 40
        recorded = json.loads(p.stdout)
        matches_the_server(recorded["costs"], o, "gpt-4o-mini")
        assert recorded["costs"]["cached_tokens"] == 4
        assert recorded["state"]["out"] == "gpt-4o-mini says: hello"
    (row,) = ledger(tmp_path / "f.db")
    assert row["served_model"] == "gpt-4o-mini-2025-04-14"
    (tmp_path / "f.db").unlink()
    replayed = flowrun(
        "run", str(wf), "--db", str(tmp_path / "f.db"), "--json", "--llm-replay", str(cassette),
        "--pricing", str(prices(tmp_path)), cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    again = json.loads(replayed.stdout)
    assert again["state"] == recorded["state"]
    assert again["costs"]["total_usd"] == recorded["costs"]["total_usd"]
    assert again["costs"]["tokens_out"] == recorded["costs"]["tokens_out"]


def test_api_responses_is_refused_for_anthropic_with_its_place(
    write: Write, tmp_path: Path
) -> None:
    wf = one_node(write, "{model: claude-3-5-haiku, api: responses, prompt: hi}")
    p = flowrun("validate", str(wf), cwd=tmp_path, env=clean_env())
    assert p.returncode == 2 and "wf.yaml:" in p.stderr and "Responses API" in p.stderr, p.stderr
