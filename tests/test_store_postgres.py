"""Stores by URL (``open_store``) and what the PostgreSQL store adds to the contract.

The contract itself runs on both stores in ``test_store_contract.py``; here: which
URL opens which store, passwords never shown, a lost connection, heartbeats on the
database's clock, and whole runs through the CLI against a real server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import DatabaseRefused, ResumeRefused, StoreError, UsageError
from flowrun.engine.store import open_store
from flowrun.engine.store.open import masked, sqlite_path
from flowrun.engine.store.sqlite import SQLiteStore

from .conftest import FLOWRUN
from .pg import query

FRONTIER0 = {"entries": [{"node": "a", "parent": "", "edge": 0}], "held": [], "since": {}}

CHAIN = """
name: chain
state:
  n: {default: 0}
  seen: {default: [], reducer: append}
nodes:
  a:
    shell: "sleep 0.02"
    next: tick
  tick:
    set: {n: "{{ state.n + 1 }}", seen: "{{ state.n }}"}
    routes:
      - when: "state.n < 25"
        to: a
      - to: END
"""


def new_run(store: Any, run_id: str = "r1") -> int:
    store.create_run(
        run_id,
        workflow_name="wf",
        workflow_path="/x/wf.yaml",
        workflow_text="name: wf\n",
        workflow_digest="d0",
        state={"n": 0},
        frontier=FRONTIER0,
        inputs={},
    )
    return int(store.take_lease(run_id).token)


def with_password(url: str, password: str) -> str:
    """``url`` with a password (the test server trusts 127.0.0.1, so any password works)."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1) if "@" in rest else ("postgres", rest)
    return f"{scheme}://{userinfo.split(':')[0]}:{password}@{host}"


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# which URL opens which store ------------------------------------------------------------


def test_a_path_and_a_sqlite_url_open_the_same_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    a = open_store(str(db))
    assert isinstance(a, SQLiteStore)
    new_run(a)
    a.close()
    b = open_store(f"sqlite:///{db}")  # sqlite:/// + an absolute path: sqlite:////abs
    assert isinstance(b, SQLiteStore) and b.path == db
    assert [r.run_id for r in b.list_runs()] == ["r1"]
    b.close()
    assert sqlite_path("sqlite:///rel/f.db") == "rel/f.db"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:pw@h/db", "unknown database scheme 'mysql'"),
        ("sqlite://host/f.db", "a sqlite URL has no host"),
        ("sqlite:///", "no file named"),
    ],
)
def test_other_schemes_and_malformed_urls_are_usage_errors(url: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem) as exc:
        open_store(url)
    assert "pw" not in exc.value.message


def test_without_psycopg_a_postgresql_url_is_exit_2_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name)
    )
    for url in ("postgresql://u:hunter2@127.0.0.1/db", "postgres://u:hunter2@127.0.0.1/db"):
        with pytest.raises(UsageError, match="needs psycopg 3") as exc:
            open_store(url)
        assert exc.value.exit_code == 2
        assert exc.value.hint and "flowrun[postgres]" in exc.value.hint
        assert "hunter2" not in exc.value.message and "***" in exc.value.message


def test_a_password_is_masked_and_everything_else_kept() -> None:
    assert masked("postgresql://al:s3cr%40t@db.example:5433/runs?sslmode=require") == (
        "postgresql://al:***@db.example:5433/runs?sslmode=require"
    )
    assert masked("postgresql://al@db/runs") == "postgresql://al@db/runs"
    assert masked(".flowrun/flowrun.db") == ".flowrun/flowrun.db"


