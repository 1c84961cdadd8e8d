"""Many runners, one history: real ``flowrun`` processes sharing one database.

Each test starts the installed command in subprocesses against ``store_url`` (a SQLite
file, then a PostgreSQL database on the test server) or, where the test is about the
server itself, against PostgreSQL only: eight processes running runs at once, an owner
frozen past its lease as if on another host, a backend killed under a running run.
Racing resumes, kill -9 and ``--force`` are in test_crash.py, on both stores too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_crash import (
    CRASH_YAML,
    CRASHLIB,
    committed_steps,
    crash_env,
    flowrun,
    run_status,
    start,
    step_digests,
    wait_for,
)
from tests.support.installed import FLOWRUN
from tests.support.stores import db_now, execute, freeze, query

STALE_S = 1.0  # FLOWRUN_LEASE_STALE_S for the takeover test


@pytest.fixture
def procs() -> Any:
    """Every process a test starts; any still alive at the end is resumed, killed, waited."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait()


def reference(tmp_path: Path, wf: str, env: dict[str, str]) -> dict[str, Any]:
    """The uninterrupted result of ``wf``: one run on SQLite, straight through."""
    p = flowrun(
        "run", wf, "--db", str(tmp_path / "ref.db"), "--run-id", "ref", "--json", "-q",
        cwd=tmp_path, env={**env, "FLOWRUN_TEST_SLEEP": "0"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    return out


def show(db: str, run_id: str, cwd: Path) -> dict[str, Any]:
    p = flowrun("show", run_id, "--db", db, "--json", cwd=cwd)
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def assert_one_line_error(stderr: str) -> None:
    """A failure reads as flowrun's one error line (and its hint), never a traceback."""
    assert "Traceback" not in stderr and '  File "' not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("flowrun: error:")]
    assert len(errors) == 1, stderr


# 8 processes x runs ---------------------------------------------------------------------

WORKERS = 8
RUNS_EACH = 2


def test_eight_processes_running_runs_at_once_on_one_database_all_succeed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    (tmp_path / "crashlib.py").write_text(CRASHLIB)
    # a fan-out/fan-in, then 5 rounds of an 8-item foreach and a tally: 13 steps a run
    (tmp_path / "crash.yaml").write_text(CRASH_YAML.replace("state.round < 50", "state.round < 5"))
    env = {**crash_env(tmp_path / "tasks.log"), "FLOWRUN_TEST_SLEEP": "0.2"}
    ref = reference(tmp_path, "crash.yaml", crash_env(tmp_path / "ref.log"))
    ref_steps = step_digests(tmp_path / "ref.db", "ref")
    tasks_a_run = len((tmp_path / "ref.log").read_text().splitlines())
    assert len(ref_steps) == 13

    # each worker is one shell running its runs one after another, all workers at once
    loop = (
        f'for j in $(seq 1 {RUNS_EACH}); do "{FLOWRUN}" run crash.yaml --db "$DB"'
        ' --run-id "w$W-$j" -q || exit $?; done'
    )
    workers = []
    for w in range(WORKERS):
        err = open(tmp_path / f"worker{w}.err", "wb")  # noqa: SIM115 - a file, never a full pipe
        p = subprocess.Popen(
            ["sh", "-c", loop],
            cwd=tmp_path,
            env={**env, "DB": store_url, "W": str(w)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        err.close()
        procs.append(p)
        workers.append(p)
    for w, p in enumerate(workers):
        assert p.wait(timeout=300) == 0, (tmp_path / f"worker{w}.err").read_text()

    ids = {f"w{w}-{j}" for w in range(WORKERS) for j in range(1, RUNS_EACH + 1)}
    listed = flowrun("runs", "--db", store_url, "--json", "--limit", "100", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert {r["run_id"] for r in runs} == ids
    assert {r["status"] for r in runs} == {"succeeded"}
    for run_id in sorted(ids):
        got = show(store_url, run_id, tmp_path)
        assert got["state"] == ref["state"] and got["digest"] == ref["digest"], run_id
        assert step_digests(store_url, run_id) == ref_steps, run_id
    # every task of every run ran exactly once: no process ever picked up another's work
    lines = (tmp_path / "tasks.log").read_text().splitlines()
    per_task = {tuple(line.split(" ")) for line in lines}
    assert len(lines) == len(per_task) == len(ids) * tasks_a_run


# an owner frozen past its lease on another host -----------------------------------------

TRAIL_YAML = """
name: trail
state:
  n: {default: 0}
  by: {reducer: append}
nodes:
  tick:
    python: traillib:tick
    routes:
      - when: "state.n < 30"
        to: tick
      - to: END
"""

# Each step notes which process ran it. At n == 5 the first owner pauses long enough to
# be frozen inside its node, not inside a transaction.
TRAILLIB = """
import os
import time


def tick(state, ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{os.getpid()} {ctx.step}\\n")
    if state["n"] == 5 and not os.path.exists("taken"):
        open("paused", "w").close()
        time.sleep(3)
    time.sleep(0.02)
    return {"n": state["n"] + 1, "by": [state["n"], os.getpid()]}
"""


def heartbeat_age(db: str) -> float:
    """Seconds since the run's last heartbeat, on the store's own clock."""
    rows = query(db, "SELECT lease_heartbeat FROM runs WHERE run_id = 'h'")
    assert rows and rows[0][0] is not None
    return db_now(db) - float(rows[0][0])


def test_an_owner_frozen_past_its_lease_on_another_host_is_taken_over_and_fenced_out(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    (tmp_path / "traillib.py").write_text(TRAILLIB)
    (tmp_path / "trail.yaml").write_text(TRAIL_YAML)
    log = tmp_path / "tasks.log"
    env = {**crash_env(log), "FLOWRUN_LEASE_STALE_S": str(STALE_S)}
    old = start(procs, ["run", "trail.yaml", "--db", store_url, "--run-id", "h"], tmp_path, env)
    wait_for(lambda: (tmp_path / "paused").exists(), old)
    freeze(old.pid, store_url)
    # the lease now names another host: this host cannot check that owner's process, only
    # its heartbeat, which a frozen process no longer writes
    execute(store_url, "UPDATE runs SET lease_host = ? WHERE run_id = 'h'", "elsewhere.invalid")
    wait_for(lambda: heartbeat_age(store_url) > 2 * STALE_S, old)
    committed = committed_steps(store_url, "h")
    assert committed == 5  # steps 0-4; the owner is frozen inside step 5

    (tmp_path / "taken").touch()
    new = subprocess.Popen(
        [FLOWRUN, "resume", "h", "--db", store_url, "--json", "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = new.communicate(timeout=120)
    assert new.returncode == 0, err  # no --force: a silent owner elsewhere is abandoned
    assert json.loads(out)["state"]["n"] == 30
    assert old.poll() is None  # still there, frozen: nothing here may kill another host's

    os.kill(old.pid, signal.SIGCONT)  # it wakes inside step 5 and tries to go on
    assert old.wait(timeout=60) == 1
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "run h was taken over by another process" in stderr
    assert_one_line_error(stderr)

    # nothing the old owner did after the takeover is in the database
    state = show(store_url, "h", tmp_path)["state"]
    assert state["n"] == 30 and run_status(store_url, "h") == "succeeded"
    assert [n for n, _pid in state["by"]] == list(range(30))
    assert {pid for n, pid in state["by"] if n < 5} == {old.pid}
    assert {pid for n, pid in state["by"] if n >= 5} == {new.pid}
    assert [s for s, _ in step_digests(store_url, "h")] == list(range(30))
    ran = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert (old.pid, 5) in ran and (new.pid, 5) in ran  # step 5 ran twice, was kept once
    assert [step for pid, step in ran if pid == old.pid] == [0, 1, 2, 3, 4, 5]


# a backend killed under a running run ---------------------------------------------------


def test_a_backend_killed_mid_run_fails_cleanly_and_resume_gives_the_uninterrupted_result(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], pg_url: str
) -> None:
    (tmp_path / "crashlib.py").write_text(CRASHLIB)
    (tmp_path / "crash.yaml").write_text(CRASH_YAML)
    env = {**crash_env(tmp_path / "tasks.log"), "FLOWRUN_TEST_SLEEP": "0.3"}
    ref = reference(tmp_path, "crash.yaml", crash_env(tmp_path / "ref.log"))

    proc = start(procs, ["run", "crash.yaml", "--db", pg_url, "--run-id", "k"], tmp_path, env)
    wait_for(lambda: committed_steps(pg_url, "k") >= 10, proc)
    killed = query(
        pg_url,
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert killed and all(ok for _pid, ok in killed)
    assert proc.wait(timeout=60) == 1
    stderr = (tmp_path / "stderr.txt").read_text()
    assert_one_line_error(stderr)

    # no half step: the committed steps are whole and in order, and resume takes it from there
    steps = [s for s, _ in step_digests(pg_url, "k")]
    assert steps == list(range(len(steps))) and len(steps) >= 10
    p = flowrun("resume", "k", "--db", pg_url, "--json", "-q", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["status"] == "succeeded"
    assert got["state"] == ref["state"] and got["digest"] == ref["digest"]
    assert step_digests(pg_url, "k") == step_digests(tmp_path / "ref.db", "ref")
