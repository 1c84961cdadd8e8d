"""Three gaps of the LLM layer, each pinned end to end.

1. Replay position survives ``resume``: a recording is chosen by where the call is
   made (step, node, foreach index, attempt), not by a per-process counter.
2. Billed but unusable replies (no text, not JSON) are recorded and replayed, so a
   replay retraces the same attempts and costs.
3. Anthropic 1-hour cache writes are priced at their own rate (``cache_write_1h``).

Real loopback servers (tests/support/llm_servers.py), real SQLite files and the installed
``flowrun`` command.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine.costs import Price, load_prices, parse_prices
from flowrun.engine.llm import (
    CallSite,
    Cassette,
    LLMReply,
    LLMRequest,
    ProviderError,
    Recorder,
    ReplayProvider,
    Session,
    Usage,
)
from flowrun.engine.llm.anthropic import AnthropicProvider, parse_usage

from tests.support.installed import FLOWRUN
from tests.support.llm_servers import AnthropicServer, OpenAIServer, Reply

OPENAI_KEY = "sk-test-openai-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"


def clean_env(**extra: str) -> dict[str, str]:
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


def flowrun(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def ledger(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM llm_calls ORDER BY id")]
    finally:
        conn.close()


def attempts(db: Path) -> list[tuple[str, int | None, int, int | None]]:
    """(node, index, attempt, tokens_out) of every ledger row, in a stable order."""
    rows = [(r["node"], r["idx"], r["attempt"], r["tokens_out"]) for r in ledger(db)]
    return sorted(rows, key=lambda r: (r[0], -1 if r[1] is None else r[1], r[2]))


def write(tmp_path: Path, name: str, text: str) -> Path:
    import textwrap

    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return p


# 1. replay position ---------------------------------------------------------------
def test_a_recording_is_chosen_by_call_site_not_by_how_often_it_was_asked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.jsonl"
    req = LLMRequest(model="m", prompt="same question")
    out = Cassette(path)
    sites = [CallSite(0, "a", None, 1), CallSite(0, "a", None, 2), CallSite(3, "b", 1, 1)]
    for n, site in enumerate(sites):
        out.record(req, LLMReply(f"reply {n}", "m", Usage(5, n + 1), "openai"), at=site)
    out.close()
    # asked in another order, by fresh loads (a resumed process starts from nothing)
    for site, want in [(sites[2], "reply 2"), (sites[1], "reply 1"), (sites[0], "reply 0")]:
        replay = ReplayProvider(Cassette.load(path), at=site)
        got = replay.complete(req, deadline=None, stop=threading.Event())
        assert (got.text, got.usage) == (want, Usage(5, int(want[-1]) + 1))
    # a call site the cassette has not seen: the attempt-th recording of the request
    other = ReplayProvider(Cassette.load(path), at=CallSite(9, "z", None, 2))
    assert other.complete(req, deadline=None, stop=threading.Event()).text == "reply 1"
    # the same site recorded twice (a call repeated after resume): the later recording
    again = Cassette(path)
    again.record(req, LLMReply("after resume", "m", Usage(5, 9), "openai"), at=sites[0])
    again.close()
    replay = ReplayProvider(Cassette.load(path), at=sites[0])
    assert replay.complete(req, deadline=None, stop=threading.Event()).text == "after resume"


GATED = """
    name: gated
    state:
      first: {default: null}
      second: {default: null}
      echoes: {default: [], reducer: append}
    nodes:
      ask:
        llm: {model: gpt-4o-mini, prompt: "Pick a number"}
        save: first
        next: gate
      gate:
        shell: "test -f go"
        next: again
      again:
        llm: {model: gpt-4o-mini, prompt: "Pick a number"}
        save: second
        next: echo
      echo:
        foreach: [1, 2, 3, 4]
        llm: {model: gpt-4o-mini, prompt: "Say the same thing"}
        save: echoes
