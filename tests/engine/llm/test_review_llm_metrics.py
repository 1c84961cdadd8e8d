"""Review findings in the LLM providers, prices, metrics exporter and event sinks.

Each test pins one bug found in review. HTTP goes to loopback servers speaking the
real protocols (tests/support/llm_servers.py); end-to-end tests run the installed command
against real SQLite files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from flowrun.engine.costs import Price, load_prices
from flowrun.engine.llm import LLMRequest, ProviderError, Session
from flowrun.engine.llm.anthropic import AnthropicProvider
from flowrun.engine.llm.http import retry_after
from flowrun.engine.llm.openai import OpenAIProvider
from flowrun.engine.metrics import Exporter, ExportOptions, RunMetrics
from prometheus_client.parser import text_string_to_metric_families

from tests.support.installed import FLOWRUN
from tests.support.llm_servers import AnthropicServer, OpenAIServer, Reply

Write = Callable[[str, str], Path]
KEY = "sk-review-SECRET-0123456789abcdef"


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


def provider_with_key(kind: str, url: str, key: str, session: Session) -> object:
    os.environ["FLOWRUN_REVIEW_KEY"] = key
    try:
        cls = OpenAIProvider if kind == "openai" else AnthropicProvider
        return cls(session.client(), base_url=url, api_key_env="FLOWRUN_REVIEW_KEY")
    finally:
        os.environ.pop("FLOWRUN_REVIEW_KEY")


def ask(provider: object, model: str = "gpt-4o-mini") -> object:
    return provider.complete(  # type: ignore[attr-defined]
        LLMRequest(model, "hello"), deadline=time.monotonic() + 30, stop=threading.Event()
    )


# keys ---------------------------------------------------------------------------
def test_a_key_read_with_a_trailing_newline_works_and_never_reaches_the_db(
    write: Write, tmp_path: Path
) -> None:
    """A key read from a file often ends in a newline; httpx then refused the header and
    its error (stored in the DB and events) carried the key verbatim."""
    wf = write(
        "wf.yaml",
        """
        name: newline-key
        state: {out: {default: null}}
        nodes:
          ask:
            llm: {model: gpt-4o-mini, prompt: "hi there"}
            save: out
        """,
    )
    db = tmp_path / "f.db"
    with OpenAIServer(api_key=KEY) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=KEY + "\n")
        p = subprocess.run(
            [FLOWRUN, "run", str(wf), "--db", str(db), "--events", str(tmp_path / "ev.jsonl")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 0, p.stderr
    assert [s.status for s in o.served] == [200]
    blobs = [f.read_bytes() for f in tmp_path.iterdir() if f.is_file() and f.name != "wf.yaml"]
    blobs += [p.stdout.encode(), p.stderr.encode()]
    for blob in blobs:
        assert KEY.encode() not in blob


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_key_httpx_cannot_send_is_scrubbed_from_the_error_and_not_retried(kind: str) -> None:
    """httpx quotes an illegal header value (b'Bearer sk-...\\r...') in its error: the
    escaped form of the key must be scrubbed too, and the error is not worth retrying."""
    bad = "sk-review-SECRET\r0123456789abcdef"
    session = Session()
    server = OpenAIServer(api_key=KEY) if kind == "openai" else AnthropicServer(api_key=KEY)
    try:
        with server as srv:
            provider = provider_with_key(kind, srv.url, bad, session)
            with pytest.raises(ProviderError) as info:
                ask(provider)
    finally:
        session.close()
    msg = str(info.value)
    assert "0123456789abcdef" not in msg and "SECRET" not in msg, msg
    assert info.value.retryable is False
    assert srv.served == []


# retries ------------------------------------------------------------------------
@pytest.mark.parametrize("status", [501, 507, 520, 524])
def test_every_5xx_is_retried_as_the_readme_says(status: int) -> None:
    session = Session()
    try:
        with OpenAIServer(api_key=KEY, script=[Reply(status)]) as srv:
            provider = provider_with_key("openai", srv.url, KEY, session)
            reply = ask(provider)
    finally:
        session.close()
    assert [s.status for s in srv.served] == [status, 200]
    assert reply.usage is not None  # type: ignore[attr-defined]


def test_retry_after_dates_without_a_zone_are_gmt_whatever_the_local_zone() -> None:
    """HTTP dates are GMT; asctime-style dates and ``-0000`` carry no zone and were read
    as local time, off by hours (the attempt then gave up and the node slept hours)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"  # UTC-5, no DST: a POSIX zone that needs no tzdata
    time.tzset()
    try:
        now = 1_800_000_000.0
        later = now + 30
        forms = [
            time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(later)),
            time.asctime(time.gmtime(later)),
            time.strftime("%a, %d %b %Y %H:%M:%S -0000", time.gmtime(later)),
        ]
        for form in forms:
            got = retry_after(httpx.Headers({"retry-after": form}), now=now)
            assert got is not None and abs(got - 30) < 1, (form, got)
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf"])
def test_a_non_finite_retry_after_is_ignored(value: str) -> None:
    """``inf`` made the node's retry wait ``Event.wait(inf)``, an OverflowError."""
    assert retry_after(httpx.Headers({"retry-after": value})) is None
    assert retry_after(httpx.Headers({"retry-after-ms": value})) is None


