"""``llm`` nodes against loopback servers speaking the OpenAI and Anthropic protocols.

Every HTTP test talks to a real server on 127.0.0.1 (tests/support/llm_servers.py); every
end-to-end test runs the installed ``flowrun`` command; the crash test kills it
with a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine.llm import (
    Cassette,
    LLMRequest,
    ProviderError,
    Recorder,
    ReplayProvider,
    Session,
)
from flowrun.engine.llm.anthropic import AnthropicProvider
from flowrun.engine.llm.openai import OpenAIProvider
from flowrun.engine.nodes.base import TaskError
from flowrun.engine.nodes.llm import parse_json_reply

from tests.support.installed import FLOWRUN
from tests.support.llm_servers import AnthropicServer, OpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[3]
OPENAI_KEY = "sk-test-openai-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"

Write = Callable[[str, str], Path]


# helpers ------------------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without real keys, endpoints or proxies, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "FLOWRUN_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_COLOR"] = "1"
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def flowrun(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def ledger(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM llm_calls ORDER BY id")]
    finally:
        conn.close()


def usage_sum(rows: list[dict[str, int]], key: str) -> int:
    return sum(r[key] for r in rows)


PRICES = {  # USD per million tokens; odd numbers so rounding would show
    "gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075},
    "claude-3-5-haiku": {"input": 0.80, "output": 4.00, "cached_input": 0.08, "cache_write": 1.00},
}


def expected_cost(model: str, u: dict[str, int]) -> Fraction:
    """The cost of one served usage, computed independently with exact fractions."""
    p = {k: Fraction(str(v)) for k, v in PRICES[model].items()}
    plain = u["tokens_in"] - u["cached"] - u["cache_write"]
    return (
        plain * p["input"]
        + u["cached"] * p.get("cached_input", p["input"])
        + u["cache_write"] * p.get("cache_write", p["input"])
        + u["tokens_out"] * p["output"]
    ) / 1_000_000


def pricing_file(tmp_path: Path) -> Path:
    lines = [f"{m}: {{{', '.join(f'{k}: {v}' for k, v in p.items())}}}" for m, p in PRICES.items()]
    path = tmp_path / "prices.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# the provider contract ----------------------------------------------------------
@pytest.fixture(params=["openai", "anthropic", "replay"])
def provider_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, Callable[[], list[dict[str, int]]]]]:
    """A provider and a function giving the usage its backend billed so far."""
    session = Session()
    kind = request.param
    try:
        if kind == "anthropic":
            with AnthropicServer(api_key=ANTHROPIC_KEY, cached=7, cache_write=3) as a:
                os.environ["FLOWRUN_TEST_KEY"] = ANTHROPIC_KEY
                p = AnthropicProvider(
                    session.client(), base_url=a.url, api_key_env="FLOWRUN_TEST_KEY"
                )
                yield p, lambda: a.billed
        elif kind == "openai":
            with OpenAIServer(api_key=OPENAI_KEY, cached=5) as o:
                os.environ["FLOWRUN_TEST_KEY"] = OPENAI_KEY
                p = OpenAIProvider(session.client(), base_url=o.url, api_key_env="FLOWRUN_TEST_KEY")
                yield p, lambda: o.billed
        else:  # replay: a cassette recorded from the OpenAI server, then no server at all
            cassette = tmp_path / "c.jsonl"
            with OpenAIServer(api_key=OPENAI_KEY, cached=5) as o:
                os.environ["FLOWRUN_TEST_KEY"] = OPENAI_KEY
                live = OpenAIProvider(
                    session.client(), base_url=o.url, api_key_env="FLOWRUN_TEST_KEY"
                )
                rec = Recorder(live, Cassette(cassette))
                for prompt in ("hello", "second question"):
                    rec.complete(
                        LLMRequest("gpt-4o-mini", prompt), deadline=None, stop=threading.Event()
                    )
                rec.cassette.close()
                billed = o.billed
            yield ReplayProvider(Cassette.load(cassette)), lambda: billed
    finally:
        os.environ.pop("FLOWRUN_TEST_KEY", None)
        session.close()


class TestProviderContract:
    """What every provider (openai, anthropic, replay) promises the llm node."""

    def test_answers_with_text_and_the_usage_the_backend_billed(
        self, provider_case: tuple[Any, Callable[[], list[dict[str, int]]]]
    ) -> None:
        provider, billed = provider_case
        reply = provider.complete(
            LLMRequest(
                "gpt-4o-mini" if provider.name != "anthropic" else "claude-3-5-haiku", "hello"
            ),
            deadline=time.monotonic() + 30,
            stop=threading.Event(),
        )
        assert "hello" in reply.text
        served = billed()[0]
        assert reply.usage is not None
        assert reply.usage.to_json() == served  # tokens_in counts cached tokens too

    def test_a_request_it_cannot_answer_fails_for_good(
        self, provider_case: tuple[Any, Callable[[], list[dict[str, int]]]]
    ) -> None:
        provider, _ = provider_case
        if provider.name == "replay":
            req = LLMRequest("gpt-4o-mini", "never recorded")
        else:
            req = LLMRequest("", "hello")  # no model: the real APIs answer 400
        with pytest.raises(ProviderError) as info:
            provider.complete(req, deadline=time.monotonic() + 30, stop=threading.Event())
        assert info.value.retryable is False


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_429_with_retry_after_and_500_are_retried(kind: str) -> None:
    script = [Reply(429, headers={"retry-after": "1"}), Reply(500 if kind == "openai" else 529)]
    server_cls = OpenAIServer if kind == "openai" else AnthropicServer
    key = OPENAI_KEY if kind == "openai" else ANTHROPIC_KEY
    session = Session()
    with server_cls(api_key=key, script=script) as srv:
        os.environ["FLOWRUN_TEST_KEY"] = key
        try:
            cls = OpenAIProvider if kind == "openai" else AnthropicProvider
            provider = cls(session.client(), base_url=srv.url, api_key_env="FLOWRUN_TEST_KEY")
        finally:
            os.environ.pop("FLOWRUN_TEST_KEY")
        reply = provider.complete(
            LLMRequest("gpt-4o-mini", "retry me"), deadline=None, stop=threading.Event()
        )
    session.close()
    assert [s.status for s in srv.served] == [429, 529 if kind == "anthropic" else 500, 200]
    assert srv.served[1].at - srv.served[0].at >= 0.95  # Retry-After: 1 was honoured
    assert reply.usage is not None and reply.usage.to_json() == srv.billed[0]


def test_a_rejected_key_is_not_retried_and_never_echoed() -> None:
    session = Session()
    wrong = "sk-wrong-SECRET-9876543210"
    with OpenAIServer(api_key=OPENAI_KEY) as srv:
        os.environ["FLOWRUN_TEST_KEY"] = wrong
        try:
            provider = OpenAIProvider(
                session.client(), base_url=srv.url, api_key_env="FLOWRUN_TEST_KEY"
            )
        finally:
            os.environ.pop("FLOWRUN_TEST_KEY")
        with pytest.raises(ProviderError) as info:
            provider.complete(
                LLMRequest("gpt-4o-mini", "hi"), deadline=None, stop=threading.Event()
            )
    session.close()
    assert len(srv.served) == 1
    assert info.value.retryable is False
    assert "HTTP 401" in str(info.value)
    assert wrong not in str(info.value) and "***" in str(info.value)


def test_json_replies_parse_with_or_without_a_code_fence() -> None:
    assert parse_json_reply('{"a": 1}') == {"a": 1}
    assert parse_json_reply('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    with pytest.raises(TaskError) as info:
        parse_json_reply("Sure! Here is the JSON you asked for.")
    assert "the reply is not JSON" in str(info.value)
    assert info.value.retryable and info.value.reason == "llm_json"


# the ledger against what the servers billed -----------------------------------------
LEDGER_WF = """
    name: ledger
    state:
      items: {default: ["a red kettle", "a slow toaster", "a loud blender"]}
      summaries: {default: [], reducer: append}
      verdict: {default: null}
      note: {default: null}
    config:
      max_concurrency: 1
    nodes:
      summarize:
        foreach: "{{ state.items }}"
        llm: {model: gpt-4o-mini, prompt: "Summarise {{ item }}", max_tokens: 30}
        save: summaries
        next: [judge, note]
      judge:
        llm:
          model: claude-3-5-haiku
          system: Answer in JSON.
          prompt: "Judge: {{ state.summaries | join('; ') }}"
          json: true
        retry: {max_attempts: 2, backoff: 10ms}
        save: verdict
      note:
        llm: {model: gpt-4o-mini, prompt: "One more note", temperature: 0.2}
        save: note
