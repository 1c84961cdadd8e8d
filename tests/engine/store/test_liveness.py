"""A run whose owner is alive on this host is never taken over without ``--force``.

The owner of a lease is a process: host, pid namespace, pid and its start time.
While it exists (stopped by SIGSTOP, or with its heartbeat starved by a long C
call) a plain resume is refused; ``--force`` kills it and its commands before
anything runs again. A heartbeat only decides for owners this host cannot check
(another host, another pid namespace). A write blocked by another process's write
lock names that process. The runs live in a SQLite file and (``store_url``) in a
PostgreSQL database, and so do the lease rows the store's rule is tested on below.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flowrun.engine.errors import ResumeRefused, StoreError
from flowrun.engine.records import Frontier
from flowrun.engine.runtime.orphans import start_time
from flowrun.engine.store import SQLiteStore, Store, open_store
from flowrun.engine.store.leases import HOST

from tests.support.installed import FLOWRUN
from tests.support.stores import db_now, execute, freeze, query

# Each copy of the command notes its pid, and first notes any earlier copy still running.
OVERLAP_YAML = """
name: overlap
state:
  slow: {default: null}
nodes:
  slow:
    shell: |
      for p in $(cat pids 2>/dev/null); do
        s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)
        if [ -n "$s" ] && [ "$s" != Z ]; then echo $p >> overlap; fi
      done
      echo $$ >> pids
      if [ -f fast ]; then echo fast; else sleep 60; fi
    save: slow
"""

HOG_PY = """
import os


def hog(state, ctx):
    if os.path.exists("fast"):
        return {"out": "fast"}
    open("started", "w").close()
    sum(range(10**12))  # one C call that never lets go of the GIL
    return {"out": "slow"}
"""

HOG_YAML = """
name: hog
state:
  out: {default: null}
nodes:
  hog:
    python: hoglib:hog
"""

STALE_S = 1.0  # FLOWRUN_LEASE_STALE_S for these tests


def lease(db: str) -> tuple[int | None, float | None]:
    """(pid, heartbeat) of the lease of the one run in ``db`` (None, None before it exists)."""
    rows = query(db, "SELECT lease_pid, lease_heartbeat FROM runs")
    return (None, None) if not rows else (rows[0][0], rows[0][1])


def heartbeat_stale(db: str) -> bool:
    beat = lease(db)[1]
    return beat is not None and db_now(db) - beat > 2 * STALE_S


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        assert proc is None or proc.poll() is None, f"flowrun exited early: {proc.returncode}"
        assert time.monotonic() < deadline, "it never got there"
        time.sleep(0.02)


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.fixture
def db(store_url: str) -> str:
    """Where the runs of these tests live: a SQLite file, then a PostgreSQL database."""
    return store_url


@pytest.fixture
def env() -> dict[str, str]:
    return dict(os.environ, NO_COLOR="1", FLOWRUN_LEASE_STALE_S=str(STALE_S))


@pytest.fixture
def owners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """flowrun processes a test starts; killed (and their command groups) at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait()