# usage ----------------------------------------------------------------------------
OPENAI_NULL_USAGE = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    }
)
OPENAI_NO_OUTPUT_COUNT = json.dumps(
    {
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 12},
    }
)
ANTHROPIC_NULL_USAGE = json.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": None, "output_tokens": None},
    }
)


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("openai", OPENAI_NULL_USAGE),
        ("openai", OPENAI_NO_OUTPUT_COUNT),
        ("anthropic", ANTHROPIC_NULL_USAGE),
    ],
)
def test_usage_with_null_or_missing_counts_is_unknown_not_zero(kind: str, raw: str) -> None:
    session = Session()
    server = OpenAIServer if kind == "openai" else AnthropicServer
    try:
        with server(api_key=KEY, script=[Reply(raw=raw)]) as srv:
            reply = ask(provider_with_key(kind, srv.url, KEY, session))
    finally:
        session.close()
    assert reply.text == "hi"  # type: ignore[attr-defined]
    assert reply.usage is None  # type: ignore[attr-defined]


def test_a_run_whose_reply_has_null_usage_records_unknown_tokens(
    write: Write, tmp_path: Path
) -> None:
    wf = write(
        "wf.yaml",
        """
        name: null-usage
        state: {out: {default: null}}
        nodes:
          ask:
            llm: {model: gpt-4o-mini, prompt: "hi there"}
            save: out
        """,
    )
    db = tmp_path / "f.db"
    with OpenAIServer(script=[Reply(raw=OPENAI_NULL_USAGE)]) as o:
        p = subprocess.run(
            [FLOWRUN, "run", str(wf), "--db", str(db), "--json"],
            cwd=tmp_path,
            env=clean_env(OPENAI_BASE_URL=o.url),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 0, p.stderr
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT tokens_in, tokens_out, cost_usd FROM llm_calls").fetchall()
    finally:
        conn.close()
    assert rows == [(None, None, None)]
    assert json.loads(p.stdout)["costs"]["unknown_usage_calls"] == 1


# prices ---------------------------------------------------------------------------
def test_the_first_gpt_4o_snapshot_keeps_its_own_higher_price() -> None:
    """gpt-4o-2024-05-13 costs $5/$15, not gpt-4o's $2.50/$10: a dated name must not
    inherit the base price when the snapshot has its own."""
    table = load_prices()
    assert table.lookup("gpt-4o-2024-05-13") == Price(5.0, 15.0)
    assert table.lookup("gpt-4o-2024-08-06") == table.lookup("gpt-4o")


# metrics --------------------------------------------------------------------------
def test_final_metrics_show_nothing_running_even_if_the_run_ended_mid_step(
    tmp_path: Path,
) -> None:
    """A run that ends by a store error or lost lease never hears run_finished: the file
    and push written as the command exits must not report tasks still running."""
    metrics = RunMetrics()
    metrics.run_started("r1", "wf", 0, False)
    task = {"node": "n", "key": "k"}
    for _ in range(3):
        metrics.task_queued(0, task)
    metrics.task_started(0, task)  # one running, two queued when the engine gave up
    prom = tmp_path / "m.prom"
    Exporter(ExportOptions(file=str(prom)), metrics, warn=print, info=print).close()
    values = {
        s.name: s.value
        for fam in text_string_to_metric_families(prom.read_text())
        for s in fam.samples
    }
    assert values["flowrun_inflight_nodes"] == 0
    assert values["flowrun_queue_depth"] == 0


# events ---------------------------------------------------------------------------
def test_events_can_go_to_a_pipe(write: Write, tmp_path: Path) -> None:
    """``--events /dev/stderr`` in CI (a pipe) was a usage error: the sink asked the
    pipe for its position to repair a cut line."""
    wf = write(
        "wf.yaml",
        """
        name: piped
        state: {n: {default: 0}}
        nodes:
          one:
            set: {n: 1}
        """,
    )
    p = subprocess.run(
        [FLOWRUN, "run", str(wf), "--db", str(tmp_path / "f.db"), "--events", "/dev/stderr"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,  # stderr is a pipe, as in CI
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    types = []
    for line in p.stderr.splitlines():
        if line.startswith("{"):
            types.append(json.loads(line)["type"])
    assert types[0] == "run_started" and types[-1] == "run_succeeded", p.stderr


def test_a_malformed_choice_still_reports_the_billed_usage() -> None:
    """``choices: ["..."]`` raised AttributeError past the provider, so the usage the
    server billed never reached the ledger."""
    raw = json.dumps(
        {
            "id": "chatcmpl-3",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": ["not an object"],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4},
        }
    )
    session = Session()
    try:
        with OpenAIServer(api_key=KEY, script=[Reply(raw=raw)]) as srv:
            provider = provider_with_key("openai", srv.url, KEY, session)
            with pytest.raises(ProviderError) as info:
                ask(provider)
    finally:
        session.close()
    assert info.value.retryable is True
    assert info.value.reply is not None and info.value.reply.usage is not None
    assert (info.value.reply.usage.tokens_in, info.value.reply.usage.tokens_out) == (9, 4)