def test_a_server_that_does_not_answer_is_a_store_error_without_the_password(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = flowrun("runs", "--db", f"postgresql://u:hunter2@127.0.0.1:{port}/db", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "cannot connect to postgresql://u:***@127.0.0.1" in p.stderr
    assert "hunter2" not in p.stderr and "Traceback" not in p.stderr


# the PostgreSQL store ---------------------------------------------------------------------


def test_a_missing_database_is_refused_and_a_readonly_open_creates_nothing(
    pg_url: str,
) -> None:
    with pytest.raises(DatabaseRefused, match="does not exist"):
        open_store(pg_url.rsplit("/", 1)[0] + "/no_such_database")
    with pytest.raises(ResumeRefused, match="no flowrun database at"):
        open_store(pg_url, readonly=True)
    assert query(pg_url, "SELECT to_regclass('flowrun.runs')") == [(None,)]
    open_store(pg_url).close()  # now it is a flowrun database
    ro = open_store(pg_url, readonly=True)
    assert ro.list_runs() == []
    with pytest.raises(StoreError, match="read-only"):
        new_run(ro)
    ro.close()


def test_the_schema_versions_are_kept_in_a_table(pg_url: str) -> None:
    from flowrun.engine.store.postgres_migrations import MIGRATIONS

    open_store(pg_url).close()
    open_store(pg_url).close()  # a second open applies nothing again
    rows = query(pg_url, "SELECT version FROM flowrun.schema_version ORDER BY version")
    assert rows == [(i + 1,) for i in range(len(MIGRATIONS))]


def test_heartbeats_are_written_and_judged_on_the_database_clock(pg_url: str) -> None:
    store = open_store(pg_url)
    token = new_run(store)
    assert store.heartbeat("r1", token)
    (beat, db_now), *_ = query(
        pg_url,
        "SELECT lease_heartbeat, extract(epoch FROM now())::float8 FROM flowrun.runs",
    )
    assert 0 <= db_now - beat < 60
    # an owner on another host is judged by its heartbeat's age on the database clock
    stale = float(os.environ.get("FLOWRUN_LEASE_STALE_S", "30"))
    query_set = "UPDATE flowrun.runs SET lease_host = 'elsewhere', lease_heartbeat = %s"
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(query_set, (db_now - 1,))
    assert store.run_is_live("r1")
    with pytest.raises(ResumeRefused, match=r"being executed by pid \d+ on elsewhere"):
        store.take_lease("r1")
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(query_set, (db_now - 2 * stale,))
    assert not store.run_is_live("r1")
    assert store.take_lease("r1").token == token + 1
    store.close()


def test_a_killed_backend_fails_the_call_cleanly_keeps_no_half_step_and_reconnects(
    pg_url: str,
) -> None:
    from flowrun.engine.store.base import StepCommit

    store = open_store(pg_url)
    token = new_run(store)
    (pid,) = query(
        pg_url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )[0]
    query(pg_url, "SELECT pg_terminate_backend(%s)", pid)
    step = StepCommit(
        step=0, idempotency_key="k0", digest="d", changed={"n": "1"}, frontier=FRONTIER0,
        tasks=[],
    )  # fmt: skip
    with pytest.raises(StoreError, match="lost the connection to") as exc:
        store.save_step("r1", token, step)
    assert exc.value.hint and "flowrun resume" in exc.value.hint
    assert store.load_latest("r1").step == 0  # nothing of it was kept; a new connection reads
    store.save_step("r1", token, step)  # and writes
    assert store.load_latest("r1").state == {"n": 1}
    store.close()


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_result_and_no_password_shows(
    pg_url: str, tmp_path: Path
) -> None:
    (tmp_path / "chain.yaml").write_text(CHAIN)
    db = with_password(pg_url, "hunter2")
    ref = flowrun("run", "chain.yaml", "--db", db, "--run-id", "ref", "--json", "-q", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(
        [FLOWRUN, "run", "chain.yaml", "--db", db, "--run-id", "k", "-q", "--events", "ev.jsonl"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until a few steps are committed
        rows = query(pg_url, "SELECT step FROM flowrun.runs WHERE run_id = 'k'")
        if rows and rows[0][0] >= 6:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = flowrun(
        "resume", "k", "--db", db, "--json", "-q", "--events", "ev.jsonl", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    want, got = json.loads(ref.stdout), json.loads(resumed.stdout)
    assert got["state"] == want["state"] and got["digest"] == want["digest"]
    outputs = [resumed.stdout, resumed.stderr, (tmp_path / "ev.jsonl").read_text()]
    for args in (["runs"], ["show", "k"], ["logs", "k"], ["costs", "k"], ["show", "k", "--json"]):
        p = flowrun(*args, "--db", db, cwd=tmp_path)
        assert p.returncode == 0, (args, p.stderr)
        outputs += [p.stdout, p.stderr]
    assert not any("hunter2" in text for text in outputs)
