"""The same runs on every executor: threads, and worker processes fed plain task specs.

Each test takes the ``executor_kind`` fixture (``tests/conftest.py``), so an executor
added there runs them all. Workers get the workflow by digest, the state as plain
data and the drive's effects channel; nothing of the coordinator's is shared.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flowrun.engine import Engine, Settings, SQLiteStore, load_workflow
from flowrun.engine.costs import parse_prices
from flowrun.engine.errors import BudgetExceeded, Interrupted, RunFailed, UsageError
from flowrun.engine.runtime import RunResult

from tests.support.executors import worker_env

Write = Callable[[str, str], Path]

LIB = """
import os
import pathlib
import time


def square(state, ctx):
    return {"i": ctx.index, "sq": ctx.item * ctx.item, "seen": len(state["items"])}


def total(state, ctx):
    return {"total": sum(x["sq"] for x in state["squares"])}


def flaky(state, ctx):
    tries = pathlib.Path("tries")
    n = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(n))
    if n < 2:
        raise RuntimeError(f"flaky on try {n}")
    return {"flaky": n}


def chatty(state, ctx):
    print("from python", ctx.index)
    return None


def spend(state, ctx):
    ctx.record_llm_usage("test-model", 1_000_000, 0)  # $1.00
    return ctx.item


def pid(state, ctx):
    return {"i": ctx.index, "pid": os.getpid()}


def timed(state, ctx):
    t0 = time.time()
    time.sleep(0.4)
    return {"item": ctx.item, "t0": t0, "t1": time.time()}


def slow(state, ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.index} {os.getpid()}\\n")
    time.sleep(0.05)
    return ctx.item * 10
"""

DETERMINISM = """
name: det
state:
  items: {default: [3, 1, 4, 1, 5, 9, 2, 6]}
  squares: {default: [], reducer: append}
  total: {default: 0}
  big: {default: null}
config: {max_concurrency: 4}
nodes:
  map:
    foreach: "{{ state.items }}"
    python: exlib:square
    save: squares
    next: sum
  sum:
    python: exlib:total
    routes:
      - when: "state.total > 100"
        to: big
      - to: END
  big:
    shell: "echo '{\\"big\\": {{ state.total }}}'"
    output: json
