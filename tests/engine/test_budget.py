"""Once a run's budget is spent, no task starts: not an LLM call, not a Python or shell node.

Each python node here writes a line to a side file and then reports one call of a
priced model through ``ctx.record_llm_usage`` ($1 a call against a $0.50 budget),
so the first task to finish spends the budget. The pool has one worker and a deep
queue: every other task is already queued on the executor when that happens.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flowrun.engine.records import Task
from flowrun.engine.runtime.window import Window

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]
ITEMS = list(range(8))

WORKFLOW = """
    name: budget-gap
    state:
      items: {default: %s}
      done: {default: [], reducer: append}
    config:
      max_concurrency: 1
      queue_depth: %d
    nodes:
      work:
        foreach: "{{ state.items }}"
        python: spend:work
        save: done
"""

SPEND = """
import pathlib

LOG = pathlib.Path(__file__).with_name("executions.log")


def work(state, ctx):
    with LOG.open("a") as f:
        f.write(f"{ctx.item}\\n")
    ctx.record_llm_usage("test-model", 1_000_000, 0)  # $1.00
    return ctx.item
"""

PRICING = "test-model: {input: 1.0, output: 0}\n"


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # the timeout only turns a hang into a failure; nothing here is timed
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def executions(tmp_path: Path) -> list[int]:
    log = tmp_path / "executions.log"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.mark.parametrize("queue_depth", [1024, 1], ids=["deep queue", "queue of one"])
def test_no_task_starts_after_the_budget_is_spent_and_resume_runs_each_item_once(
    write: Write, tmp_path: Path, queue_depth: int
) -> None:
    wf = write("wf.yaml", WORKFLOW % (json.dumps(ITEMS), queue_depth))
    write("spend.py", SPEND)
    write("pricing.yaml", PRICING)
    db = str(tmp_path / "f.db")
    common = ("--db", db, "--pricing", "pricing.yaml", "--json")

    p = flowrun("run", str(wf), *common, "--max-cost", "0.5", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "failed" and "budget exceeded" in out["error"]
    # the task whose usage crossed the budget ran; none started after it
    assert executions(tmp_path) == [0]
    assert out["costs"]["calls"] == 1
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT status, count(*) FROM task_results GROUP BY status").fetchall()
    finally:
        conn.close()
    assert rows == [("ok", 1)]  # skipped tasks are neither results nor failures

    more = flowrun("resume", "latest", *common, "--max-cost", "100", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    done = json.loads(more.stdout)
    assert done["status"] == "succeeded"
    assert done["state"]["done"] == ITEMS  # merged in task order, item 0 from the first run
    assert sorted(executions(tmp_path)) == ITEMS  # each item executed exactly once overall
    assert done["costs"]["calls"] == len(ITEMS)
    assert done["costs"]["total_usd"] == pytest.approx(len(ITEMS))


RETRYING = """
    name: budget-retry
    state: {out: {default: null}}
    nodes:
      flaky:
        python: flaky:work
        retry: {max_attempts: 3, backoff: 0s}
        save: out
"""

FLAKY = """
import pathlib

LOG = pathlib.Path(__file__).with_name("executions.log")


def work(state, ctx):
    with LOG.open("a") as f:
        f.write(f"{ctx.attempt}\\n")
    ctx.record_llm_usage("test-model", 1_000_000, 0)  # $1.00
    if ctx.attempt == 1:
        raise RuntimeError("flaky")
    return "ok"
"""


def test_no_retry_starts_after_the_budget_is_spent(write: Write, tmp_path: Path) -> None:
    wf = write("wf.yaml", RETRYING)
    write("flaky.py", FLAKY)
    write("pricing.yaml", PRICING)
    common = ("--db", str(tmp_path / "f.db"), "--pricing", "pricing.yaml", "--json")

    p = flowrun("run", str(wf), *common, "--max-cost", "0.5", cwd=tmp_path)
    assert p.returncode == 1 and "budget exceeded" in json.loads(p.stdout)["error"], p.stderr
    assert executions(tmp_path) == [1]  # the failed attempt was not retried

    more = flowrun("resume", "latest", *common, "--max-cost", "100", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["state"]["out"] == "ok"
    assert executions(tmp_path) == [1, 1, 2]  # the step ran again: a new task, retried once


def test_a_queued_task_cancelled_for_the_budget_frees_its_place_in_the_window() -> None:
    window = Window(max_running=1, queue_depth=1)
    running, release = threading.Event(), threading.Event()

    def task() -> str:
        running.set()
        release.wait()
        return "ok"

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            window.submit()
            first = pool.submit(task)
            assert running.wait(10)
            window.started("first")  # its TaskStarted effect arrived
            window.submit()
            second = pool.submit(task)
            assert window.full()  # one running, one queued: the window is full
            assert second.cancel()  # what the coordinator does once the budget is spent
            assert second.done()  # so it arrives among the completed futures at once
            window.complete("second")  # … which the coordinator collects as dropped
            window.settle(["second"])
            # the cancelled task never starts; were it still counted as queued, the
            # coordinator's `while window.full()` would wait for it forever
            assert not window.full()
            assert window.running() == 1
        finally:
            release.set()
        assert first.result() == "ok"


def test_observers_hear_every_queued_task_start_or_drop_when_the_budget_runs_out(
    write: Write, tmp_path: Path
) -> None:
    """Progress and the queue gauge must not keep counting tasks that will never start."""
    from flowrun.engine import BudgetExceeded, Engine, Observer, Settings, SQLiteStore
    from flowrun.engine import load_workflow as load
    from flowrun.engine.costs import parse_prices

    class Counts(Observer):
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.queued = self.started = self.dropped = 0

        def task_queued(self, step: int, task: Task) -> None:
            with self.lock:
                self.queued += 1

        def task_started(self, step: int, task: Task) -> None:
            with self.lock:
                self.started += 1

        def task_dropped(self, step: int, task: Task) -> None:
            with self.lock:
                self.dropped += 1

    write("spend.py", SPEND)  # before the load: validate reads the module
    wf = load(write("wf.yaml", WORKFLOW % (json.dumps(ITEMS), 1024)))
    counts = Counts()
    settings = Settings(max_cost_usd=0.5, prices=parse_prices(PRICING, "pricing.yaml"))
    engine = Engine(SQLiteStore(tmp_path / "f.db"), settings=settings, observer=counts)
    with pytest.raises(BudgetExceeded):
        engine.start(wf)
    assert counts.started >= 1
    assert counts.queued == counts.started + counts.dropped
    assert counts.dropped >= 1