"""


def test_a_resumed_replay_gets_the_next_recording_not_the_first_again(tmp_path: Path) -> None:
    wf = write(tmp_path, "wf.yaml", GATED)
    cassette = tmp_path / "c.jsonl"
    (tmp_path / "go").touch()
    counter = iter(range(1, 100))
    lock = threading.Lock()

    def answer(model: str, prompt: str) -> str:
        with lock:
            return f"answer {next(counter)}"

    with OpenAIServer(api_key=OPENAI_KEY, answer=answer) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=OPENAI_KEY)
        args = ["--db", str(tmp_path / "rec.db"), "--json", "--llm-record", str(cassette)]
        rec = flowrun("run", str(wf), *args, cwd=tmp_path, env=env)
        dead = o.url
    assert rec.returncode == 0, rec.stderr
    recorded = json.loads(rec.stdout)
    assert recorded["state"]["first"] == "answer 1" and recorded["state"]["second"] == "answer 2"
    assert len(recorded["state"]["echoes"]) == 4

    # replay: the gate fails the run after the first call; resume it once the gate opens
    (tmp_path / "go").unlink()
    offline = clean_env(OPENAI_BASE_URL=dead)
    db = tmp_path / "rep.db"
    replay = ["--db", str(db), "--json", "--llm-replay", str(cassette)]
    first = flowrun("run", str(wf), *replay, cwd=tmp_path, env=offline)
    assert first.returncode == 1, first.stderr
    (tmp_path / "go").touch()
    resumed = flowrun("resume", "latest", *replay, cwd=tmp_path, env=offline)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["state"] == recorded["state"]  # "answer 2", and each echo its own reply
    for k in ("calls", "tokens_in", "tokens_out", "total_usd"):
        assert out["costs"][k] == recorded["costs"][k], k
    assert attempts(db) == attempts(tmp_path / "rec.db")


# 2. billed but unusable replies ------------------------------------------------------
def _openai_body(content: str | None, refusal: str | None, tokens_in: int, out: int) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": out,
                "total_tokens": tokens_in + out,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
    )


UNUSABLE = """
    name: unusable
    state: {verdict: {default: null}}
    nodes:
      judge:
        llm: {model: gpt-4o-mini, prompt: "Verdict as JSON", json: true}
        retry: {max_attempts: 3, backoff: 10ms}
        save: verdict