"""


def start(path: Path, db: Path, kind: str) -> tuple[Engine, RunResult]:
    engine = Engine(SQLiteStore(db), settings=Settings(executor=kind))
    return engine, engine.start(load_workflow(str(path)))


def test_a_run_has_the_same_state_and_digest_on_every_executor(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    write("exlib.py", LIB)
    wf = write("det.yaml", DETERMINISM)
    _, res = start(wf, tmp_path / "a.db", executor_kind)
    _, base = start(wf, tmp_path / "b.db", "threads")
    assert res.state == base.state
    assert res.digest == base.digest
    assert res.state["big"] == 173
    assert [s["i"] for s in res.state["squares"]] == list(range(8))


def test_no_more_than_max_concurrency_tasks_run_at_once_on_any_executor(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    """max_concurrency 1 with a queue of 2: the session's Dask cluster has two workers,
    and still runs one task at a time (queued tasks wait on the coordinator)."""
    write("exlib.py", LIB)
    wf = write(
        "conc.yaml",
        """
        name: conc
        state: {out: {default: [], reducer: append}}
        config: {max_concurrency: 1, queue_depth: 2}
        nodes:
          map:
            foreach: "{{ range(5) | list }}"
            python: exlib:timed
            save: out
        """,
    )
    _, res = start(wf, tmp_path / "f.db", executor_kind)
    out = res.state["out"]
    assert [o["item"] for o in out] == list(range(5))
    spans = sorted((o["t0"], o["t1"]) for o in out)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin  # each task started after the one before it ended


def test_a_failed_attempt_is_retried_and_its_retry_recorded(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    write("exlib.py", LIB)
    wf = write(
        "retry.yaml",
        """
        name: retry
        state: {flaky: {default: 0}}
        nodes:
          f:
            python: exlib:flaky
            retry: {max_attempts: 3, backoff: 10ms, jitter: false}
        """,
    )
    engine, res = start(wf, tmp_path / "f.db", executor_kind)
    assert res.state == {"flaky": 2}
    events = engine.store.events(res.run_id)
    retried = [e for e in events if e.type == "task_retried"]
    assert len(retried) == 1 and "flaky on try 1" in (retried[0].error or "")
    done = [e for e in events if e.type == "task_succeeded"]
    assert [e.attempt for e in done] == [2]


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_command_past_its_timeout_fails_and_its_process_group_is_killed(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    wf = write(
        "slow.yaml",
        """
        name: slow
        state: {}
        nodes:
          wait:
            shell: "sleep 30 & echo $! > child; wait"
            timeout: 1s
        """,
    )
    with pytest.raises(RunFailed, match=r"timed out after 1s; killed its process group"):
        start(wf, tmp_path / "f.db", executor_kind)
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 10  # not a timed assertion: waits for a reaper to act
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running(child)


def test_what_commands_and_python_calls_print_is_captured(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    write("exlib.py", LIB)
    wf = write(
        "print.yaml",
        """
        name: print
        state: {}
        nodes:
          cmd:
            shell: "echo to-out; echo to-err >&2"
            next: py
          py:
            foreach: [0, 1]
            python: exlib:chatty
        """,
    )
    engine, res = start(wf, tmp_path / "f.db", executor_kind)
    outputs = engine.store.task_outputs(res.run_id)
    seen = {(o.node, o.index): o.chunks for o in outputs}
    assert seen[("cmd", None)] == (("stdout", "to-out\n"), ("stderr", "to-err\n"))
    assert seen[("py", 0)] == (("stdout", "from python 0\n"),)
    assert seen[("py", 1)] == (("stdout", "from python 1\n"),)


def test_a_spent_budget_stops_the_run_with_every_call_in_the_ledger_and_resume_ends_it(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    write("exlib.py", LIB)
    wf = write(
        "spend.yaml",
        """
        name: spend
        state: {done: {default: [], reducer: append}}
        config: {max_concurrency: 1, queue_depth: 1}
        nodes:
          work:
            foreach: [0, 1, 2, 3, 4, 5]
            python: exlib:spend
            save: done
        """,
    )
    prices = parse_prices("test-model: {input: 1.0, output: 0}\n", "pricing.yaml")
    db = tmp_path / "f.db"
    engine = Engine(
        SQLiteStore(db), settings=Settings(executor=executor_kind, max_cost_usd=1.5, prices=prices)
    )
    with pytest.raises(BudgetExceeded):
        engine.start(load_workflow(str(wf)), run_id="b")
    calls = SQLiteStore(db).llm_calls("b")
    assert 2 <= len(calls) < 6  # the call that passed the budget is counted; no more start
    saved = SQLiteStore(db).load_task_results("b", 0)
    assert len(calls) == len(saved)  # every billed task's result was kept for the resume
    more = Engine(SQLiteStore(db), settings=Settings(max_cost_usd=100, prices=prices))
    res = more.resume(load_workflow(str(wf)), "b")
    assert res.state["done"] == [0, 1, 2, 3, 4, 5]
    assert len(SQLiteStore(db).llm_calls("b")) == 6  # each item billed once


def test_thirty_tasks_in_a_window_of_four_run_in_worker_processes(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write("exlib.py", LIB)
    wf = write(
        "pids.yaml",
        """
        name: pids
        state: {out: {default: [], reducer: append}}
        config: {max_concurrency: 2, queue_depth: 2}
        nodes:
          each:
            foreach: "{{ range(30) | list }}"
            python: exlib:pid
            save: out
        """,
    )
    _, res = start(wf, tmp_path / "f.db", "processes")
    out = res.state["out"]
    assert [o["i"] for o in out] == list(range(30))
    pids = {o["pid"] for o in out}
    assert os.getpid() not in pids  # not one ran in the coordinator
    assert 1 <= len(pids) <= 2  # max_concurrency worker processes
    # each report waited for its task's effects, which travel apart from it
    assert not [r for r in caplog.records if "never arrived" in r.getMessage()]


KILLED = """
import sys
from flowrun.engine import Engine, Settings, SQLiteStore, load_workflow

