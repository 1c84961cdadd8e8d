"""kill -9 in the middle of a large ``foreach``: how many finished tasks run again.

A task leaves the dispatch window only once its result is committed, so after
``kill -9`` at most ``max_concurrency + queue_depth`` finished tasks run again
(README, durability). Each task appends its index to a side file, so the test
counts executions for real. Two tasks stall the run's commits the way a busy disk
or another process writing the same database does: by holding its write lock
while the other tasks keep finishing.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.installed import FLOWRUN

ITEMS = 4_000
MAX_CONCURRENCY = 4
QUEUE_DEPTH = 16
WINDOW = MAX_CONCURRENCY + QUEUE_DEPTH

# Task 400 holds the write lock for a second: the coordinator's next commit waits
# while the other workers finish every task handed out. The first task to start
# after that holds the lock until the kill: the commit after the stalled one waits
# too. Each stall happens once (a claim file), so the resume runs straight through.
WINDOWLIB = """
import os
import sqlite3
import time


def _claim(name):
    try:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _hold_lock(seconds):
    c = sqlite3.connect(os.environ["FLOWRUN_TEST_DB"], isolation_level=None, timeout=30)
    c.execute("BEGIN IMMEDIATE")
    time.sleep(seconds)
    c.execute("ROLLBACK")
    c.close()


def work(state, ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.index}\\n")
    if os.path.exists("released") and _claim("second"):
        _hold_lock(600)
    if ctx.index == 400 and _claim("first"):
        _hold_lock(1.0)
        _claim("released")
    return ctx.item
"""

WINDOW_YAML = f"""
name: window
state:
  count: {{default: {ITEMS}}}
  out: {{default: [], reducer: append}}
config: {{max_concurrency: {MAX_CONCURRENCY}, queue_depth: {QUEUE_DEPTH}}}
nodes:
  map:
    foreach: "{{{{ range(state.count) | list }}}}"
    python: windowlib:work
    save: out
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def lines(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


def settle(log: Path, proc: subprocess.Popen[bytes]) -> None:
    """Wait until no task has run for a while: the commits are stalled for good."""
    deadline = time.monotonic() + 60
    while not (Path(log.parent / "second").exists()):
        assert proc.poll() is None, f"flowrun exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the second stall"
        time.sleep(0.01)
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 0.5:
        assert proc.poll() is None, f"flowrun exited early with {proc.returncode}"
        n = lines(log)
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.02)


def test_kill_9_mid_foreach_reruns_at_most_the_dispatch_window_of_finished_tasks(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "windowlib.py").write_text(WINDOWLIB)
    (tmp_path / "window.yaml").write_text(WINDOW_YAML)
    log, db = tmp_path / "window.log", tmp_path / "window.db"
    env = dict(os.environ, FLOWRUN_TEST_LOG=str(log), FLOWRUN_TEST_DB=str(db), NO_COLOR="1")
    proc = subprocess.Popen(
        [FLOWRUN, "run", "window.yaml", "--db", str(db), "--run-id", "w", "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    settle(log, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    first_life = lines(log)
    assert first_life < ITEMS, "the kill landed after every task had run"

    p = subprocess.run(
        [FLOWRUN, "resume", "w", "--db", str(db), "--json", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"]["out"] == list(range(ITEMS))

    runs = collections.Counter(int(x) for x in log.read_text().split())
    assert set(runs) == set(range(ITEMS))
    reran = sum(n - 1 for n in runs.values())
    print(f"{first_life} tasks ran before the kill; {reran} ran again on resume", file=sys.stderr)
    assert reran <= WINDOW
