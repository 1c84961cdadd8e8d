"""A lone python task runs on the coordinator's own thread (``runtime/relay.py``): past
its timeout the call is abandoned, a new thread takes the baton (the task's retry,
then the run's next steps), and ``Engine.start`` returns wherever the call is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flowrun.engine import Engine, SQLiteStore, load_workflow
from flowrun.engine.nodes import python
from flowrun.engine.runtime import relay

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

STUCK_LIB = """
import os, threading, time
HERE = os.path.dirname(os.path.abspath(__file__))
threads = {}  # what ran where: "first", "retry", "next"

def stuck(state, ctx):
    if ctx.attempt == 1 and not os.path.exists(os.path.join(HERE, "fixed")):
        threads["first"] = threading.get_ident()
        open(os.path.join(HERE, "started"), "w").close()
        time.sleep(60)  # never looks at ctx.cancelled
        return {"n": -1}  # dropped: its task went on without it
    threads["retry"] = threading.get_ident()
    return {"n": 1}

def after(state, ctx):
    threads["next"] = threading.get_ident()
    return {"n": state["n"] + 1}
"""

# a: times out once (its first call never returns), then its retry; b: the next step
RETRY_THEN_NEXT = """
name: relay
state: {n: {default: 0}}
nodes:
  a: {python: 'relaylib:stuck', timeout: 300ms, retry: {max_attempts: 2, backoff: 0s}, next: b}
  b: {python: 'relaylib:after'}
"""


def test_a_lone_call_past_its_timeout_leaves_its_thread_and_the_run_goes_on(
    write: Write, tmp_path: Path
) -> None:
    write("relaylib.py", STUCK_LIB)
    wf = write("wf.yaml", RETRY_THEN_NEXT)
    store = SQLiteStore(tmp_path / "f.db")
    t0 = time.monotonic()
    r = Engine(store).start(load_workflow(wf))
    took = time.monotonic() - t0
    assert r.status == "succeeded" and r.state == {"n": 2}  # the retry's value
    assert took < 30  # the first call still sleeps
    threads = sys.modules["relaylib"].threads
    assert threads["retry"] == threads["next"]  # the baton's new thread ran the rest
    assert threads["first"] != threads["retry"]
    assert threading.get_ident() not in threads.values()  # the caller only waited
    (result,) = [t for t in store.task_results(r.run_id) if t.node == "a"]
    assert (result.status, result.attempts) == ("ok", 2)
    store.close()


def test_a_lone_call_that_never_returns_does_not_keep_the_process(
    write: Write, tmp_path: Path
) -> None:
    write("relaylib.py", STUCK_LIB)
    write(
        "wf.yaml",
        """
        name: stuck
        state: {n: {default: 0}}
        nodes:
          a: {python: 'relaylib:stuck', timeout: 500ms}
        """,
    )
    t0 = time.monotonic()
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", str(tmp_path / "f.db")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr
    assert "timed out after 0.5s; the call was abandoned" in p.stderr
    assert time.monotonic() - t0 < 30  # the call still sleeps: the process did not wait


PROGRAM = """
import sys
from pathlib import Path
from flowrun.engine import Engine, SQLiteStore, load_workflow

store = SQLiteStore(sys.argv[1])
engine = Engine(store)
wf = load_workflow("wf.yaml")
try:
    engine.start(wf, run_id="k")
except KeyboardInterrupt:
    Path("fixed").touch()
    r = engine.resume(wf, "k")  # the same engine drives the run again
    sys.exit(7 if r.status == "succeeded" else 8)
"""


def test_ctrl_c_in_a_program_without_handlers_stops_the_run_and_is_raised(
    write: Write, tmp_path: Path
) -> None:
    write("relaylib.py", STUCK_LIB)
    write("program.py", PROGRAM)
    write(
        "wf.yaml",
        """
        name: ctrlc
        state: {n: {default: 0}}
        nodes:
          a: {python: 'relaylib:stuck', next: b}
          b: {python: 'relaylib:after'}
        """,
    )
    db = str(tmp_path / "f.db")
    p = subprocess.Popen(
        [sys.executable, "program.py", db], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "started").exists()
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=30)
    # KeyboardInterrupt reached the program, and the engine's resume then finished the run
    assert p.returncode == 7, err
    assert time.monotonic() - t0 < 10  # no grace period: the call was abandoned at once
    store = SQLiteStore(db)
    assert store.load_latest("k").state == {"n": 2}
    store.close()


class Inline(Executor):
    """An executor that runs each task in ``submit``, on the coordinator's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def test_an_executor_that_runs_tasks_in_the_loop_still_hands_the_call_off(
    write: Write, tmp_path: Path
) -> None:
    """A task run inside the loop (not yielded by it) cannot be carried on by another
    thread: its call goes to a thread of its own, and its timeout and retry work."""
    write("relaylib.py", STUCK_LIB)
    wf = write("wf.yaml", RETRY_THEN_NEXT)
    store = SQLiteStore(tmp_path / "f.db")
    r = Engine(store, executor=Inline()).start(load_workflow(wf))
    assert r.status == "succeeded" and r.state == {"n": 2}
    store.close()


def test_no_thread_to_carry_the_run_on_ends_it_with_that_error(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that cannot start (none left) when a call is abandoned: ``Engine.start``
    raises at once, never waits for a loop no thread drives."""
    write("relaylib.py", STUCK_LIB)
    wf = write(
        "wf.yaml",
        """
        name: no-thread
        state: {n: {default: 0}}
        nodes:
          a: {python: 'relaylib:stuck', timeout: 300ms}
        """,
    )
    real = relay._thread

    def none_left(target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = real(target, *args)
        if args:  # a thread to take the loop over (given the rest of the task): none left

            def start() -> None:
                raise RuntimeError("can't start new thread")

            thread.start = start  # type: ignore[method-assign]
        return thread

    monkeypatch.setattr(relay, "_thread", none_left)
    store = SQLiteStore(tmp_path / "f.db")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        Engine(store).start(load_workflow(wf))
    assert time.monotonic() - t0 < 30  # the first call still sleeps
    store.close()


def test_calls_that_begin_and_end_between_two_looks_do_not_wake_the_watchdog() -> None:
    """The watchdog polls while calls keep coming: a call that begins and ends between
    two of its looks does not wake it (a chain's calls did, ~75 µs a chain step)."""
    watchdog = python._Watchdog()
    wakes = []
    real_set = watchdog.wake.set
    watchdog.wake.set = lambda: (wakes.append(1), real_set())[1]  # type: ignore[method-assign]
    flags = SimpleNamespace(stop=threading.Event(), abort=threading.Event(), grace_s=10.0)
    ctx: Any = SimpleNamespace(scope=flags, cancelled=threading.Event())
    for _ in range(200):  # ~0.3 s of quick calls, a look every 50 ms in between
        w = python._Watch(ctx, 60.0, lambda error: None)
        watchdog.add(w)
        watchdog.remove(w)
        time.sleep(0.0015)
    assert len(wakes) <= 2  # the first call, and none of the 199 after