wf = load_workflow(sys.argv[1])
Engine(SQLiteStore(sys.argv[2]), settings=Settings(executor="processes")).start(wf, run_id="k")
"""


def test_kill_9_of_a_coordinator_on_processes_then_resume_on_threads_gives_the_whole_result(
    write: Write, tmp_path: Path
) -> None:
    write("exlib.py", LIB)
    wf = write(
        "long.yaml",
        """
        name: long
        state: {out: {default: [], reducer: append}}
        config: {max_concurrency: 2, queue_depth: 2}
        nodes:
          each:
            foreach: "{{ range(60) | list }}"
            python: exlib:slow
            save: out
        """,
    )
    db, log = tmp_path / "f.db", tmp_path / "tasks.log"
    env = dict(os.environ, FLOWRUN_TEST_LOG=str(log))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(wf), str(db)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (not log.exists() or len(log.read_text().splitlines()) < 10) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workers = {int(line.split()[1]) for line in log.read_text().splitlines()}
    assert proc.pid not in workers  # the tasks ran in worker processes
    deadline = time.monotonic() + 10  # orphaned workers notice their coordinator is gone
    while any(running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(p) for p in workers)
    before = len(log.read_text().splitlines())
    assert before < 60

    os.environ["FLOWRUN_TEST_LOG"] = str(log)
    try:
        res = Engine(SQLiteStore(db)).resume(load_workflow(str(wf)), "k")
    finally:
        del os.environ["FLOWRUN_TEST_LOG"]
    assert res.status == "succeeded"
    assert res.state["out"] == [i * 10 for i in range(60)]
    ran = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert sorted(set(ran)) == list(range(60))  # every item ran, at least once
    assert len(ran) - 60 <= 4  # re-run at most the window (max_concurrency + queue_depth)
    assert json.loads(json.dumps(res.state)) == res.state


def test_an_unknown_executor_is_refused_before_the_run_is_recorded(
    write: Write, tmp_path: Path
) -> None:
    write("exlib.py", LIB)
    wf = write("det.yaml", DETERMINISM)
    store = SQLiteStore(tmp_path / "f.db")
    with pytest.raises(UsageError, match="unknown executor 'nope'") as caught:
        Engine(store, settings=Settings(executor="nope")).start(load_workflow(str(wf)))
    assert caught.value.hint == "one of: threads, processes, dask, tcp://HOST:PORT"
    assert store.list_runs() == []


def test_a_stop_reaches_running_and_queued_tasks_and_resume_runs_only_the_rest(
    write: Write, tmp_path: Path, executor_kind: str
) -> None:
    write("exlib.py", LIB)
    wf = write(
        "stop.yaml",
        """
        name: stop
        state: {out: {default: [], reducer: append}}
        config: {max_concurrency: 2, queue_depth: 2}
        nodes:
          each:
            foreach: "{{ range(40) | list }}"
            python: exlib:slow
            save: out
        """,
    )
    log, db = tmp_path / "tasks.log", tmp_path / "f.db"
    with worker_env(executor_kind, "FLOWRUN_TEST_LOG", str(log)):

        def stop_after_three(engine: Engine, out: object) -> None:
            if len(log.read_text().splitlines()) >= 3:
                engine.stop.set()  # what the SIGINT handler does

        engine = Engine(
            SQLiteStore(db), settings=Settings(executor=executor_kind), after_task=stop_after_three
        )
        with pytest.raises(Interrupted):
            engine.start(load_workflow(str(wf)), run_id="s")
        first = len(log.read_text().splitlines())
        assert first < 40  # queued tasks never started
        saved = SQLiteStore(db).load_task_results("s", 0)
        assert len(saved) >= 3  # what finished was kept
        res = Engine(SQLiteStore(db), settings=Settings(executor=executor_kind)).resume(
            load_workflow(str(wf)), "s"
        )
    assert res.state["out"] == [i * 10 for i in range(40)]
    ran = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert sorted(set(ran)) == list(range(40))
    assert len(ran) - 40 <= first - len(saved)  # only unsaved tasks ran twice
