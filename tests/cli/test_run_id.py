"""``flowrun run FILE --run-id ID`` is idempotent: a retried CI job runs the same command.

Every case runs the installed ``flowrun`` in a subprocess against a real SQLite file;
crashes are real ``kill -9``. Tasks append a line to a log as they start, so the
tests count how often each one ran.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_crash import flowrun, run_status, start, wait_for

JOBLIB = """
import os


def _log(ctx):
    with open(os.environ["RUNID_LOG"], "a") as f:
        f.write(f"{ctx.step} {ctx.node} {ctx.index}\\n")


def prepare(state, ctx):
    _log(ctx)
    return list(range(6))


def square(state, ctx):
    _log(ctx)
    return ctx.item * ctx.item


def total(state, ctx):
    _log(ctx)
    return sum(state["squares"]) + state["offset"]


def broken(state, ctx):
    _log(ctx)
    raise RuntimeError("total is broken")
"""

# prepare → (square × 6 ‖ slow) → total; slow waits while the file `hold` exists
JOB_YAML = """
name: job
state:
  items: {default: []}
  offset: {default: 0}
  squares: {default: [], reducer: append}
  slow: {default: ""}
  total: {default: 0}
config:
  max_concurrency: 8
nodes:
  prepare:
    python: joblib:prepare
    save: items
    next: [square, slow]
  square:
    foreach: "{{ state.items }}"
    python: joblib:square
    save: squares
    next: total
  slow:
    shell: "echo run >> slow.log; while [ -f hold ]; do sleep 0.02; done; echo done"
    save: slow
    next: total
  total:
    needs: [square, slow]
    python: joblib:total
    save: total
"""

BROKEN_YAML = JOB_YAML.replace("joblib:total", "joblib:broken")

OTHER_YAML = "name: other\nstate: {n: {default: 0}}\nnodes:\n  a: {set: {n: 1}}\n"

ONCE = {
    (0, "prepare", "None"): 1,
    **{(1, "square", str(i)): 1 for i in range(6)},
    (2, "total", "None"): 1,
}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process a test starts; any still alive at the end is killed and waited for."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def job(tmp_path: Path) -> dict[str, str]:
    """The job's files in tmp_path; returns the environment its runs get."""
    (tmp_path / "joblib.py").write_text(JOBLIB)
    (tmp_path / "job.yaml").write_text(JOB_YAML)
    (tmp_path / "broken.yaml").write_text(BROKEN_YAML)
    (tmp_path / "other.yaml").write_text(OTHER_YAML)
    return dict(os.environ, RUNID_LOG=str(tmp_path / "tasks.log"), NO_COLOR="1")


def executions(tmp_path: Path) -> collections.Counter[tuple[int, str, str]]:
    log = tmp_path / "tasks.log"
    lines = log.read_text().splitlines() if log.exists() else []
    out: collections.Counter[tuple[int, str, str]] = collections.Counter()
    for line in lines:
        step, node, index = line.split(" ")
        out[(int(step), node, index)] += 1
    return out


def slow_runs(tmp_path: Path) -> int:
    log = tmp_path / "slow.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def held(tmp_path: Path, db: Path, run_id: str) -> bool:
    """The six squares are saved and slow has started, and waits (on ``hold``): saved
    squares alone do not say slow's command started (they can all finish first)."""
    return squares_saved(db, run_id) == 6 and slow_runs(tmp_path) == 1


def squares_saved(db: Path, run_id: str) -> int:
    if run_status(db, run_id) is None:
        return 0
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = c.execute(
            "SELECT count(*) FROM task_results WHERE run_id = ? AND node = 'square'"
            " AND status = 'ok'",
            (run_id,),
        ).fetchone()
    finally:
        c.close()
    return int(row[0])