"""


def test_ledger_totals_equal_the_usage_the_servers_returned(write: Write, tmp_path: Path) -> None:
    wf = write("wf.yaml", LEDGER_WF)
    db = tmp_path / "f.db"
    openai_script = [Reply(429, headers={"retry-after": "1"}), Reply(500)]
    # judge: the first reply is billed but not JSON (the attempt fails), the second is
    anthropic_script = [Reply(text="Sure, here you go"), Reply(text='{"verdict": "mixed"}')]
    with (
        OpenAIServer(api_key=OPENAI_KEY, script=openai_script, cached=6) as o,
        AnthropicServer(
            api_key=ANTHROPIC_KEY, script=anthropic_script, cached=11, cache_write=4
        ) as a,
    ):
        env = clean_env(
            OPENAI_BASE_URL=o.url,
            OPENAI_API_KEY=OPENAI_KEY,
            ANTHROPIC_BASE_URL=a.url,
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        )
        p = flowrun(
            "run",
            str(wf),
            "--db",
            str(db),
            "--json",
            "--pricing",
            str(pricing_file(tmp_path)),
            cwd=tmp_path,
            env=env,
        )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["state"]["verdict"] == {"verdict": "mixed"}
    assert [s.status for s in o.served] == [429, 500, 200, 200, 200, 200]
    assert [s.status for s in a.served] == [200, 200]

    rows = ledger(db)
    served = [("gpt-4o-mini", u) for u in o.billed] + [("claude-3-5-haiku", u) for u in a.billed]
    assert len(rows) == len(served) == 6  # 429/500 are not billed; the failed attempt is
    judge = [r for r in rows if r["node"] == "judge"]
    assert [r["attempt"] for r in judge] == [1, 2]
    for key, col in (
        ("tokens_in", "tokens_in"),
        ("tokens_out", "tokens_out"),
        ("cached", "cached_tokens"),
        ("cache_write", "cache_write_tokens"),
    ):
        assert sum(r[col] for r in rows) == sum(u[key] for _, u in served), key
    exact = sum((expected_cost(m, u) for m, u in served), Fraction(0))
    costs = out["costs"]
    assert round(costs["total_usd"], 2) == round(float(exact), 2)  # to the cent …
    assert abs(Fraction(costs["total_usd"]) - exact) < Fraction(1, 10**12)  # … and below
    assert costs["calls"] == 6 and costs["unpriced_models"] == []
    assert costs["tokens_in"] == sum(u["tokens_in"] for _, u in served)
    assert costs["cached_tokens"] == sum(u["cached"] for _, u in served)
    by_model = {m["model"]: m for m in costs["by_model"]}
    assert by_model["claude-3-5-haiku"]["calls"] == 2
    assert abs(
        Fraction(by_model["claude-3-5-haiku"]["cost_usd"])
        - sum((expected_cost("claude-3-5-haiku", u) for u in a.billed), Fraction(0))
    ) < Fraction(1, 10**12)
    # `flowrun costs` reads the same numbers back from the database
    again = flowrun("costs", "latest", "--db", str(db), "--json", cwd=tmp_path, env=clean_env())
    assert json.loads(again.stdout) == costs
    assert "Total" in p.stderr and "claude-3-5-haiku" in p.stderr  # the table after the run


def test_a_reply_without_usage_is_recorded_as_unknown_not_zero(
    write: Write, tmp_path: Path
) -> None:
    wf = write(
        "wf.yaml",
        """
        name: nousage
        state: {out: {default: null}}
        nodes:
          ask:
            llm: {model: gpt-4o-mini, prompt: hi}
            save: out
        """,
    )
    db = tmp_path / "f.db"
    with OpenAIServer(script=[Reply(omit_usage=True)]) as o:
        p = flowrun(
            "run",
            str(wf),
            "--db",
            str(db),
            "--json",
            cwd=tmp_path,
            env=clean_env(OPENAI_BASE_URL=o.url),
        )
    assert p.returncode == 0, p.stderr
    (row,) = ledger(db)
    assert row["tokens_in"] is None and row["tokens_out"] is None and row["cost_usd"] is None
    costs = json.loads(p.stdout)["costs"]
    assert costs["calls"] == 1 and costs["unknown_usage_calls"] == 1
    assert costs["total_usd"] is None and costs["unknown_cost_calls"] == 1  # never $0
    assert "without usage" in p.stderr and "unknown" in p.stderr


# crash between the reply and the step commit -----------------------------------------
def test_kill_9_after_a_billed_reply_keeps_both_calls_in_the_ledger(
    write: Write, tmp_path: Path
) -> None:
    wf = write(
        "wf.yaml",
        """
        name: crash
        state: {verdict: {default: null}}
        nodes:
          judge:
            llm: {model: gpt-4o-mini, prompt: "Verdict as JSON", json: true}
            retry: {max_attempts: 2, backoff: 60s, jitter: false}
            save: verdict
        """,
    )
    db = tmp_path / "f.db"
    script = [Reply(text="not JSON, sorry"), Reply(text='{"ok": true}')]
    with OpenAIServer(api_key=OPENAI_KEY, script=script, cached=2) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=OPENAI_KEY)
        proc = subprocess.Popen(
            [FLOWRUN, "run", str(wf), "--db", str(db)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the billed reply is in the ledger …
                try:
                    if len(ledger(db)) == 1:
                        break
                except sqlite3.OperationalError:
                    pass
                time.sleep(0.02)
            else:
                pytest.fail("the first reply never reached the ledger")
            os.kill(proc.pid, signal.SIGKILL)  # … and the task waits 60 s to retry
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
        conn = sqlite3.connect(db)
        (status, step) = conn.execute("SELECT status, step FROM runs").fetchone()
        conn.close()
        assert (status, step) == ("running", 0)  # the step never committed
        r = flowrun("resume", "latest", "--db", str(db), "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"]["verdict"] == {"ok": True}
    rows = ledger(db)
    assert len(rows) == len(o.billed) == 2  # the lost call and the repeated one
    assert sum(row["tokens_in"] for row in rows) == usage_sum(o.billed, "tokens_in")
    assert sum(row["tokens_out"] for row in rows) == usage_sum(o.billed, "tokens_out")
    assert json.loads(r.stdout)["costs"]["calls"] == 2


# record and replay -----------------------------------------------------------------
RR_WF = """
    name: rr
    state:
      reviews: {default: ["good kettle", "bad toaster", "ok blender"]}
      summaries: {default: [], reducer: append}
      verdict: {default: null}
    nodes:
      summarize:
        foreach: "{{ state.reviews }}"
        llm: {model: gpt-4o-mini, prompt: "Summarise: {{ item }}"}
        save: summaries
        next: judge
      judge:
        llm:
          model: claude-3-5-haiku
          prompt: "Judge {{ state.summaries | join('; ') }}"
          json: true
        retry: {max_attempts: 2, backoff: 10ms}
        save: verdict
