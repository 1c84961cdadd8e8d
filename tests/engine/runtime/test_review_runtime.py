"""Runtime review: results that must survive a step that is not committed, signals and
queued tasks, resumes under a changed workflow, and the event stream's attempt counts."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import (
    Engine,
    Interrupted,
    Observer,
    RunFailed,
    Settings,
    SQLiteStore,
    UsageError,
    load_workflow,
)
from flowrun.engine.records import Task

Write = Callable[[str, str], Path]

COUNT_LIB = """
from pathlib import Path

CALLS = Path(__file__).parent / "calls.txt"

def a(state, ctx):
    with CALLS.open("a") as f:
        f.write("a\\n")
    return {"x": 1}

def b(state, ctx):
    with CALLS.open("a") as f:
        f.write("b\\n")
    return {"x": 2}
"""


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.txt").read_text().split()


def test_results_of_a_step_failing_at_its_merge_are_kept_so_resume_does_not_rerun_them(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write("countlib.py", COUNT_LIB)
    body = """
        name: clash
        CONFIG
        state: {x: {default: 0}}
        start: [a, b]
        nodes:
          a: {python: "countlib:a"}
          b: {python: "countlib:b"}
        """
    wf = write("wf.yaml", body.replace("CONFIG", ""))
    store = SQLiteStore(db)
    with pytest.raises(RunFailed, match="merge conflict"):
        Engine(store).start(load_workflow(str(wf)), run_id="c1")
    assert sorted(r.node for r in store.load_task_results("c1", 0).values()) == ["a", "b"]
    fixed = write(
        "fixed.yaml", body.replace("CONFIG", "config: {conflict_policy: last_writer_wins}")
    )
    res = Engine(SQLiteStore(db)).resume(load_workflow(str(fixed)), "c1")
    assert res.status == "succeeded" and res.state == {"x": 2}
    assert sorted(calls(tmp_path)) == ["a", "b"]  # each ran once: resume reused both results


def test_a_result_finished_just_before_a_signal_is_saved_and_reused(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write("countlib.py", COUNT_LIB)
    wf = write(
        "wf.yaml",
        """
        name: lone
        state: {x: {default: 0}}
        nodes:
          a: {python: "countlib:a"}
        """,
    )

    def signal_now(engine: Engine, _: Any) -> None:
        engine.stop.set()  # what the SIGINT handler does, right after the task finished

    with pytest.raises(Interrupted):
        Engine(SQLiteStore(db), after_task=signal_now).start(load_workflow(str(wf)), run_id="s1")
    store = SQLiteStore(db)
    assert [r.status for r in store.load_task_results("s1", 0).values()] == ["ok"]
    res = Engine(store).resume(load_workflow(str(wf)), "s1")
    assert res.status == "succeeded" and res.state == {"x": 1}
    assert calls(tmp_path) == ["a"]


def test_tasks_still_queued_when_a_signal_arrives_never_start(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write(
        "waitlib.py",
        """
        from pathlib import Path

        def work(state, ctx):
            (Path(__file__).parent / f"ran-{ctx.index}").touch()
            if ctx.index == 0:
                ctx.scope.stop.wait(60)  # runs until the signal
            return ctx.index
        """,
    )
    wf = write(
        "wf.yaml",
        """
        name: queued
        state: {out: {default: [], reducer: append}}
        nodes:
          w: {foreach: [0, 1, 2], python: "waitlib:work", save: out}
        """,
    )
    stop = threading.Event()

    class SignalWhenAllQueued(Observer):
        def task_queued(self, step: int, task: Task) -> None:
            if task.index == 2:
                stop.set()  # items 0 and 1 are with the executor; one worker, busy with 0

    engine = Engine(
        SQLiteStore(db),
        settings=Settings(max_concurrency=1, grace_s=60),
        observer=SignalWhenAllQueued(),
        stop=stop,
    )
    with pytest.raises(Interrupted):
        engine.start(load_workflow(str(wf)), run_id="q1")
    assert not (tmp_path / "ran-1").exists()
    assert not (tmp_path / "ran-2").exists()
    res = Engine(SQLiteStore(db)).resume(load_workflow(str(wf)), "q1")
    assert res.status == "succeeded" and res.state == {"out": [0, 1, 2]}


def test_resume_with_a_workflow_that_drops_a_key_a_saved_result_writes_is_a_usage_error(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write(
        "droplib.py",
        """
        from pathlib import Path

        def work(state, ctx):
            if ctx.index == 1 and not (Path(__file__).parent / "ready").exists():
                raise RuntimeError("not yet")
            return {"old": ctx.index} if ctx.index == 0 else {}
        """,
    )
    body = """
        name: drop
        state: {KEY: {default: 0}}
        nodes:
          w: {foreach: [0, 1], python: "droplib:work"}
        """
    v1 = write("v1.yaml", body.replace("KEY", "old"))
    store = SQLiteStore(db)
    with pytest.raises(RunFailed):
        Engine(store).start(load_workflow(str(v1)), run_id="d1")
    (tmp_path / "ready").touch()
    v2 = write("v2.yaml", body.replace("KEY", "new"))
    with pytest.raises(UsageError, match="'old'"):
        Engine(SQLiteStore(db)).resume(load_workflow(str(v2)), "d1")
    assert store.get_run("d1").status == "failed"  # refused before anything ran
    res = Engine(SQLiteStore(db)).resume(load_workflow(str(v1)), "d1")
    assert res.status == "succeeded" and res.state == {"old": 0}


def test_state_keys_added_on_resume_hold_dicts_with_sorted_keys_as_stored(
    write: Write, db: Path
) -> None:
    write(
        "keyslib.py",
        """
        def keys(state, ctx):
            return {"seen": list(state["cfg"])}
        """,
    )
    v1 = write(
        "v1.yaml",
        """
        name: grow
        state: {n: {default: 0}}
        nodes:
          a: {set: {n: 1}, next: b}
          b: {shell: "exit 3"}
        """,
    )
    store = SQLiteStore(db)
    with pytest.raises(RunFailed):
        Engine(store).start(load_workflow(str(v1)), run_id="g1")
    v2 = write(
        "v2.yaml",
        """
        name: grow
        state:
          n: {default: 0}
          cfg: {default: {b: 1, a: 2}}
          seen: {default: []}
        nodes:
          a: {set: {n: 1}, next: b}
          b: {python: "keyslib:keys"}
        """,
    )
    res = Engine(SQLiteStore(db)).resume(load_workflow(str(v2)), "g1")
    # the order a later resume would see, loading the key back from the store
    assert res.state["seen"] == ["a", "b"]


RETRY_LIB = """
from pathlib import Path