def reference(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    """The --json object of one uninterrupted run of job.yaml (in a database of its own)."""
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("joblib.py", "job.yaml"):
        (ref / name).write_text((tmp_path / name).read_text())
    p = flowrun(
        "run", "job.yaml", "--db", "ref.db", "--run-id", "ref", "--json", "-q",
        cwd=ref, env={**env, "RUNID_LOG": str(ref / "tasks.log")},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    out: dict[str, object] = json.loads(p.stdout)
    assert out["state"] == {
        "items": [0, 1, 2, 3, 4, 5],
        "offset": 0,
        "squares": [0, 1, 4, 9, 16, 25],
        "slow": "done",
        "total": 55,
    }
    return out


def job_run(
    tmp_path: Path, env: dict[str, str], *args: str, file: str = "job.yaml"
) -> subprocess.CompletedProcess[str]:
    return flowrun("run", file, "--db", "f.db", *args, cwd=tmp_path, env=env)


def test_an_unknown_run_id_starts_the_run(tmp_path: Path, job: dict[str, str]) -> None:
    p = job_run(tmp_path, job, "--run-id", "j1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["run_id"] == "j1" and out["status"] == "succeeded"
    assert out["state"]["total"] == 55
    assert "run j1 (job) started" in p.stderr and "continuing" not in p.stderr
    assert executions(tmp_path) == ONCE


def test_a_succeeded_run_id_is_reported_with_its_json_object_and_nothing_runs(
    tmp_path: Path, job: dict[str, str]
) -> None:
    first = job_run(tmp_path, job, "--run-id", "j1", "--json")
    assert first.returncode == 0, first.stderr

    again = job_run(tmp_path, job, "--run-id", "j1", "--json")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout  # the very object, state and all
    assert json.loads(again.stdout)["status"] == "succeeded"
    (line,) = again.stderr.splitlines()
    assert line.startswith("run j1 already succeeded after 3 step(s) in ")
    assert line.endswith("; nothing was run")
    assert executions(tmp_path) == ONCE
    assert slow_runs(tmp_path) == 1


def test_flowrun_run_id_in_the_environment_names_the_run_and_a_retry_reports_it(
    tmp_path: Path, job: dict[str, str]
) -> None:
    env = {**job, "FLOWRUN_RUN_ID": "from-env"}
    p = job_run(tmp_path, env, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["run_id"] == "from-env"
    p = job_run(tmp_path, env, "--json")
    assert p.returncode == 0, p.stderr
    assert "run from-env already succeeded" in p.stderr
    assert executions(tmp_path) == ONCE


def test_a_failed_run_id_is_continued_with_the_fixed_file_given(
    tmp_path: Path, job: dict[str, str]
) -> None:
    ref = reference(tmp_path, job)
    p = job_run(tmp_path, job, "--run-id", "j1", file="broken.yaml")
    assert p.returncode == 1
    assert "total is broken" in p.stderr

    p = job_run(tmp_path, job, "--run-id", "j1", "--json")  # the same id, the fixed file
    assert p.returncode == 0, p.stderr
    assert "continuing run j1 (failed at step 2); resume semantics" in p.stderr.splitlines()
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    assert out["state"] == ref["state"] and out["digest"] == ref["digest"]
    # total ran again (broken, then fixed); prepare, the squares and slow did not
    assert executions(tmp_path) == {**ONCE, (2, "total", "None"): 2}
    assert slow_runs(tmp_path) == 1


def test_an_interrupted_run_id_is_continued_without_rerunning_finished_tasks(
    tmp_path: Path, job: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    env = {**job, "FLOWRUN_GRACE": "0"}  # the held command is killed at once
    (tmp_path / "hold").touch()
    proc = start(procs, ["run", "job.yaml", "--db", "f.db", "--run-id", "j1"], tmp_path, env)
    wait_for(lambda: held(tmp_path, tmp_path / "f.db", "j1"), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert run_status(tmp_path / "f.db", "j1") == "interrupted"

    (tmp_path / "hold").unlink()
    p = job_run(tmp_path, env, "--run-id", "j1", "--json")
    assert p.returncode == 0, p.stderr
    assert "continuing run j1 (interrupted at step 1); resume semantics" in p.stderr
    assert json.loads(p.stdout)["state"] == reference(tmp_path, job)["state"]
    assert executions(tmp_path) == ONCE
    assert slow_runs(tmp_path) == 2  # the one task that had not finished ran again


def test_kill_9_after_some_tasks_finished_then_the_same_command_finishes_the_run(
    tmp_path: Path, job: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    ref = reference(tmp_path, job)
    db = tmp_path / "f.db"
    args = ["run", "job.yaml", "--db", "f.db", "--run-id", "ci-7", "--json"]
    (tmp_path / "hold").touch()
    proc = start(procs, args, tmp_path, job)
    wait_for(lambda: held(tmp_path, db, "ci-7"), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert run_status(db, "ci-7") == "running"  # crashed: its owner is gone

    (tmp_path / "hold").unlink()
    p = flowrun(*args, cwd=tmp_path, env=job)  # the very same command
    assert p.returncode == 0, p.stderr
    assert "continuing run ci-7 (crashed at step 1); resume semantics" in p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    assert out["state"] == ref["state"] and out["digest"] == ref["digest"]
    assert executions(tmp_path) == ONCE  # no finished task ran again
    assert slow_runs(tmp_path) == 2


def test_kill_9_before_the_run_is_recorded_then_the_same_command_runs_it_and_a_retry_reports_it(
    tmp_path: Path, job: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    ref = reference(tmp_path, job)
    db = tmp_path / "f.db"
    args = ["run", "job.yaml", "--db", "f.db", "--run-id", "ci-8", "--json"]
    proc = start(procs, args, tmp_path, job)
    os.kill(proc.pid, signal.SIGSTOP)  # right after exec: long before the run row is written
    assert run_status(db, "ci-8") is None
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert run_status(db, "ci-8") is None and executions(tmp_path) == {}

    p = flowrun(*args, cwd=tmp_path, env=job)  # the retried job
    assert p.returncode == 0, p.stderr
    assert "run ci-8 (job) started" in p.stderr and "continuing" not in p.stderr
    first = json.loads(p.stdout)
    assert first["state"] == ref["state"] and first["digest"] == ref["digest"]

    again = flowrun(*args, cwd=tmp_path, env=job)  # and once more: nothing to do
    assert again.returncode == 0, again.stderr
    assert again.stdout == p.stdout
    assert executions(tmp_path) == ONCE


def test_a_run_id_a_live_process_holds_is_refused_with_exit_3(
    tmp_path: Path, job: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "f.db"
    (tmp_path / "hold").touch()
    owner = start(procs, ["run", "job.yaml", "--db", "f.db", "--run-id", "j1"], tmp_path, job)
    wait_for(lambda: held(tmp_path, db, "j1"), owner)

    p = job_run(tmp_path, job, "--run-id", "j1", "--json")
    assert p.returncode == 3
    assert f"run j1 is being executed by pid {owner.pid}" in p.stderr
    assert json.loads(p.stdout)["exit_code"] == 3
    assert "continuing" not in p.stderr and "Traceback" not in p.stderr

    (tmp_path / "hold").unlink()
    assert owner.wait(timeout=60) == 0  # the owner was left alone and finishes
    assert executions(tmp_path) == ONCE and slow_runs(tmp_path) == 1


def test_a_run_id_of_another_workflow_is_refused_with_exit_3_naming_it(
    tmp_path: Path, job: dict[str, str]
) -> None:
    assert job_run(tmp_path, job, "--run-id", "j1", file="other.yaml").returncode == 0
    p = job_run(tmp_path, job, "--run-id", "j1")
    assert p.returncode == 3
    assert "run id 'j1' belongs to workflow 'other', not 'job'" in p.stderr
    assert "Traceback" not in p.stderr
    assert executions(tmp_path) == {}


def test_if_exists_fail_refuses_every_run_id_that_exists(
    tmp_path: Path, job: dict[str, str]
) -> None:
    assert job_run(tmp_path, job, "--run-id", "bad", file="broken.yaml").returncode == 1
    assert job_run(tmp_path, job, "--run-id", "good").returncode == 0
    before = executions(tmp_path)
    for run_id in ("bad", "good"):
        p = job_run(tmp_path, job, "--run-id", run_id, "--if-exists", "fail")
        assert p.returncode == 3
        assert f"run id {run_id!r} already exists" in p.stderr
    assert executions(tmp_path) == before
    assert run_status(tmp_path / "f.db", "bad") == "failed"

    p = job_run(tmp_path, job, "--run-id", "x", "--if-exists", "maybe")
    assert p.returncode == 2
    assert "--if-exists must be continue or fail" in p.stderr


def test_inputs_given_again_on_a_continuation_must_equal_the_stored_ones(
    tmp_path: Path, job: dict[str, str]
) -> None:
    p = job_run(tmp_path, job, "--run-id", "j1", "--set", "offset=10", file="broken.yaml")
    assert p.returncode == 1
    before = executions(tmp_path)

    p = job_run(tmp_path, job, "--run-id", "j1", "--set", "offset=11")
    assert p.returncode == 2
    assert "run j1 was started with other inputs (differing: 'offset')" in p.stderr
    assert "hint:" in p.stderr and "Traceback" not in p.stderr
    assert executions(tmp_path) == before  # nothing ran
    assert run_status(tmp_path / "f.db", "j1") == "failed"

    p = job_run(tmp_path, job, "--run-id", "j1", "--set", "offset=10", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"]["total"] == 65

    (tmp_path / "in.json").write_text('{"offset": 10}')
    for again in (["--input", "in.json"], []):  # the same inputs, or none
        p = job_run(tmp_path, job, "--run-id", "j1", *again)
        assert p.returncode == 0, p.stderr
        assert "run j1 already succeeded" in p.stderr


def test_fork_run_id_refuses_an_id_that_exists(tmp_path: Path, job: dict[str, str]) -> None:
    assert job_run(tmp_path, job, "--run-id", "j1").returncode == 0
    assert job_run(tmp_path, job, "--run-id", "j2", file="broken.yaml").returncode == 1
    before = executions(tmp_path)
    for target in ("j1", "j2"):
        p = flowrun(
            "fork", "j1", "--from-step", "1", "--run-id", target, "--db", "f.db",
            cwd=tmp_path, env=job,
        )  # fmt: skip
        assert p.returncode == 3
        assert f"run id {target!r} already exists" in p.stderr
    assert run_status(tmp_path / "f.db", "j2") == "failed"
    assert executions(tmp_path) == before


def test_engine_start_by_id_raises_run_exists_unless_told_to_continue(tmp_path: Path) -> None:
    from flowrun.engine import Engine, RunExists, SQLiteStore, load_workflow

    (tmp_path / "other.yaml").write_text(OTHER_YAML)
    wf = load_workflow(str(tmp_path / "other.yaml"))
    store = SQLiteStore(str(tmp_path / "f.db"))
    try:
        first = Engine(store).start(wf, run_id="lib")
        assert (first.status, first.found) == ("succeeded", None)
        with pytest.raises(RunExists, match="run id 'lib' already exists"):
            Engine(store).start(wf, run_id="lib")
        again = Engine(store).start(wf, run_id="lib", if_exists="continue")
        assert (again.status, again.found, again.state) == ("succeeded", "succeeded", {"n": 1})
        assert again.to_json() == {**first.to_json(), "duration_s": again.to_json()["duration_s"]}
    finally:
        store.close()