def start_run(
    tmp_path: Path, db: str, wf: str, env: dict[str, str], owners: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    err = open(tmp_path / "owner-stderr.txt", "ab")  # noqa: SIM115 - a file, never a full pipe
    p = subprocess.Popen(
        [FLOWRUN, "run", wf, "--db", db, "--run-id", "r"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    err.close()
    owners.append(p)
    return p


def resume(
    tmp_path: Path, db: str, env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, "resume", "r", "--db", db, "--json", "-q", *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def stopped_owner(
    tmp_path: Path, db: str, env: dict[str, str], owners: list[subprocess.Popen[bytes]]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A run SIGSTOPped inside its command, past the heartbeat window: (owner, command pid)."""
    (tmp_path / "wf.yaml").write_text(OVERLAP_YAML)
    owner = start_run(tmp_path, db, "wf.yaml", env, owners)
    pids = tmp_path / "pids"
    wait_until(lambda: pids.exists() and pids.read_text().strip() != "", owner)
    command = int(pids.read_text())
    wait_until(lambda: lease(db)[0] == owner.pid, owner)
    freeze(owner.pid, db)  # never inside a heartbeat's transaction: that would lock the run
    try:
        wait_until(lambda: heartbeat_stale(db))
        yield owner, command
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(owner.pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command, signal.SIGKILL)


def test_a_stopped_owner_past_the_heartbeat_window_keeps_its_run_from_a_plain_resume(
    tmp_path: Path,
    db: str,
    env: dict[str, str],
    stopped_owner: tuple[subprocess.Popen[bytes], int],
) -> None:
    owner, command = stopped_owner
    (tmp_path / "fast").touch()  # a rerun would be quick: only the refusal keeps it out
    p = resume(tmp_path, db, env)
    assert p.returncode == 3, p.stderr
    assert f"pid {owner.pid}" in p.stderr and "--force" in p.stderr
    assert running(owner.pid) and running(command)  # a refusal touches nothing
    assert (tmp_path / "pids").read_text().split() == [str(command)]  # ran once
    assert not (tmp_path / "overlap").exists()


def test_force_kills_a_stopped_owner_and_its_command_before_the_node_runs_again(
    tmp_path: Path,
    db: str,
    env: dict[str, str],
    stopped_owner: tuple[subprocess.Popen[bytes], int],
) -> None:
    owner, command = stopped_owner
    (tmp_path / "fast").touch()
    p = resume(tmp_path, db, env, "--force")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"slow": "fast"}
    assert owner.wait(timeout=30) == -signal.SIGKILL  # the stalled owner itself was stopped
    assert not running(command)
    assert len((tmp_path / "pids").read_text().split()) == 2  # the node ran again
    assert not (tmp_path / "overlap").exists()  # ... once the first copy was gone


def test_a_python_node_starving_the_heartbeat_keeps_its_run_from_a_plain_resume(
    tmp_path: Path, db: str, env: dict[str, str], owners: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "hoglib.py").write_text(HOG_PY)
    (tmp_path / "hog.yaml").write_text(HOG_YAML)
    owner = start_run(tmp_path, db, "hog.yaml", env, owners)
    wait_until(lambda: (tmp_path / "started").exists(), owner)
    wait_until(lambda: heartbeat_stale(db), owner)  # the GIL starves it
    (tmp_path / "fast").touch()
    p = resume(tmp_path, db, env)
    assert p.returncode == 3, p.stderr
    assert f"pid {owner.pid}" in p.stderr and "--force" in p.stderr
    assert owner.poll() is None


def test_force_kills_an_owner_whose_heartbeat_a_gil_holding_node_starves(
    tmp_path: Path, db: str, env: dict[str, str], owners: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "hoglib.py").write_text(HOG_PY)
    (tmp_path / "hog.yaml").write_text(HOG_YAML)
    owner = start_run(tmp_path, db, "hog.yaml", env, owners)
    wait_until(lambda: (tmp_path / "started").exists(), owner)
    wait_until(lambda: heartbeat_stale(db), owner)
    (tmp_path / "fast").touch()
    p = resume(tmp_path, db, env, "--force")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"out": "fast"}
    assert owner.wait(timeout=30) == -signal.SIGKILL


def test_force_on_a_running_owner_kills_its_command_before_the_node_runs_again(
    tmp_path: Path, db: str, owners: list[subprocess.Popen[bytes]]
) -> None:
    env = dict(os.environ, NO_COLOR="1")  # the 30 s window: the owner heartbeats all along
    (tmp_path / "wf.yaml").write_text(OVERLAP_YAML)
    owner = start_run(tmp_path, db, "wf.yaml", env, owners)
    pids = tmp_path / "pids"
    wait_until(lambda: pids.exists() and pids.read_text().strip() != "", owner)
    command = int(pids.read_text())
    try:
        wait_until(lambda: lease(db)[0] == owner.pid, owner)
        (tmp_path / "fast").touch()
        p = resume(tmp_path, db, env, "--force")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["state"] == {"slow": "fast"}
        assert not (tmp_path / "overlap").exists()  # its command was gone before the rerun
        assert owner.wait(timeout=60) == 1  # fenced out at its next write
        assert "was taken over by another process" in (tmp_path / "owner-stderr.txt").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command, signal.SIGKILL)


# the store's rule, with lease rows written as other processes would -----------------


@pytest.fixture
def store(db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("FLOWRUN_LEASE_STALE_S", str(STALE_S))
    s = open_store(db)
    s.create_run(
        "r",
        workflow_name="w",
        workflow_path="w.yaml",
        workflow_text="name: w",
        workflow_digest="d",
        state={},
        frontier=Frontier(),
        inputs={},
    )
    yield s
    s.close()


def set_owner(db: str, **cols: object) -> None:
    """Write lease columns as another process's ``take_lease`` would have."""
    execute(db, f"UPDATE runs SET {', '.join(f'lease_{k} = ?' for k in cols)}", *cols.values())


def my_pidns() -> str:
    return os.readlink("/proc/self/ns/pid")


def test_an_owner_in_another_pid_namespace_is_judged_by_its_heartbeat_alone(
    store: Store, db: str
) -> None:
    store.take_lease("r")
    # pid 1 in a sibling container with our hostname: our pid number, another namespace
    me = start_time(os.getpid())
    set_owner(db, host=HOST, pid=os.getpid(), start=me, pidns="pid:[1]", heartbeat=db_now(db))
    with pytest.raises(ResumeRefused, match=f"pid {os.getpid()}") as exc:
        store.take_lease("r")
    assert exc.value.hint and "--force" in exc.value.hint
    set_owner(db, heartbeat=db_now(db) - 2 * STALE_S)  # silent for too long: abandoned
    store.take_lease("r")


def test_an_owner_on_this_host_is_judged_by_its_process_not_its_heartbeat(
    store: Store, db: str
) -> None:
    store.take_lease("r")
    live = subprocess.Popen(["sleep", "60"])
    try:
        started = start_time(live.pid)
        assert started is not None
        stale = db_now(db) - 2 * STALE_S
        set_owner(db, pid=live.pid, start=started, pidns=my_pidns(), heartbeat=stale)
        with pytest.raises(ResumeRefused, match=f"pid {live.pid}"):
            store.take_lease("r")  # alive: a stale heartbeat does not matter
        assert store.run_is_live("r")
        # the same pid number with another start time: the owner died, its pid was reused
        set_owner(db, pid=live.pid, start=started + 1, pidns=my_pidns(), heartbeat=db_now(db))
        assert not store.run_is_live("r")
        store.take_lease("r")
    finally:
        live.kill()
        live.wait()


HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
open(sys.argv[2], "w").close()
time.sleep(120)
"""


def test_a_write_blocked_by_a_stopped_writer_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wf.yaml").write_text(OVERLAP_YAML)
    (tmp_path / "fast").touch()
    env = dict(os.environ, NO_COLOR="1")
    done = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", "f.db", "--run-id", "r", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "f.db"), str(ready)])
    try:
        wait_until(ready.exists)
        holder.send_signal(signal.SIGSTOP)
        p = subprocess.run(
            [FLOWRUN, "resume", "r", "--db", "f.db"],
            cwd=tmp_path,
            env=dict(env, FLOWRUN_BUSY_TIMEOUT="0.2"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 1, p.stderr
        assert "database is locked" in p.stderr
        assert f"pid {holder.pid}" in p.stderr and "stopped" in p.stderr
        assert "Traceback" not in p.stderr

        # the library says the same, as a StoreError with a hint
        monkeypatch.setenv("FLOWRUN_BUSY_TIMEOUT", "0.2")
        blocked = SQLiteStore(tmp_path / "f.db")
        with pytest.raises(StoreError, match=f"pid {holder.pid}") as exc:
            blocked.take_lease("r")
        assert exc.value.hint and f"kill -CONT {holder.pid}" in exc.value.hint
        blocked.close()
    finally:
        holder.kill()
        holder.wait()
