"""Commands left running by a crashed flowrun are killed when a resume takes the run over.

``run:``/``shell:`` commands start in their own session; after ``kill -9`` of
flowrun they keep running. The store notes each command's process group as it
starts; the next holder of the run kills the groups whose owner died, but only a
process that still has the recorded start time (a reused pid is never killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flowrun.engine.errors import LeaseLost
from flowrun.engine.records import Frontier
from flowrun.engine.runtime.orphans import reap_orphans, start_time
from flowrun.engine.store import SQLiteStore
from flowrun.engine.store.base import ProcRecord
from flowrun.engine.store.leases import HOST

from tests.support.installed import FLOWRUN

SLOW_YAML = """
name: orphan
state:
  slow: {default: null}
nodes:
  slow:
    shell: "if [ -f fast ]; then echo fast; else echo $$ > started; sleep 60; fi"
    save: slow
"""


def group_running(pgid: int) -> bool:
    """True while a process that is not a zombie is in process group ``pgid``."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def proc_rows(db: Path) -> int:
    """Rows of commands in flight, or -1 while the table does not exist yet."""
    if not db.exists():
        return -1
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(c.execute("SELECT count(*) FROM procs").fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        c.close()


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        assert proc.poll() is None, f"flowrun exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.02)


def test_resume_after_kill_9_kills_the_command_the_dead_run_left_running(
    tmp_path: Path,
) -> None:
    (tmp_path / "wf.yaml").write_text(SLOW_YAML)
    db = tmp_path / "f.db"
    started = tmp_path / "started"
    env = dict(os.environ, NO_COLOR="1")
    pgid = 0
    err = open(tmp_path / "stderr.txt", "ab")  # noqa: SIM115 - a file, never a full pipe
    run = subprocess.Popen(
        [FLOWRUN, "run", "wf.yaml", "--db", str(db), "--run-id", "o"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    err.close()
    try:
        wait_until(lambda: started.exists() and started.read_text().strip() != "", run)
        pgid = int(started.read_text())
        wait_until(lambda: proc_rows(db) == 1, run)  # the command's group is noted
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert group_running(pgid)  # kill -9 of flowrun left the command running

        (tmp_path / "fast").touch()  # the node is fast from now on
        p = subprocess.run(
            [FLOWRUN, "resume", "o", "--db", str(db), "--json", "-q"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["state"] == {"slow": "fast"}
        assert not group_running(pgid)  # the orphan was killed before the node ran again
        assert proc_rows(db) == 0
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()
        if pgid and group_running(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "f.db")
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


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep 60` leading its own process group, as flowrun starts commands."""
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def record(
    store: SQLiteStore, token: int, pid: int, started: int, *, owner: int, owner_start: int
) -> None:
    store.record_proc(
        "r",
        token,
        ProcRecord("r", HOST, owner, owner_start, pid, pid, started, 0, "slow", time.time()),
    )


def test_a_recorded_pid_with_another_start_time_is_not_killed(
    store: SQLiteStore, sleeper: subprocess.Popen[bytes]
) -> None:
    old = store.take_lease("r").token
    started = start_time(sleeper.pid)
    assert started is not None
    record(store, old, sleeper.pid, started + 1, owner=dead_pid(), owner_start=1)
    new = store.take_lease("r", force=True).token
    assert reap_orphans(store, "r", new) == []
    assert sleeper.poll() is None  # the pid was reused by another process: left alone
    assert store.procs("r") == []  # the dead owner's row is gone all the same


def test_the_group_a_dead_owner_left_is_killed_and_one_of_a_live_owner_is_not(
    store: SQLiteStore, sleeper: subprocess.Popen[bytes]
) -> None:
    old = store.take_lease("r").token
    started = start_time(sleeper.pid)
    me = start_time(os.getpid())
    assert started is not None and me is not None
    # owner alive (this very process): its command is its own business
    record(store, old, sleeper.pid, started, owner=os.getpid(), owner_start=me)
    new = store.take_lease("r", force=True).token
    assert reap_orphans(store, "r", new) == []
    assert sleeper.poll() is None
    assert len(store.procs("r")) == 1

    # the same pid number in the owner column, but another start time: a dead owner
    with pytest.raises(LeaseLost):  # the old holder can note nothing any more
        record(store, old, sleeper.pid, started, owner=os.getpid(), owner_start=me + 1)
    record(store, new, sleeper.pid, started, owner=os.getpid(), owner_start=me + 1)
    newest = store.take_lease("r", force=True).token
    killed = reap_orphans(store, "r", newest)
    assert [(k.pid, k.node) for k in killed] == [(sleeper.pid, "slow")]
    assert sleeper.wait() == -signal.SIGKILL
    assert [p.owner_start for p in store.procs("r")] == [me]  # the live owner's row stays


def test_a_finished_command_leaves_no_row(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(SLOW_YAML)
    (tmp_path / "fast").touch()
    db = tmp_path / "f.db"
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", str(db), "--json", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"slow": "fast"}
    assert proc_rows(db) == 0
