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
from flowrun.engine import DatabaseRefused, LeaseLost, ResumeRefused, StoreError, UsageError
from flowrun.engine.records import Frontier
from flowrun.engine.store import open_store
from flowrun.engine.store.open import masked, sqlite_path, url_secrets
from flowrun.engine.store.sqlite import SQLiteStore

from tests.support.installed import FLOWRUN
from tests.support.stores import execute, query

FRONTIER0 = Frontier.from_json(
    {"entries": [{"node": "a", "parent": "", "edge": 0}], "held": [], "since": {}}
)

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


def flowrun(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``flowrun``; ``env`` is added to an environment without FLOWRUN_DB."""
    full = {k: v for k, v in os.environ.items() if k != "FLOWRUN_DB"}
    full.update(env or {})
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120
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


def test_a_password_in_the_query_and_an_sslpassword_are_masked_too() -> None:
    url = "postgresql://u@127.0.0.1:1/db?password=hunter2&sslpassword=s3cr3tkey&sslmode=require"
    assert masked(url) == (
        "postgresql://u@127.0.0.1:1/db?password=***&sslpassword=***&sslmode=require"
    )
    assert url_secrets(url) == {"hunter2", "s3cr3tkey"}
    # as written and as libpq reads it: a run masks both in what its commands print
    assert url_secrets("postgresql://al:s3cr%40t@db/runs") == {"s3cr%40t", "s3cr@t"}
    assert url_secrets("postgresql://al@db/runs") == frozenset()


def test_a_url_that_libpq_cuts_otherwise_is_masked_whole() -> None:
    # libpq ends the user info at the first "@" before a "/": a raw "?" in the password
    # puts it where a plain split sees a query; libpq's own reading catches it
    assert masked("postgresql://u:hun?ter2@db/runs") == "postgresql://***"
    # a raw "@" or "/" in the password: the user info ends at the last "@"
    assert masked("postgresql://u:hun@ter2@db/runs") == "postgresql://u:***@db/runs"
    assert masked("postgresql://u:hun/ter2@db/runs") == "postgresql://u:***@db/runs"


def test_a_password_in_the_query_is_not_shown_by_a_failed_connect(tmp_path: Path) -> None:
    p = flowrun("runs", "--db", "postgresql://u@127.0.0.1:1/db?password=hunter2", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "cannot connect to postgresql://u@127.0.0.1:1/db?password=***" in p.stderr
    assert "hunter2" not in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://u:hun%zzter2@127.0.0.1:1/db", "invalid percent-encoded token"),
        ("postgresql://u:hunter2@[::1:5432/db", 'looking for matching "]"'),
        ("postgresql://u:hunter2@127.0.0.1:1/db?nosuch=1", 'invalid URI query parameter: "nosuch"'),
    ],
)
def test_a_malformed_url_is_exit_2_in_one_line_with_a_hint_and_no_password(
    url: str, problem: str, tmp_path: Path
) -> None:
    p = flowrun("runs", "--db", url, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "not a valid PostgreSQL URL" in p.stderr and problem in p.stderr
    assert "hint:" in p.stderr and "%40" in p.stderr
    assert "hunter2" not in p.stderr.replace("%zz", "")
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr


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


def test_version_2_makes_the_idempotency_key_unique_within_its_run(pg_url: str) -> None:
    from flowrun.engine.store.base import StepCommit
    from flowrun.engine.store.postgres_migrations import MIGRATIONS

    execute(pg_url, "CREATE SCHEMA flowrun")  # a database version 1 left
    execute(pg_url, MIGRATIONS[0])  # (execute sets the search path)
    execute(
        pg_url,
        "CREATE TABLE flowrun.schema_version (version INTEGER PRIMARY KEY,"
        " applied_at DOUBLE PRECISION NOT NULL); INSERT INTO flowrun.schema_version VALUES (1, 0)",
    )
    store = open_store(pg_url)
    token = new_run(store)
    store.save_step(
        "r1",
        token,
        StepCommit(
            step=0,
            idempotency_key="k0",
            digest="d",
            changed={"n": "1"},
            frontier=FRONTIER0,
            tasks=[],
        ),
    )
    store.close()
    unique = query(
        pg_url,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'flowrun.steps'::regclass AND contype IN ('u', 'p') ORDER BY 1",
    )
    assert unique == [("PRIMARY KEY (run_id, step)",), ("UNIQUE (run_id, idem_key)",)]
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


# any text, on either store ------------------------------------------------------------

NUL_WORKFLOW = r"""
name: nul
state:
  n: {default: 0}
nodes:
  out:
    run: ["sh", "-c", "printf 'a\\0b\\n'; printf 'e\\0r\\n' >&2"]
    next: boom
  boom:
    python: nullib:boom
    next: END
"""

NUL_LIB = r"""
def boom(state, ctx):
    print("before\0after \U0010fffd0 \U0010fffd")  # and the escape's own mark, as text
    raise ValueError("bad\0value")
"""


def test_text_with_nul_fails_logs_and_shows_the_same_on_every_store(
    store_url: str, tmp_path: Path
) -> None:
    (tmp_path / "nul.yaml").write_text(NUL_WORKFLOW)
    (tmp_path / "nullib.py").write_text(NUL_LIB.lstrip())
    db = ["--db", store_url]
    run = flowrun(
        "run", "nul.yaml", *db, "--run-id", "nul", "-q", "--events", "ev.jsonl", cwd=tmp_path
    )
    assert run.returncode == 1, run.stderr  # the node failed; nothing failed to be written
    assert "cannot use database" not in run.stderr
    error = "nullib.py:3 in boom: ValueError: bad\0value"

    logs = flowrun("logs", "nul", *db, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == ("out | a\0b\nout ! e\0r\nboom | before\0after \U0010fffd0 \U0010fffd\n")

    show = flowrun("show", "nul", *db, "--json", cwd=tmp_path)
    assert show.returncode == 1, show.stderr  # show's exit code is the run's
    shown = json.loads(show.stdout)
    assert shown["status"] == "failed"
    assert shown["error"] == f"node 'boom' failed after 1 attempt(s): {error}"
    (failure,) = shown["nodes"]["boom"]["errors"]
    assert failure["error"] == error
    assert failure["traceback"].endswith("\nValueError: bad\0value")
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["error"] for e in events if e["type"] == "task_failed"] == [error]

    human = flowrun("show", "nul", *db, cwd=tmp_path)
    assert human.returncode == 1, human.stderr
    assert f"status    failed: node 'boom' failed after 1 attempt(s): {error}\n" in human.stdout


def test_nul_and_the_escape_mark_round_trip_through_every_text_column(store_url: str) -> None:
    from flowrun.engine.store.base import Event, StepCommit, TaskResult

    store = open_store(store_url)
    token = new_run(store)
    tricky = ["\0", "a\0b", "\U0010fffd", "\U0010fffd0", "\U0010fffd1", "\0\U0010fffd\0", ""]
    for i, text in enumerate(tricky):
        result = TaskResult(
            step=0, order_key=f"k{i}", node="a", index=i, status="failed", attempts=1,
            started_at=1.0, duration_s=0.1, error=text, stdout=text, stderr=text,
            traceback=text, error_file=text, error_line=1,
        )  # fmt: skip
        store.save_task_results("r1", token, [result])
    events = [Event("r1", i + 1, 1.0, 0, "a", "task_failed", error=t) for i, t in enumerate(tricky)]
    store.append_events("r1", token, events)
    step = StepCommit(
        step=0, idempotency_key="k0", digest="d", changed={"n": "1"}, frontier=FRONTIER0,
        tasks=[], status="failed", error="\0stop\0",
    )  # fmt: skip
    store.save_step("r1", token, step)
    back = store.load_task_results("r1", 0)
    for i, text in enumerate(tricky):
        r = back[f"k{i}"]
        assert (r.error, r.stdout, r.stderr, r.traceback, r.error_file) == (text,) * 5
    assert [e.error for e in store.events("r1")] == tricky
    assert store.get_run("r1").error == "\0stop\0"
    store.close()


def test_run_id_prefixes_match_case_sensitively_on_every_store(store_url: str) -> None:
    store = open_store(store_url)
    for run_id in ("Build-7", "build-8", "bUILD-9"):
        new_run(store, run_id)
    assert store.resolve_run_id("B") == "Build-7"
    assert store.resolve_run_id("build") == "build-8"
    assert store.resolve_run_id("bU") == "bUILD-9"
    with pytest.raises(ResumeRefused, match="no run matches 'BUILD'"):
        store.resolve_run_id("BUILD")
    with pytest.raises(ResumeRefused, match="no run matches 'build-7'"):
        store.resolve_run_id("build-7")
    store.close()


# pipelined transactions ---------------------------------------------------------------


def test_a_displaced_owner_replaying_a_committed_step_loses_its_lease_on_every_store(
    store_url: str,
) -> None:
    """On PostgreSQL a transaction's statements go out together, the fence's answer with
    the rest: the clash of the replayed step with the new owner's is a lost lease."""
    from flowrun.engine.store.base import ProcRecord, StepCommit

    store = open_store(store_url)
    old = new_run(store)
    new = store.take_lease("r1", force=True).token
    step = StepCommit(
        step=0, idempotency_key="k0", digest="d", changed={"n": "1"}, frontier=FRONTIER0,
        tasks=[],
    )  # fmt: skip
    store.save_step("r1", new, step)
    with pytest.raises(LeaseLost, match="taken over"):
        store.save_step("r1", old, step)
    proc = ProcRecord(
        "r1", "h", owner_pid=1, owner_start=2, pid=3, pgid=3, start_time=4, step=0, node="a"
    )
    with pytest.raises(LeaseLost, match="taken over"):
        store.record_proc("r1", old, proc)  # reads the new row's id back mid-transaction
    assert store.procs("r1") == []
    assert store.heartbeat("r1", new) and not store.heartbeat("r1", old)
    assert store.load_latest("r1").state == {"n": 1}
    store.close()


@pytest.mark.parametrize(("durability", "setting"), [("normal", "off"), ("full", "on")])
def test_durability_sets_whether_a_commit_waits_for_the_wal_flush(
    pg_url: str, durability: str, setting: str
) -> None:
    store = open_store(pg_url, durability=durability)
    with store._read() as c:  # type: ignore[attr-defined]
        assert c.execute("SHOW synchronous_commit").fetchone() == (setting,)
    store.close()


# review fixes: URLs, secrets, isolation, privileges, lock waits ------------------------------


def test_a_multi_host_url_with_a_password_connects_as_libpq_does(
    pg_url: str, tmp_path: Path
) -> None:
    hosts = pg_url.split("@", 1)[1].split("/", 1)[0]
    url = with_password(pg_url, "hunter2").replace(hosts, f"{hosts},{hosts}")
    assert masked(url) == f"postgresql://postgres:***@{hosts},{hosts}/{pg_url.rsplit('/', 1)[1]}"
    (tmp_path / "wf.yaml").write_text("name: t\nnodes:\n  a:\n    shell: 'true'\n")
    run = flowrun("run", "wf.yaml", "--db", url, "--run-id", "mh", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    runs = flowrun("runs", "--db", url, cwd=tmp_path)
    assert runs.returncode == 0 and "mh" in runs.stdout, runs.stderr
    assert "hunter2" not in run.stderr + runs.stdout + runs.stderr


DB_PASSWORD = "Pg-7vQ/x2+Lm9&Tz=Kd4"  # what URL, JSON and base64 encode differently


def test_the_store_urls_password_is_masked_in_everything_a_run_keeps_and_prints(
    pg_url: str, tmp_path: Path
) -> None:
    from urllib.parse import quote

    from tests.engine.test_secrets import assert_nowhere

    (tmp_path / "leak.yaml").write_text(
        "name: leak\nnodes:\n"
        '  a:\n    shell: \'echo "db=$FLOWRUN_DB"; echo "db=$FLOWRUN_DB" >&2\'\n'
        "    next: b\n"
        "  b:\n    shell: 'echo \"$FLOWRUN_DB\" | base64; exit 3'\n"
    )
    url = with_password(pg_url, quote(DB_PASSWORD, safe=""))
    env = {"FLOWRUN_DB": url, "NO_COLOR": "1"}
    run = flowrun(
        "run", "leak.yaml", "--run-id", "r1", "--events", "ev.jsonl", "--junit", "junit.xml",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr  # b failed, as written
    outputs = [run.stdout, run.stderr]
    for args in (["logs", "r1"], ["show", "r1"], ["show", "r1", "--json", "--events"], ["runs"]):
        p = flowrun(*args, cwd=tmp_path, env=env)
        assert "Traceback" not in p.stderr, (args, p.stderr)
        outputs += [p.stdout, p.stderr]
    logs = outputs[2]
    assert "a | db=postgresql://postgres:***@" in logs  # the command ran and printed the URL
    assert "a ! db=postgresql://postgres:***@" in logs
    blobs = {f"output {i}": text.encode() for i, text in enumerate(outputs)}
    for name in ("ev.jsonl", "junit.xml"):
        blobs[name] = (tmp_path / name).read_bytes()
    tables = query(
        pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'flowrun'"
    )
    for (table,) in tables:
        rows = query(pg_url, f"SELECT row_to_json(t)::text FROM flowrun.{table} t")
        blobs[f"table {table}"] = "\n".join(r[0] for r in rows).encode()
    assert b"db=postgresql://postgres:***@" in blobs["table task_output"]
    assert_nowhere(DB_PASSWORD, blobs)


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_eight_processes_opening_a_new_database_at_once_migrate_it_once_at_any_isolation(
    pg_url: str, level: str
) -> None:
    import sys

    from flowrun.engine.store.postgres_migrations import MIGRATIONS

    database = pg_url.rsplit("/", 1)[1]
    execute(pg_url, f"ALTER DATABASE {database} SET default_transaction_isolation = '{level}'")
    code = f"from flowrun.engine.store import open_store\nopen_store({pg_url!r}).close()\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for e in errors if e]
    rows = query(pg_url, "SELECT version FROM flowrun.schema_version ORDER BY version")
    assert rows == [(i + 1,) for i in range(len(MIGRATIONS))]
    store = open_store(pg_url)
    with store._read() as c:  # type: ignore[attr-defined]
        assert c.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
    store.close()


@pytest.fixture
def plain_role(pg_url: str) -> Any:
    """A role that may log in and nothing more (no CREATE on the test's database)."""
    import uuid

    role = f"plain_{uuid.uuid4().hex[:12]}"
    execute(pg_url, f"CREATE ROLE {role} LOGIN")
    yield role
    execute(pg_url, f"DROP OWNED BY {role}")
    execute(pg_url, f"DROP ROLE {role}")


def test_a_user_without_the_privileges_is_refused_with_a_hint_in_one_line(
    pg_url: str, plain_role: str, tmp_path: Path
) -> None:
    (tmp_path / "wf.yaml").write_text("name: t\nnodes:\n  a:\n    shell: 'true'\n")
    url = with_password(pg_url, "hunter2").replace("postgres:", f"{plain_role}:", 1)
    fresh = flowrun("run", "wf.yaml", "--db", url, cwd=tmp_path)  # no CREATE: no schema
    open_store(pg_url).close()  # the owner creates it; the role may not use it
    made = flowrun("runs", "--db", url, cwd=tmp_path)
    for p in (fresh, made):
        assert p.returncode == 2, p.stderr
        assert f"cannot open postgresql://{plain_role}:***@" in p.stderr
        assert "permission denied for" in p.stderr
        assert "hint:" in p.stderr and "GRANT CREATE ON DATABASE" in p.stderr
        assert "internal error" not in p.stderr and "hunter2" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 2  # the error and its hint
    assert query(pg_url, "SELECT count(*) FROM flowrun.runs") == [(0,)]


def lock_run_row(url: str) -> Any:
    """Another session holding run ``r1``'s row lock in an open transaction."""
    import psycopg

    holder = psycopg.connect(url)
    holder.execute("SELECT 1 FROM flowrun.runs WHERE run_id = 'r1' FOR UPDATE")
    return holder


@pytest.mark.parametrize("busy", ["0", "0.0004"])
def test_a_busy_timeout_of_0_fails_at_once_on_a_held_row_lock_as_on_sqlite(
    pg_url: str, busy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.setenv("FLOWRUN_BUSY_TIMEOUT", busy)
    store = open_store(pg_url)
    token = new_run(store)
    with store._read() as c:  # type: ignore[attr-defined]
        assert c.execute("SHOW lock_timeout").fetchone() == ("1ms",)  # 0 is "forever" there
    holder = lock_run_row(pg_url)
    outcome: list[BaseException | None] = []

    def take_over() -> None:
        try:
            store.take_lease("r1", force=True)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=take_over, daemon=True)
    waiter.start()
    waiter.join(60)  # with lock_timeout = 0 it would still be waiting for the holder
    holder.rollback()
    waiter.join()
    (failure,) = outcome
    assert isinstance(failure, StoreError) and "FLOWRUN_BUSY_TIMEOUT" in failure.message
    assert store.take_lease("r1", force=True).token == token + 1  # once the lock is free
    holder.close()
    store.close()


FROZEN_OWNER = """
import os, signal, sys
from flowrun.engine.store import open_store

store = open_store(sys.argv[1])
token = store.take_lease("r1").token
try:
    with store._tx() as c:  # a step's transaction, holding the run row's lock
        store._fence(c, "r1", token)
        c.execute("SELECT 1 FROM runs WHERE run_id = 'r1'").fetchone()
        print("locked", flush=True)
        sys.stdin.readline()
        c.check_fences()  # the fence answered, as before every COMMIT ...
        os.kill(os.getpid(), signal.SIGSTOP)  # ... and frozen before the COMMIT went out
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", flush=True)
"""


def test_a_takeover_outwaits_an_owner_frozen_inside_a_transaction(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server cuts a frozen owner off (after half the stale time) before a waiter's
    lock_timeout runs out, even one that began waiting first with both settings equal,
    as they are by default (30 s): the waiter takes over; the thawed owner's commit fails."""
    import sys
    import threading

    for name in ("FLOWRUN_BUSY_TIMEOUT", "FLOWRUN_LEASE_STALE_S"):
        monkeypatch.setenv(name, "4")
    store = open_store(pg_url)
    token = new_run(store)
    store.release_lease("r1", token)
    (tmp_path / "owner.py").write_text(FROZEN_OWNER)
    owner = subprocess.Popen(
        [sys.executable, "owner.py", pg_url],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None and owner.stdin is not None
    outcome: list[Any] = []

    def take_over() -> None:
        try:
            outcome.append(store.take_lease("r1", force=True))
        except StoreError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=take_over, daemon=True)
    try:
        assert owner.stdout.readline() == "locked\n"
        waiter.start()
        while not query(  # until the takeover waits for the owner's row lock
            pg_url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'",
        ):
            time.sleep(0.01)
        owner.stdin.write("\n")
        owner.stdin.flush()
        waiter.join()
    finally:
        owner.send_signal(signal.SIGCONT)
    (taken,) = outcome
    assert not isinstance(taken, StoreError), taken.message
    assert taken.token == token + 2
    said, _ = owner.communicate(timeout=60)
    assert "server closed the connection" in said, said  # its COMMIT never went through
    assert store.heartbeat("r1", taken.token)
    assert store.load_latest("r1").step == 0  # nothing of the frozen owner's was kept
    store.close()
