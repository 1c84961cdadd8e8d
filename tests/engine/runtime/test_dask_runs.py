"""Whole runs on real Dask clusters: ``--executor tcp://…`` and ``--executor dask``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.dask_procs import dask_command_cluster
from tests.support.installed import FLOWRUN

PIDS = """
name: pids
state:
  items: {default: %s}
  out: {default: [], reducer: append}
config: {max_concurrency: 2, queue_depth: 2}
nodes:
  map:
    foreach: "{{ state.items }}"
    python: pidlib:pid
    save: out
"""

PIDLIB = """
import os


def pid(state, ctx):
    return {"item": ctx.item, "pid": os.getpid()}
"""


def flowrun(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _worker_pids(address: str) -> set[int]:
    import distributed

    with distributed.Client(address, timeout=10) as client:
        return set(client.run(os.getpid).values())


@pytest.fixture
def pids_wf(write: Callable[[str, str], Path]) -> Path:
    write("pidlib.py", PIDLIB)
    return write("pids.yaml", PIDS % list(range(30)))


def _ran_on(report: dict[str, Any]) -> set[int]:
    out = report["state"]["out"]
    assert [o["item"] for o in out] == list(range(30))  # every task, merged in order
    return {o["pid"] for o in out}


def test_30_tasks_with_a_window_of_2_finish_on_a_scheduler_in_worker_processes(
    pids_wf: Path, dask_cluster: Any
) -> None:
    address = dask_cluster.scheduler_address
    p = flowrun(pids_wf.parent, "run", "pids.yaml", "--json", "--executor", address)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["status"] == "succeeded"
    ran_on = _ran_on(report)
    assert ran_on <= _worker_pids(address)  # in the cluster's worker processes only
    assert len(ran_on) == 2  # both workers took tasks


def test_30_tasks_finish_on_a_cluster_of_the_runs_own(pids_wf: Path) -> None:
    p = flowrun(pids_wf.parent, "run", "pids.yaml", "--json", "--executor", "dask")
    assert p.returncode == 0, p.stderr
    ran_on = _ran_on(json.loads(p.stdout))
    assert len(ran_on) == 2  # max_concurrency 2: a cluster of two worker processes
    for pid in ran_on:  # closed with the run
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_workflow_runs_on_dask_scheduler_and_two_dask_workers(
    pids_wf: Path, tmp_path: Path
) -> None:
    """The ``dask`` command as a user runs it: a scheduler, two workers, then flowrun."""
    with dask_command_cluster(tmp_path / "cluster", workers=2) as procs:
        workers = procs.worker_pids()
        p = flowrun(pids_wf.parent, "run", "pids.yaml", "--json", "--executor", procs.address)
        assert p.returncode == 0, p.stderr
        ran_on = _ran_on(json.loads(p.stdout))
        assert ran_on <= workers and len(ran_on) == 2
        assert os.getpid() not in ran_on
        assert procs.scheduler.poll() is None  # flowrun left the scheduler running


CRASH = """
name: crash
state:
  n: {default: 0}
nodes:
  first:
    set: {n: 1}
    next: slow
  slow:
    shell: |
      echo $$ > slow-$FLOWRUN_ATTEMPT.pid
      if [ -e go ]; then touch finished; else exec sleep 60; fi
"""


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def _wait_for(check: Callable[[], bool], bound: float = 60.0) -> bool:
    """``check()`` once it holds, polling; False if it never did within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _crash_mid_command(folder: Path, executor: str) -> int:
    """Start a run on ``executor``, kill -9 it while ``slow`` sleeps; the sleep's pid."""
    coordinator = subprocess.Popen(
        [FLOWRUN, "run", "crash.yaml", "--run-id", "c", "-q", "--executor", executor],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = folder / "slow-1.pid"
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
        pid = int(pid_file.read_text())
        assert _wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"))
    finally:
        coordinator.kill()  # SIGKILL
        coordinator.wait()
    return pid


@pytest.mark.parametrize("resume_on", ["dask", "threads"])
def test_kill_9_of_the_coordinator_on_a_scheduler_then_resume(
    write: Callable[[str, str], Path], dask_cluster: Any, resume_on: str
) -> None:
    wf = write("crash.yaml", CRASH)
    folder = wf.parent
    address = dask_cluster.scheduler_address
    sleeping = _crash_mid_command(folder, address)
    # the scheduler saw flowrun's client go and cancelled its task: the worker killed the group
    assert _wait_for(lambda: not _alive(sleeping))
    (folder / "go").touch()
    p = flowrun(
        folder, "resume", "c", "--json", "--executor", address if resume_on == "dask" else resume_on
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["status"] == "succeeded" and report["state"] == {"n": 1}
    assert (folder / "finished").exists()  # slow ran again, to its end


def test_kill_9_of_the_coordinator_of_its_own_cluster_then_resume_reaps_the_command(
    write: Callable[[str, str], Path],
) -> None:
    """The run's own cluster dies with it; the command lives on until resume kills its group."""
    wf = write("crash.yaml", CRASH)
    folder = wf.parent
    sleeping = _crash_mid_command(folder, "dask")
    time.sleep(1.0)  # the workers are gone by now (they exit as their parent does)
    assert _alive(sleeping)  # in a session of its own: not killed with its worker
    (folder / "go").touch()
    p = flowrun(folder, "resume", "c", "--json")
    assert p.returncode == 0, p.stderr
    assert not _alive(sleeping)  # killed by the takeover before slow ran again
    assert json.loads(p.stdout)["status"] == "succeeded"
    assert (folder / "finished").exists()


RERUN = """
name: rerun
state: {out: {default: null}}
config: {max_concurrency: 1}
nodes:
  call:
    python: rerunlib:call
    save: out
"""

RERUNLIB = """
import os
import pathlib


def call(state, ctx):
    ctx.record_llm_usage("gpt-4o-mini", 1000, 100)  # a paid call, in the ledger before going on
    marker = pathlib.Path(ctx.workflow_dir) / "died"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), 9)  # the worker dies after the call (OOM, a lost machine)
    return {"pid": os.getpid()}
"""


def test_a_task_dask_runs_again_after_its_worker_died_has_both_paid_calls_in_the_ledger(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write("rerunlib.py", RERUNLIB)
    write("rerun.yaml", RERUN)
    with dask_command_cluster(tmp_path / "cluster", workers=2) as procs:
        p = flowrun(tmp_path, "run", "rerun.yaml", "--json", "--executor", procs.address)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    dead = int((tmp_path / "died").read_text())
    assert report["state"]["out"]["pid"] != dead  # Dask ran it again on another process
    assert report["costs"]["calls"] == 2  # the dead execution's call and the re-run's
    assert report["costs"]["tokens_in"] == 2000