"""


def test_record_then_replay_gives_the_same_state_with_no_network(
    write: Write, tmp_path: Path
) -> None:
    wf = write("wf.yaml", RR_WF)
    cassette = tmp_path / "cassette.jsonl"
    script = [Reply(text="hmm"), Reply(text='{"verdict": "mixed"}')]
    with (
        OpenAIServer(api_key=OPENAI_KEY, cached=3) as o,
        AnthropicServer(api_key=ANTHROPIC_KEY, script=script) as a,
    ):
        env = clean_env(
            OPENAI_BASE_URL=o.url,
            OPENAI_API_KEY=OPENAI_KEY,
            ANTHROPIC_BASE_URL=a.url,
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        )
        rec = flowrun(
            "run",
            str(wf),
            "--db",
            str(tmp_path / "rec.db"),
            "--json",
            "--llm-record",
            str(cassette),
            cwd=tmp_path,
            env=env,
        )
        dead = o.url
    assert rec.returncode == 0, rec.stderr
    assert len(cassette.read_text().splitlines()) == 5  # 3 summaries, 2 judge replies
    # the servers are gone; keys unset; the base URL points at a closed port
    offline = clean_env(OPENAI_BASE_URL=dead, ANTHROPIC_BASE_URL=dead)
    rep = flowrun(
        "run",
        str(wf),
        "--db",
        str(tmp_path / "rep.db"),
        "--json",
        "--llm-replay",
        str(cassette),
        cwd=tmp_path,
        env=offline,
    )
    assert rep.returncode == 0, rep.stderr
    recorded, replayed = json.loads(rec.stdout), json.loads(rep.stdout)
    assert replayed["state"] == recorded["state"]
    assert replayed["state"]["verdict"] == {"verdict": "mixed"}
    assert replayed["digest"] == recorded["digest"]
    for k in ("calls", "tokens_in", "tokens_out", "cached_tokens", "total_usd"):
        assert replayed["costs"][k] == recorded["costs"][k], k
    assert {r["provider"] for r in ledger(tmp_path / "rep.db")} == {"replay"}
    assert OPENAI_KEY not in cassette.read_text() and ANTHROPIC_KEY not in cassette.read_text()

    # a request the cassette has not seen fails at once, naming the cassette
    miss = flowrun(
        "run",
        str(wf),
        "--db",
        str(tmp_path / "rep.db"),
        "--set",
        'reviews=["a new review"]',
        "--llm-replay",
        str(cassette),
        cwd=tmp_path,
        env=offline,
    )
    assert miss.returncode == 1
    assert "has no reply for this request" in miss.stderr and str(cassette) in miss.stderr
    assert "after 1 attempt(s)" in miss.stderr
    assert "Traceback" not in miss.stderr


def test_replay_of_a_missing_cassette_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    wf = write("wf.yaml", RR_WF)
    p = flowrun(
        "run",
        str(wf),
        "--db",
        str(tmp_path / "f.db"),
        "--llm-replay",
        "nope.jsonl",
        cwd=tmp_path,
        env=clean_env(),
    )
    assert p.returncode == 2
    assert "--llm-replay" in p.stderr and "no such cassette file" in p.stderr


def test_api_keys_never_reach_the_database_events_or_logs(write: Write, tmp_path: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: secrets
        state: {out: {default: null}}
        nodes:
          ask:
            llm: {model: gpt-4o-mini, prompt: "hi there"}
            retry: {max_attempts: 2, backoff: 10ms}
            save: out
        """,
    )
    db = tmp_path / "f.db"
    wrong = "sk-wrong-SECRET-5555aaaa9999"
    outputs = []
    with OpenAIServer(api_key=OPENAI_KEY) as o:
        for key in (OPENAI_KEY, wrong):  # one good run; one the server rejects (and echoes)
            env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=key, FLOWRUN_DEBUG="1")
            p = flowrun(
                "run",
                str(wf),
                "--db",
                str(db),
                "--json",
                "--events",
                str(tmp_path / "events.jsonl"),
                "--llm-record",
                str(tmp_path / "c.jsonl"),
                cwd=tmp_path,
                env=env,
            )
            outputs += [p.stdout, p.stderr]
        assert o.served[-1].status == 401
    assert p.returncode == 1 and "HTTP 401" in p.stderr and "***" in p.stderr
    show = flowrun(
        "show", "latest", "--db", str(db), "--json", "--events", cwd=tmp_path, env=clean_env()
    )
    outputs += [show.stdout, show.stderr]
    blobs = [f.read_bytes() for f in tmp_path.iterdir() if f.is_file() and f.name != "wf.yaml"] + [
        s.encode() for s in outputs
    ]
    for secret in (OPENAI_KEY, wrong):
        for blob in blobs:
            assert secret.encode() not in blob


def test_the_example_pipeline_shows_a_cost_table_from_its_cassette(tmp_path: Path) -> None:
    work = tmp_path / "pipeline"
    shutil.copytree(
        ROOT / "workflows" / "pipeline", work, ignore=shutil.ignore_patterns("out", ".flowrun")
    )
    p = flowrun(
        "run", "pipeline.yaml", "--json", "--db", str(tmp_path / "f.db"), cwd=work, env=clean_env()
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["state"]["summaries"]) == len(out["state"]["reviews"]) == 6
    assert out["costs"]["calls"] == 6 and out["costs"]["total_usd"] > 0
    assert out["costs"]["unpriced_models"] == []
    table = p.stderr[p.stderr.index("LLM costs of run") :]
    assert "gpt-4o-mini" in table and "Total" in table
    assert "## Summaries (LLM)" in (work / "out" / "report.md").read_text()
