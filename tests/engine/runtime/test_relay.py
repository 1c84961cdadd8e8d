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
from pathlib import Path

from flowrun.engine import Engine, SQLiteStore, load_workflow

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


def test_a_lone_call_past_its_timeout_leaves_its_thread_and_the_run_goes_on(
    write: Write, tmp_path: Path
) -> None:
    write("relaylib.py", STUCK_LIB)
    wf = write(
        "wf.yaml",
        """
        name: relay
        state: {n: {default: 0}}
        nodes:
          a: {python: 'relaylib:stuck', timeout: 300ms, retry: {max_attempts: 2, backoff: 0s},
              next: b}
          b: {python: 'relaylib:after'}
        """,
    )
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
from flowrun.engine import Engine, SQLiteStore, load_workflow

store = SQLiteStore(sys.argv[1])
try:
    Engine(store).start(load_workflow("wf.yaml"), run_id="k")
except KeyboardInterrupt:
    sys.exit(7)
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
    assert p.returncode == 7, err  # KeyboardInterrupt reached the program
    assert time.monotonic() - t0 < 10  # no grace period: the call was abandoned at once
    (tmp_path / "fixed").touch()
    r = subprocess.run(
        [FLOWRUN, "resume", "k", "--db", db], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    store = SQLiteStore(db)
    assert store.load_latest("k").state == {"n": 2}
    store.close()
