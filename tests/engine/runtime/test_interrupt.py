"""SIGINT while python nodes run (a lone one handed off, a foreach's on the pool) or commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flowrun.engine import SQLiteStore

from tests.support.installed import FLOWRUN

# a lone python node (its call handed off by the coordinator's thread), and a foreach of
# two on the threads pool (each call on its task's own thread, under the watchdog)
LONE = (
    """
    import os, time
    def slow(state, ctx):
        if os.path.exists("fast"):
            return {"n": 2}
        open("started-0", "w").close()
        time.sleep(60)
    """,
    """
    name: slow
    state: {n: {default: 0}}
    nodes:
      a: {set: {n: 1}, next: b}
      b: {python: "slowlib:slow"}
    """,
    1,
    {"n": 2},
)
POOLED = (
    """
    import os, time
    def slow(state, ctx):
        if os.path.exists("fast"):
            return ctx.item
        open(f"started-{ctx.item}", "w").close()
        time.sleep(60)
    """,
    """
    name: slow
    state:
      out: {default: [], reducer: append}
    config: {max_concurrency: 2}
    nodes:
      map:
        foreach: "{{ [0, 1] }}"
        python: slowlib:slow
        save: out
    """,
    2,
    {"out": [0, 1]},
)


@pytest.mark.parametrize(("lib", "wf", "calls", "final"), [LONE, POOLED], ids=["lone", "pooled"])
def test_sigint_abandons_a_long_python_node_after_the_grace_period_and_resume_finishes(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    lib: str,
    wf: str,
    calls: int,
    final: dict[str, object],
) -> None:
    write("slowlib.py", lib)
    write("wf.yaml", wf)
    db = str(tmp_path / "f.db")
    env = {"FLOWRUN_GRACE": "0.3", "PATH": str(Path(FLOWRUN).parent)}
    proc = subprocess.Popen(
        [FLOWRUN, "run", "wf.yaml", "--db", db, "--run-id", "s1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("started-*"))) < calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(list(tmp_path.glob("started-*"))) == calls
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # returns long before the node's 60 s sleep
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    shown = subprocess.run(
        [FLOWRUN, "show", "s1", "--db", db, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 130
    assert json.loads(shown.stdout)["status"] == "interrupted"
    (tmp_path / "fast").touch()
    done = subprocess.run(
        [FLOWRUN, "resume", "s1", "--db", db, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == final


SIGINT_WF = """
name: sig
state:
  out: {default: [], reducer: append}
config: {max_concurrency: 2, queue_depth: 0}
nodes:
  map:
    foreach: "{{ [0, 1] }}"
    shell: "echo $$ > item-{{ item }}.pid; sleep 2; echo {{ item }}"
    save: out
"""


@pytest.mark.parametrize("executor", ["threads", "processes", "dask"])
def test_ctrl_c_lets_running_commands_finish_within_the_grace_period_on_every_executor(
    write: Callable[[str, str], Path], tmp_path: Path, executor: str
) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: worker
    processes must not take it as their own (KeyboardInterrupt); the coordinator
    stops them, and what finishes within the grace period is saved."""
    write("sig.yaml", SIGINT_WF)
    db = tmp_path / "f.db"
    env = {**os.environ, "FLOWRUN_GRACE": "60"}
    proc = subprocess.Popen(
        [FLOWRUN, "run", "sig.yaml", "--db", str(db), "--run-id", "c", "--executor", executor],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell's job is
    )
    pids = [tmp_path / f"item-{i}.pid" for i in (0, 1)]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.read_text().strip() for p in pids):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" not in err and "internal error" not in err
    saved = SQLiteStore(db).load_task_results("c", 0)
    assert len(saved) == 2  # both commands finished within the grace period and were kept