"""


def test_billed_but_unusable_replies_are_recorded_so_replay_retraces_attempts_and_costs(
    tmp_path: Path,
) -> None:
    wf = write(tmp_path, "wf.yaml", UNUSABLE)
    cassette = tmp_path / "c.jsonl"
    script = [
        Reply(raw=_openai_body(None, "I cannot judge that", 31, 7)),  # billed, no text
        Reply(text="not JSON, sorry", usage={"tokens_in": 33, "tokens_out": 11}),
        Reply(text='{"ok": true}', usage={"tokens_in": 35, "tokens_out": 13}),
    ]
    with OpenAIServer(api_key=OPENAI_KEY, script=script) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=OPENAI_KEY)
        rec_db = tmp_path / "rec.db"
        rec = flowrun(
            "run", str(wf), "--db", str(rec_db), "--json", "--llm-record", str(cassette),
            cwd=tmp_path, env=env,
        )  # fmt: skip
        dead = o.url
    assert rec.returncode == 0, rec.stderr
    recorded = json.loads(rec.stdout)
    assert recorded["costs"]["calls"] == 3 and recorded["costs"]["tokens_out"] == 7 + 11 + 13
    assert len(cassette.read_text().splitlines()) == 3

    db = tmp_path / "rep.db"
    rep = flowrun(
        "run", str(wf), "--db", str(db), "--json", "--llm-replay", str(cassette),
        cwd=tmp_path, env=clean_env(OPENAI_BASE_URL=dead),
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    replayed = json.loads(rep.stdout)
    assert replayed["state"] == recorded["state"] == {"verdict": {"ok": True}}
    for k in ("calls", "tokens_in", "tokens_out", "total_usd"):
        assert replayed["costs"][k] == recorded["costs"][k], k
    assert (
        attempts(db)
        == attempts(rec_db)
        == [
            ("judge", None, 1, 7),
            ("judge", None, 2, 11),
            ("judge", None, 3, 13),
        ]
    )


def test_the_recorder_writes_a_reply_without_text_and_replay_fails_it_the_same_way(
    tmp_path: Path,
) -> None:
    req = LLMRequest(model="gpt-4o-mini", prompt="hello")
    path = tmp_path / "c.jsonl"
    session = Session()
    try:
        body = _openai_body(None, None, 12, 3)
        with OpenAIServer(script=[Reply(raw=body)]) as o:
            live = session.provider(
                "openai", base_url=o.url, api_key_env=None, cassette=None, record=None
            )
            recorder = Recorder(live, Cassette(path), at=CallSite(0, "n", None, 1))
            with pytest.raises(ProviderError) as got:
                recorder.complete(req, deadline=None, stop=threading.Event())
            recorder.cassette.close()
    finally:
        session.close()
    replay = ReplayProvider(Cassette.load(path), at=CallSite(0, "n", None, 1))
    with pytest.raises(ProviderError) as again:
        replay.complete(req, deadline=None, stop=threading.Event())
    assert str(again.value) == str(got.value)
    assert (again.value.reason, again.value.retryable) == (got.value.reason, got.value.retryable)
    assert again.value.reply is not None and again.value.reply.usage == Usage(12, 3)
    assert again.value.reply.provider == "replay"


# 3. Anthropic 1-hour cache writes -----------------------------------------------------
def _anthropic_body(model: str, plain: int, read: int, w5m: int, w1h: int, out: int) -> str:
    return json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "cached answer"}],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": plain,
                "cache_read_input_tokens": read,
                "cache_creation_input_tokens": w5m + w1h,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": w5m,
                    "ephemeral_1h_input_tokens": w1h,
                },
                "output_tokens": out,
            },
        }
    )


def test_anthropic_usage_keeps_one_hour_cache_writes_apart() -> None:
    u = parse_usage(json.loads(_anthropic_body("m", 10, 20, 300, 4000, 50))["usage"])
    assert u == Usage(10 + 20 + 300 + 4000, 50, cached=20, cache_write=4300, cache_write_1h=4000)
    plain = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 7}
    assert parse_usage(plain) == Usage(17, 5, 0, 7, 0)  # no breakdown: all 5-minute


def test_one_hour_cache_writes_cost_their_own_rate_never_twice() -> None:
    p = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    got = Fraction(str(p.cost(4_330, 50, cached=20, cache_write=4300, cache_write_1h=4000)))
    want = (
        Fraction(10) * 3 + 20 * Fraction("0.3") + 300 * Fraction("3.75") + 4000 * 6 + 50 * 15
    ) / 1_000_000  # 1h writes default to 2x input
    assert got == want
    explicit = Price(input=3.0, output=15.0, cache_write_1h=7.0)
    assert Fraction(str(explicit.cost(4000, 0, cache_write=4000, cache_write_1h=4000))) == (
        Fraction(4000 * 7, 1_000_000)
    )
    assert explicit.to_json()["cache_write_1h"] == 7.0
    table = parse_prices("m: {input: 1, output: 2, cache_write: 1.25, cache_write_1h: 2}\n", "p")
    assert table.lookup("m") == Price(1.0, 2.0, None, 1.25, 2.0)
    source = load_prices().source
    claudes = [n for n in source.names() if n.startswith("claude-") and "opus-4" in n]
    assert claudes
    for name in claudes:
        price = source.find(name)
        assert price is not None and price.cache_write_1h == 2 * price.input, name


def test_a_run_with_one_hour_cache_writes_is_costed_and_reported_at_their_rate(
    tmp_path: Path,
) -> None:
    wf = write(
        tmp_path,
        "wf.yaml",
        """
        name: hour
        state: {a: {default: null}, b: {default: null}}
        nodes:
          known:
            llm: {model: claude-sonnet-4, prompt: "long context"}
            save: a
            next: custom
          custom:
            llm: {model: claude-custom, prompt: "long context"}
            save: b
        """,
    )
    db = tmp_path / "f.db"
    cassette = tmp_path / "c.jsonl"
    script = [
        Reply(raw=_anthropic_body("claude-sonnet-4", 10, 20, 300, 4000, 50)),
        Reply(raw=_anthropic_body("claude-custom", 1, 0, 0, 1000, 2)),
    ]
    with AnthropicServer(api_key=ANTHROPIC_KEY, script=script) as a:
        env = clean_env(ANTHROPIC_BASE_URL=a.url, ANTHROPIC_API_KEY=ANTHROPIC_KEY)
        args = ["--db", str(db), "--json", "--llm-record", str(cassette)]
        r = flowrun("run", str(wf), *args, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    costs = json.loads(r.stdout)["costs"]
    sonnet = (
        Fraction(10) * 3 + 20 * Fraction("0.3") + 300 * Fraction("3.75") + 4000 * 6 + 50 * 15
    ) / 1_000_000
    assert Fraction(str(costs["total_usd"])) == sonnet
    assert costs["cache_write_tokens"] == 5300 and costs["cache_write_1h_tokens"] == 5000
    by_model = {m["model"]: m for m in costs["by_model"]}
    assert by_model["claude-sonnet-4"]["cache_write_1h_tokens"] == 4000
    assert costs["unpriced_models"] == ["claude-custom"]
    rows = {row["model"]: row for row in ledger(db)}
    assert rows["claude-sonnet-4"]["cache_write_1h_tokens"] == 4000
    assert json.loads(rows["claude-sonnet-4"]["price"])["cache_write_1h"] == 6.0

    # priced afterwards from the ledger: the 1h writes still at their own rate
    prices = tmp_path / "p.yaml"
    prices.write_text("claude-custom: {input: 1, output: 2, cache_write: 1.25}\n")
    later = flowrun(
        "costs", "latest", "--db", str(db), "--json", "--pricing", str(prices),
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    custom = {m["model"]: m for m in json.loads(later.stdout)["by_model"]}["claude-custom"]
    assert Fraction(str(custom["cost_usd"])) == Fraction(1 * 1 + 1000 * 2 + 2 * 2, 1_000_000)

    # and a replay of the run costs the same
    rep = flowrun(
        "run", str(wf), "--db", str(tmp_path / "rep.db"), "--json", "--llm-replay",
        str(cassette), cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["costs"]["total_usd"] == costs["total_usd"]
    assert json.loads(rep.stdout)["costs"]["cache_write_1h_tokens"] == 5000


def test_the_anthropic_provider_reports_one_hour_writes_from_the_wire() -> None:
    body = _anthropic_body("claude-haiku-4-5", 4, 0, 0, 64, 1)
    with AnthropicServer(api_key=ANTHROPIC_KEY, script=[Reply(raw=body)]) as a:
        os.environ["FLOWRUN_LEFTOVER_KEY"] = ANTHROPIC_KEY
        session = Session()
        try:
            p = AnthropicProvider(
                session.client(), base_url=a.url, api_key_env="FLOWRUN_LEFTOVER_KEY"
            )
            reply = p.complete(
                LLMRequest("claude-haiku-4-5", "hi"), deadline=None, stop=threading.Event()
            )
        finally:
            session.close()
            del os.environ["FLOWRUN_LEFTOVER_KEY"]
    assert reply.usage == Usage(68, 1, 0, 64, 64)