def work(state, ctx):
    if ctx.item == 0 and ctx.attempt == 1:
        raise RuntimeError("flaky")
    if ctx.item == 1 and not (Path(__file__).parent / "ready").exists():
        raise RuntimeError("not yet")
    return None
"""


def test_a_reused_result_keeps_its_attempt_count_in_the_event_stream(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write("retrylib.py", RETRY_LIB)
    wf = write(
        "wf.yaml",
        """
        name: retry
        state: {}
        nodes:
          w:
            foreach: [0, 1]
            python: "retrylib:work"
            retry: {max_attempts: 2, backoff: 1ms}
        """,
    )
    store = SQLiteStore(db)
    with pytest.raises(RunFailed):
        Engine(store).start(load_workflow(str(wf)), run_id="r1")
    (tmp_path / "ready").touch()
    Engine(SQLiteStore(db)).resume(load_workflow(str(wf)), "r1")
    done = {
        (e.data or {})["index"]: e.attempt for e in store.events("r1") if e.type == "task_succeeded"
    }
    assert done == {0: 2, 1: 1}  # item 0 was reused: it had taken two attempts


def test_an_attempt_that_is_not_retried_gives_no_task_retried_event(write: Write, db: Path) -> None:
    write("retrylib.py", RETRY_LIB)
    wf = write(
        "wf.yaml",
        """
        name: retry
        state: {}
        nodes:
          w:
            foreach: [1]
            python: "retrylib:work"
            retry: {max_attempts: 2, backoff: 1ms}
        """,
    )
    store = SQLiteStore(db)
    with pytest.raises(RunFailed, match="after 2 attempt"):
        Engine(store).start(load_workflow(str(wf)), run_id="t1")
    types = [(e.type, e.attempt) for e in store.events("t1") if e.node == "w"]
    assert types == [("task_retried", 1), ("task_failed", 2)]


def test_commands_see_their_own_run_id_even_when_the_environment_has_another(
    write: Write, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a workflow step that runs flowrun again hands its own FLOWRUN_RUN_ID down
    monkeypatch.setenv("FLOWRUN_RUN_ID", "outer-run")
    wf = write(
        "wf.yaml",
        """
        name: env
        state: {out: {default: ""}}
        nodes:
          a: {shell: 'echo "$FLOWRUN_RUN_ID"', save: out}
        """,
    )
    res = Engine(SQLiteStore(db)).start(load_workflow(str(wf)), run_id="inner-run")
    assert res.state == {"out": "inner-run"}


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("echo not json; echo why >&2", "stdout is not JSON"),
        ("""echo '{"nope": 1}'; echo why >&2""", "undeclared state key 'nope'"),
    ],
)
def test_a_command_whose_output_is_refused_keeps_its_output_tails_for_show(
    write: Write, db: Path, script: str, error: str
) -> None:
    write("out.sh", script + "\n")
    wf = write(
        "wf.yaml",
        """
        name: tails
        state: {n: {default: 0}}
        nodes:
          a: {run: [sh, out.sh], output: json}
        """,
    )
    store = SQLiteStore(db)
    with pytest.raises(RunFailed, match=error):
        Engine(store).start(load_workflow(str(wf)), run_id="o1")
    (r,) = store.load_task_results("o1", 0).values()
    assert r.status == "failed"
    assert r.stdout is not None and r.stdout.startswith(("not json", '{"nope"'))
    assert r.stderr == "why\n"


# effects of an inline python call -----------------------------------------------------

CHATTY_LIB = """
def ask(state, ctx):
    print("asking")
    ctx.record_llm_usage("gpt-4o-mini", 10, 5)
    return {"out": "done"}
