"""A python call on a thread of the ``threads`` pool runs on that thread: past its
timeout, or after a signal's grace period, the watchdog abandons the thread, the task
carries on on a new one (its retry included), and the process never waits for it.
SIGINT on the pool: ``test_interrupt.py``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from flowrun.engine import Engine, SQLiteStore, load_workflow

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]


def test_a_timed_out_call_is_abandoned_and_its_retry_runs_on_a_new_thread(
    write: Write, tmp_path: Path
) -> None:
    write(
        "lib.py",
        """
        import os, threading, time
        HERE = os.path.dirname(os.path.abspath(__file__))
        def work(state, ctx):
            me = threading.current_thread().name
            if ctx.item == 0 and ctx.attempt == 1:
                seen = ctx.cancelled.wait(30)
                open(f"{HERE}/first-{me}", "w").write(str(seen))
                return "late"  # returns after its task went on: what it returns is dropped
            if ctx.item == 0:
                open(f"{HERE}/second-{me}", "w").close()
            return ctx.item * 10
        """,
    )
    wf = write(
        "wf.yaml",
        """
        name: abandon
        state:
          out: {default: [], reducer: append}
        config: {max_concurrency: 2}
        nodes:
          map:
            foreach: "{{ [0, 1, 2, 3] }}"
            python: lib:work
            timeout: 300ms
            retry: {max_attempts: 2, backoff: 10ms}
            save: out
        """,
    )
    store = SQLiteStore(tmp_path / "f.db")
    r = Engine(store).start(load_workflow(wf))
    assert r.status == "succeeded"
    assert r.state["out"] == [0, 10, 20, 30]  # the retry's value, never the late one
    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("first-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    (first,) = tmp_path.glob("first-*")
    (second,) = tmp_path.glob("second-*")
    assert first.read_text() == "True"  # ctx.cancelled was set when it was abandoned
    assert first.name[len("first-") :] != second.name[len("second-") :]  # another thread
    item0 = [t for t in store.task_results(r.run_id) if t.index == 0 and t.status == "ok"]
    assert [t.attempts for t in item0] == [2]
    store.close()


def test_a_call_that_ignores_cancellation_neither_holds_a_pool_slot_nor_the_process(
    write: Write, tmp_path: Path
) -> None:
    write(
        "lib.py",
        """
        import time
        def work(state, ctx):
            if ctx.item < 2:
                time.sleep(60)  # never looks at ctx.cancelled
            return ctx.item
        """,
    )
    write(
        "wf.yaml",
        """
        name: stuck
        state:
          out: {default: [], reducer: append}
        config: {max_concurrency: 2}
        nodes:
          map:
            foreach: "{{ range(8) | list }}"
            python: lib:work
            timeout: 500ms
            save: out
        """,
    )
    db = str(tmp_path / "f.db")
    t0 = time.monotonic()
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", db, "--run-id", "st"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - t0
    assert p.returncode == 1, p.stderr
    assert "timed out after 0.5s; the call was abandoned" in p.stderr
    assert took < 30  # both calls still sleep: the process did not wait for them
    store = SQLiteStore(db)
    ok = sorted(t.index for t in store.task_results("st") if t.status == "ok")
    store.close()
    assert ok == [2, 3, 4, 5, 6, 7]  # both slots were taken over by new threads