"""


class Chatty(Observer):
    """Shows tasks' output live and prints a line per billed call (a user's observer)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def task_output(
        self, step: int, task: Task, attempt: int, stream: str, lines: list[str]
    ) -> None:
        self.lines.extend(lines)

    def llm_usage(self, node: str, model: str, *args: Any) -> None:
        print(f"billed a {model} call of {node}")


def test_an_observer_that_prints_as_an_inline_calls_effect_is_applied_does_not_hang_the_run(
    write: Write, db: Path
) -> None:
    write("chattylib.py", CHATTY_LIB)
    wf = write(
        "wf.yaml",
        """
        name: chatty
        state: {out: {default: null}}
        nodes:
          ask: {python: 'chattylib:ask', timeout: 30s}
        """,
    )
    observer = Chatty()
    store = SQLiteStore(db)
    box: list[Any] = []
    run = threading.Thread(
        target=lambda: box.append(Engine(store, observer=observer).start(load_workflow(str(wf)))),
        daemon=True,  # a regression hangs this thread, not the suite
    )
    run.start()
    run.join(60)
    assert not run.is_alive(), "the run hangs: an observer's print re-entered the inline sink"
    (res,) = box
    assert res.status == "succeeded" and res.state["out"] == "done"
    assert len(store.llm_calls(res.run_id)) == 1
    # what the hook printed is not the task's output; what the task printed is
    assert observer.lines == ["asking"]
    (result,) = store.load_task_results(res.run_id, 0).values()
    assert "billed" not in (result.stdout or "")


LATE_BILLING_LIB = """
import threading

go = threading.Event()  # the test sets it once the run is over
done = threading.Event()
outcome = []
caller = []  # the call's thread

def slow(state, ctx):
    caller.append(threading.get_ident())
    ctx.cancelled.wait(30)  # abandoned past its timeout: the run fails and ends meanwhile
    go.wait(30)
    try:
        ctx.record_llm_usage("gpt-4o-mini", 10, 5)
        outcome.append("billed")
    except BaseException as exc:
        outcome.append(f"{type(exc).__name__}: {exc}")
    done.set()
"""

LATE_WORKFLOW = """
name: late
state: {out: {default: null}}
nodes:
  slow: {python: 'late_billing_lib:slow', timeout: 300ms}
"""


class Threads(Observer):
    """Where the observer heard of each billed call, and a hook run as the run finishes."""

    def __init__(self) -> None:
        self.billed_on: list[int] = []  # thread idents
        self.at_finish: Callable[[], None] = lambda: None

    def llm_usage(self, node: str, model: str, *args: Any) -> None:
        self.billed_on.append(threading.get_ident())

    def run_finished(self, status: str, error: str | None) -> None:
        self.at_finish()


def test_a_paid_call_an_abandoned_inline_call_makes_after_the_run_ended_is_in_the_ledger(
    write: Write, db: Path
) -> None:
    write("late_billing_lib.py", LATE_BILLING_LIB)
    wf = write("wf.yaml", LATE_WORKFLOW)
    store = SQLiteStore(db)
    observer = Threads()
    with pytest.raises(RunFailed, match="timed out"):
        Engine(store, observer=observer).start(load_workflow(str(wf)))
    lib = sys.modules["late_billing_lib"]
    lib.go.set()  # the drive is over: its channel is closed
    assert lib.done.wait(30)
    assert lib.outcome == ["billed"]
    (call,) = store.llm_calls(store.list_runs()[0].run_id)
    assert (call.node, call.step, call.attempt, call.tokens_in) == ("slow", 0, 1, 10)
    # applied by the call's own thread, which is not the one that started the run
    assert observer.billed_on == lib.caller
    assert lib.caller != [threading.get_ident()]


def test_a_paid_call_still_queued_when_the_drive_ends_is_applied_before_its_channel_closes(
    write: Write, db: Path
) -> None:
    write("late_billing_lib.py", LATE_BILLING_LIB)
    wf = write("wf.yaml", LATE_WORKFLOW)
    store = SQLiteStore(db)
    observer = Threads()
    engine = Engine(store, observer=observer)

    def bill_as_the_run_finishes() -> None:  # no step takes its arrivals any more
        lib = sys.modules["late_billing_lib"]
        lib.go.set()
        drive = engine._drive_of
        assert drive is not None
        arrivals = drive.arrivals
        for _ in range(600):  # until the abandoned call's paid call is queued
            if not arrivals.empty() or lib.done.is_set():
                break
            time.sleep(0.05)

    observer.at_finish = bill_as_the_run_finishes
    with pytest.raises(RunFailed, match="timed out"):
        engine.start(load_workflow(str(wf)))
    lib = sys.modules["late_billing_lib"]
    assert lib.done.wait(30)
    assert lib.outcome == ["billed"]
    assert len(store.llm_calls(store.list_runs()[0].run_id)) == 1
    # applied by the coordinator as its drive ended, not by the call's thread afterwards
    assert observer.billed_on == [threading.get_ident()]
