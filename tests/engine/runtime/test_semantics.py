"""Execution semantics (SPEC §3): reducers, conflicts, ordering, routes, joins, limits,
backpressure, retries and the executor seam."""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import (
    Engine,
    Observer,
    RunFailed,
    RunResult,
    Settings,
    SQLiteStore,
    load_workflow,
)
from flowrun.engine.records import Task
from flowrun.engine.runtime.ordering import idempotency_key, order_key
from flowrun.engine.runtime.reducers import ReduceError, reduce
from flowrun.engine.spec.model import RetryPolicy

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]


def run_wf(
    path: Path,
    db: Path,
    *,
    observer: Observer | None = None,
    executor: Executor | None = None,
    run_id: str | None = None,
    inputs: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[RunResult, SQLiteStore]:
    store = SQLiteStore(db)
    engine = Engine(store, settings=Settings(**settings), observer=observer, executor=executor)
    return engine.start(load_workflow(str(path)), run_id=run_id, inputs=inputs), store


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def step_nodes(store: SQLiteStore, run_id: str) -> list[list[str]]:
    return [[t["node"] for t in s["tasks"]] for s in store.steps(run_id)]


def count_results(store: SQLiteStore, run_id: str, node: str) -> int:
    return sum(1 for r in store.task_results(run_id) if r.node == node)


class Recorder(Observer):
    """Counts hooks from any thread; keeps the high-water marks of running and queued."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued = self.running = 0
        self.max_queued = self.max_running = 0
        self.backpressure_events = 0
        self.conflicts: list[tuple[str, tuple[str, str]]] = []
        self.retries: list[tuple[str, int, float]] = []

    def task_queued(self, step: int, task: Task) -> None:
        with self.lock:
            self.queued += 1
            self.max_queued = max(self.max_queued, self.queued)

    def task_started(self, step: int, task: Task) -> None:
        with self.lock:
            self.queued -= 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def task_finished(
        self,
        step: int,
        task: Task,
        status: str,
        duration: float,
        attempts: int,
        error: str | None,
        reused: bool,
    ) -> None:
        if reused:
            return
        with self.lock:
            self.running -= 1

    def backpressure(self) -> None:
        with self.lock:
            self.backpressure_events += 1

    def merge_conflict(self, key: str, nodes: tuple[str, str]) -> None:
        with self.lock:
            self.conflicts.append((key, nodes))

    def task_retried(
        self,
        step: int,
        task: Task,
        attempt: int,
        reason: str,
        error: str,
        delay: float,
    ) -> None:
        with self.lock:
            self.retries.append((task.node, attempt, delay))


SLEEPY = """
import random
import time

def nap(state, ctx):
    time.sleep(random.random() * 0.01)
    return ctx.item
"""


# reducers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reducer", "current", "values", "expected"),
    [
        ("replace", 1, [2, 3], 3),
        ("append", [0], [[1], 2], [0, [1], 2]),
        ("append", None, [1], [1]),
        ("extend", [0], [[1, 2], [], [3]], [0, 1, 2, 3]),
        (
            "merge",
            {"a": 1, "b": {"x": 1}},
            [{"b": {"y": 2}}, {"c": 3}],
            {"a": 1, "b": {"y": 2}, "c": 3},
        ),
        ("add", 1, [2, 3.5], 6.5),
        ("add", None, [2, 3], 5),
        ("add", "a", ["b", "c"], "abc"),
        ("max", 5, [3, 9, 4], 9),
        ("max", None, [3], 3),
        ("min", 5, [3, 9, 4], 3),
        ("min", None, [7, 8], 7),
    ],
)
def test_each_reducer_combines_values_in_order(
    reducer: str, current: Any, values: list[Any], expected: Any
) -> None:
    snapshot = repr(current)
    out = current
    for i, v in enumerate(values):
        out = reduce(reducer, out, v, "k", owned=i > 0)
    assert out == expected
    assert repr(current) == snapshot  # the step's snapshot is never mutated


@pytest.mark.parametrize(
    ("reducer", "current", "value", "message"),
    [
        ("extend", [], 1, "state key 'k' (extend) got int, not a list"),
        ("merge", {}, [1], "state key 'k' (merge) got list, not a mapping"),
        ("append", "text", 1, "state key 'k' holds str, not a list"),
        ("add", 1, "x", "state key 'k' (add) cannot combine int and str"),
        ("max", 1, "x", "state key 'k' (max) cannot combine int and str"),
        ("nope", 1, 1, "unknown reducer 'nope'"),
    ],
)
def test_reducer_type_errors_are_clear(
    reducer: str, current: Any, value: Any, message: str
) -> None:
    with pytest.raises(ReduceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        reduce(reducer, current, value, "k")


def test_every_reducer_through_the_engine_merges_in_task_order(write: Write, db: Path) -> None:
    write(
        "red_lib.py",
        SLEEPY
        + """
def each(state, ctx):
    time.sleep(random.random() * 0.01)
    i = ctx.item
    return {
        "rep": i, "app": i, "ext": [i, -i], "mer": {str(i): i, "last": i},
        "tot": i, "hi": i, "lo": i,
    }
""",
    )
    wf = write(
        "wf.yaml",
        """
        name: reducers
        state:
          rep: {default: 0}
          app: {default: [start], reducer: append}
          ext: {default: [], reducer: extend}
          mer: {default: {keep: true}, reducer: merge}
          tot: {default: 100, reducer: add}
          hi: {default: 0, reducer: max}
          lo: {default: 100, reducer: min}
        config: {max_concurrency: 4, conflict_policy: last_writer_wins}
        nodes:
          each:
            foreach: [3, 1, 4, 1, 5]
            python: red_lib:each
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state == {
        "rep": 5,
        "app": ["start", 3, 1, 4, 1, 5],
        "ext": [3, -3, 1, -1, 4, -4, 1, -1, 5, -5],
        "mer": {"keep": True, "3": 3, "1": 1, "4": 4, "5": 5, "last": 5},
        "tot": 114,
        "hi": 5,
        "lo": 1,
    }


def test_a_reducer_type_error_fails_the_run_naming_the_node(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: badext
        state: {xs: {default: [], reducer: extend}}
        nodes:
          bad:
            set: {xs: 5}
        """,
    )
    with pytest.raises(RunFailed, match=r"node 'bad': state key 'xs' \(extend\) got int"):
        run_wf(wf, db)


# conflicts --------------------------------------------------------------------------------
CONFLICT = """
name: conflict
state:
  v: {default: null}
config: {conflict_policy: POLICY}
nodes:
  fork:
    set: {}
    next: [slow, fast]
  slow:
    python: conflict_lib:slow
  fast:
    set: {v: from-fast}
"""

CONFLICT_LIB = """
import time

def slow(state, ctx):
    time.sleep(0.1)  # finishes last in time, but comes first in tree order
    return {"v": "from-slow"}
"""


def test_conflict_policy_fail_fails_the_run_naming_key_and_both_nodes(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write("conflict_lib.py", CONFLICT_LIB)
    wf = write("wf.yaml", CONFLICT.replace("POLICY", "fail"))
    rec = Recorder()
    with pytest.raises(RunFailed) as info:
        run_wf(wf, db, observer=rec)
    msg = info.value.message
    assert "merge conflict on state key 'v'" in msg
    assert "'slow'" in msg and "'fast'" in msg
    assert msg.index("'slow'") < msg.index("'fast'")
    assert rec.conflicts == [("v", ("slow", "fast"))]
    p = flowrun("run", "wf.yaml", "--db", str(tmp_path / "cli.db"), cwd=tmp_path)
    assert p.returncode == 1
    assert "merge conflict on state key 'v'" in p.stderr
    assert "Traceback" not in p.stderr


def test_conflict_policy_last_writer_wins_keeps_the_later_task_in_tree_order(
    write: Write, db: Path
) -> None:
    write("conflict_lib.py", CONFLICT_LIB)
    wf = write("wf.yaml", CONFLICT.replace("POLICY", "last_writer_wins"))
    rec = Recorder()
    res, _ = run_wf(wf, db, observer=rec)
    assert res.state["v"] == "from-fast"
    assert rec.conflicts == [("v", ("slow", "fast"))]


def test_conflict_policy_flag_overrides_the_workflow(write: Write, db: Path) -> None:
    write("conflict_lib.py", CONFLICT_LIB)
    wf = write("wf.yaml", CONFLICT.replace("POLICY", "fail"))
    res, _ = run_wf(wf, db, conflict_policy="last_writer_wins")
    assert res.state["v"] == "from-fast"


def test_a_conflict_between_foreach_tasks_names_their_items(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: feconflict
        state: {v: {default: null}}
        nodes:
          each:
            foreach: [a, b, c]
            set: {v: "{{ item }}"}
        """,
    )
    rec = Recorder()
    with pytest.raises(RunFailed, match=r"'v': written by 'each\[0\]' and 'each\[1\]' in step 0"):
        run_wf(wf, db, observer=rec)
    assert rec.conflicts == [("v", ("each", "each"))]
    res, _ = run_wf(wf, db.with_name("lww.db"), conflict_policy="last_writer_wins")
    assert res.state["v"] == "c"


def test_a_reducer_key_written_by_many_tasks_is_no_conflict(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: noconflict
        state: {xs: {default: [], reducer: append}}
        nodes:
          fork:
            set: {}
            next: [a, b]
          a:
            set: {xs: a}
          b:
            set: {xs: b}
        """,
    )
    rec = Recorder()
    res, _ = run_wf(wf, db, observer=rec)
    assert res.state["xs"] == ["a", "b"]
    assert rec.conflicts == []


# snapshots -------------------------------------------------------------------------------
def test_tasks_of_a_step_read_one_snapshot_and_routes_see_the_merged_state(
    write: Write, db: Path
) -> None:
    write(
        "snap_lib.py",
        """
import time

def reader(state, ctx):
    time.sleep(0.05)  # the writer of this step has long finished
    return {"seen": state["v"]}
""",
    )
    wf = write(
        "wf.yaml",
        """
        name: snapshot
        state:
          v: {default: old}
          seen: {default: null}
          went: {default: null}
        nodes:
          fork:
            set: {}
            next: [writer, reader]
          writer:
            set: {v: new}
          reader:
            python: snap_lib:reader
            routes:
              - when: "state.v == 'new'"
                to: merged
              - to: unmerged
          merged:
            set: {went: merged}
          unmerged:
            set: {went: unmerged}
        """,
    )
    res, _ = run_wf(wf, db, max_concurrency=2)
    assert res.state == {"v": "new", "seen": "old", "went": "merged"}


def test_a_resumed_run_sees_merged_dicts_exactly_as_an_uninterrupted_one(
    write: Write, tmp_path: Path
) -> None:
    flag = tmp_path / "fail-once"
    write(
        "keys_lib.py",
        f"""
import os

def reader(state, ctx):
    if os.path.exists({str(flag)!r}):
        os.remove({str(flag)!r})
        raise RuntimeError("crash before the step commits")
    return {{"order": list(state["d"]), "items": [k for k in state["d"]["nested"]]}}
""",
    )
    wf = write(
        "wf.yaml",
        """
        name: keyorder
        state:
          d: {default: {}, reducer: merge}
          order: {default: null}
          items: {default: null}
        nodes:
          fork:
            set: {}
            next: [zed, ann]
          zed:
            set: {d: {zed: 1, nested: {z: 1, a: 2}}}
            next: reader
          ann:
            set: {d: {ann: 2}}
            next: reader
          reader:
            python: keys_lib:reader
        """,
    )
    straight, _ = run_wf(wf, tmp_path / "a.db")
    flag.touch()
    store = SQLiteStore(tmp_path / "b.db")
    with pytest.raises(RunFailed, match="crash before the step commits"):
        Engine(store).start(load_workflow(str(wf)))
    resumed = Engine(store).resume(load_workflow(str(wf)), store.list_runs()[0].run_id)
    assert resumed.state == straight.state
    assert resumed.state["order"] == straight.state["order"]
    assert straight.state["items"] == resumed.state["items"]


# ordering ---------------------------------------------------------------------------------
def test_order_key_is_sha256_of_parent_node_and_edge() -> None:
    def expected(parent: str, node: str, edge: int) -> str:
        return hashlib.sha256(f"{parent}\x1f{node}\x1f{edge}".encode()).hexdigest()

    assert order_key("", "start", 0) == expected("", "start", 0)
    root = order_key("", "start", 0)
    assert order_key(root, "child", 2) == expected(root, "child", 2)
    assert order_key("", "a", 1) != order_key("", "a", 10)
    assert order_key("", "a1", 0) != order_key("", "a", 10)  # the separator keeps fields apart
    rid = "run-1"
    keys = [root, order_key(root, "child", 0)]
    assert (
        idempotency_key(rid, 3, keys)
        == hashlib.sha256(f"{rid}\x1f3\x1f{keys[0]}\x1f{keys[1]}".encode()).hexdigest()
    )


def test_tasks_run_in_tree_order_parent_position_then_edge_index(write: Write, db: Path) -> None:
    write("tree_lib.py", SLEEPY)
    wf = write(
        "wf.yaml",
        """
        name: tree
        state: {log: {default: [], reducer: append}}
        config: {max_concurrency: 8}
        start: [zeta, alpha]
        nodes:
          zeta:
            set: {log: zeta}
            next: [m, b]
          alpha:
            set: {log: alpha}
            next: [fan, a]
          m:
            set: {log: m}
          b:
            set: {log: b}
          a:
            set: {log: a}
          fan:
            foreach: [f0, f1, f2]
            python: tree_lib:nap
            save: log
        """,
    )
    res, store = run_wf(wf, db)
    steps = store.steps(res.run_id)
    assert [[t["node"] for t in s["tasks"]] for s in steps] == [
        ["zeta", "alpha"],
        ["m", "b", "fan", "fan", "fan", "a"],
    ]
    z, a = order_key("", "zeta", 0), order_key("", "alpha", 1)
    assert [t["key"] for t in steps[0]["tasks"]] == [z, a]
    assert [t["key"] for t in steps[1]["tasks"]] == [
        order_key(z, "m", 0),
        order_key(z, "b", 1),
        order_key(a, "fan", 0),  # under foreach, the edge is the item index
        order_key(a, "fan", 1),
        order_key(a, "fan", 2),
        order_key(a, "a", 1),
    ]
    assert res.state["log"] == ["zeta", "alpha", "m", "b", "f0", "f1", "f2", "a"]


def test_routes_first_match_wins_with_a_default(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: routes
        state:
          n: {default: 0}
          went: {default: [], reducer: append}
        nodes:
          decide:
            set: {}
            routes:
              - when: "state.n > 5"
                to: big
              - when: "state.n > 2"
                to: [mid, also]
              - to: small
          big:
            set: {went: big}
          mid:
            set: {went: mid}
          also:
            set: {went: also}
          small:
            set: {went: small}
        """,
    )
    got = {}
    for i, n in enumerate((10, 4, 1)):
        res, _ = run_wf(wf, db.with_name(f"r{i}.db"), inputs={"n": n})
        got[n] = res.state["went"]
    assert got == {10: ["big"], 4: ["mid", "also"], 1: ["small"]}


def test_routes_without_a_match_or_to_end_finish_the_run(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: ends
        state:
          n: {default: 0}
          went: {default: [], reducer: append}
        nodes:
          decide:
            set: {went: decide}
            routes:
              - when: "state.n == 1"
                to: END
              - when: "state.n == 2"
                to: [other, END]
          other:
            set: {went: other}
            next: END
        """,
    )
    for n, went in ((0, ["decide"]), (1, ["decide"]), (2, ["decide", "other"])):
        res, store = run_wf(wf, db.with_name(f"e{n}.db"), inputs={"n": n})
        assert res.status == "succeeded"
        assert res.state["went"] == went
        assert store.get_run(res.run_id).status == "succeeded"


def test_a_node_routed_to_by_several_tasks_runs_once_under_the_first_parent(
    write: Write, db: Path
) -> None:
    wf = write(
        "wf.yaml",
        """
        name: dedupe
        state: {hits: {default: 0, reducer: add}}
        nodes:
          fork:
            set: {}
            next: [a, b, each]
          a:
            set: {}
            next: [x, c]
          b:
            set: {}
            next: c
          each:
            foreach: [1, 2, 3]
            set: {}
            next: c
          x:
            set: {}
          c:
            set: {hits: 1}
        """,
    )
    res, store = run_wf(wf, db)
    assert res.state["hits"] == 1
    assert count_results(store, res.run_id, "c") == 1
    steps = store.steps(res.run_id)
    fork = order_key("", "fork", 0)
    a = order_key(fork, "a", 0)
    assert [t["node"] for t in steps[2]["tasks"]] == ["x", "c"]
    assert steps[2]["tasks"][1]["key"] == order_key(a, "c", 1)


def test_a_loop_routes_back_to_itself_until_its_counter_is_done(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: loop
        state:
          n: {default: 0}
          seen: {default: [], reducer: append}
        nodes:
          tick:
            set: {n: "{{ state.n + 1 }}", seen: "{{ run.step }}"}
            routes:
              - when: "state.n < 5"
                to: tick
              - to: done
          done:
            set: {seen: done}
        """,
    )
    res, store = run_wf(wf, db)
    assert res.state == {"n": 5, "seen": [0, 1, 2, 3, 4, "done"]}
    assert step_nodes(store, res.run_id) == [["tick"]] * 5 + [["done"]]
    assert res.steps == 6


def test_max_steps_exceeded_fails_with_a_clear_cause(
    write: Write, db: Path, tmp_path: Path
) -> None:
    write(
        "wf.yaml",
        """
        name: forever
        state: {n: {default: 0}}
        config: {max_steps: 4}
        nodes:
          spin:
            set: {n: "{{ state.n + 1 }}"}
            next: spin
        """,
    )
    with pytest.raises(RunFailed, match=r"reached max_steps \(4\)") as info:
        run_wf(tmp_path / "wf.yaml", db)
    assert info.value.hint is not None and "max_steps" in info.value.hint
    store = SQLiteStore(db)
    run = store.list_runs()[0]
    assert run.status == "failed" and run.step == 4
    assert store.load_latest(run.run_id).state == {"n": 4}
    p = flowrun("run", "wf.yaml", "--db", str(tmp_path / "cli.db"), cwd=tmp_path)
    assert p.returncode == 1
    assert "max_steps (4)" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_join_waits_for_every_needed_branch_and_runs_once(
    write: Write, db: Path, tmp_path: Path
) -> None:
    log = tmp_path / "join.log"
    write(
        "join_lib.py",
        f"""
def join(state, ctx):
    with open({str(log)!r}, "a") as f:
        f.write(f"{{ctx.step}} {{sorted(state['done'])}}\\n")
    return {{"joined": True}}
""",
    )
    wf = write(
        "wf.yaml",
        """
        name: join
        state:
          done: {default: [], reducer: append}
          joined: {default: false}
        nodes:
          fork:
            set: {}
            next: [short, long1, each]
          short:
            set: {done: short}
            next: join
          long1:
            set: {}
            next: long2
          long2:
            set: {done: long2}
            next: join
          each:
            foreach: [1, 2, 3]
            set: {done: "e{{ item }}"}
            next: join
          join:
            needs: [short, long2, each]
            python: join_lib:join
        """,
    )
    res, store = run_wf(wf, db)
    assert res.state["joined"] is True
    assert log.read_text().splitlines() == ["3 ['e1', 'e2', 'e3', 'long2', 'short']"]
    assert count_results(store, res.run_id, "join") == 1
    assert step_nodes(store, res.run_id)[-1] == ["join"]


# backpressure -----------------------------------------------------------------------------
def test_backpressure_bounds_running_and_queued_tasks(write: Write, db: Path) -> None:
    write("bp_lib.py", SLEEPY)
    wf = write(
        "wf.yaml",
        """
        name: bp
        state: {out: {default: [], reducer: append}}
        config: {max_concurrency: 2, queue_depth: 3}
        nodes:
          each:
            foreach: "{{ range(30) | list }}"
            python: bp_lib:nap
            save: out
        """,
    )
    rec = Recorder()
    res, _ = run_wf(wf, db, observer=rec)
    assert res.state["out"] == list(range(30))
    assert rec.max_running == 2
    assert 1 <= rec.max_queued <= 3
    assert rec.backpressure_events > 0
    assert rec.running == 0 and rec.queued == 0


def test_queue_depth_zero_still_makes_progress(write: Write, db: Path) -> None:
    write("bp0_lib.py", SLEEPY)
    wf = write(
        "wf.yaml",
        """
        name: bp0
        state: {out: {default: [], reducer: append}}
        config: {max_concurrency: 3, queue_depth: 0}
        nodes:
          each:
            foreach: "{{ range(12) | list }}"
            python: bp0_lib:nap
            save: out
        """,
    )
    rec = Recorder()
    res, _ = run_wf(wf, db, observer=rec)
    assert res.state["out"] == list(range(12))
    assert rec.max_running <= 3
    assert rec.backpressure_events > 0


# retries ----------------------------------------------------------------------------------
def test_backoff_doubles_and_is_capped() -> None:
    p = RetryPolicy(max_attempts=9, backoff=1.0, max_backoff=5.0, jitter=False)
    assert [p.delay(a, 0.123) for a in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_between_half_and_all_of_the_backoff() -> None:
    p = RetryPolicy(max_attempts=9, backoff=2.0, max_backoff=30.0, jitter=True)
    assert p.delay(1, 0.0) == 1.0
    assert p.delay(1, 1.0) == 2.0
    assert p.delay(3, 0.5) == 6.0
    assert p.delay(10, 1.0) == 30.0


RETRY_WF = """
name: retry
state: {out: {default: null}}
nodes:
  flaky:
    python: retry_lib:flaky
    retry: {max_attempts: MAX, backoff: 20ms, max_backoff: 50ms, jitter: true}
    save: out
"""

RETRY_LIB = """
def flaky(state, ctx):
    if ctx.attempt < 3:
        raise RuntimeError(f"flake {ctx.attempt}")
    return f"ok on {ctx.attempt}"
"""


def test_a_node_failing_twice_then_succeeding_uses_three_attempts(write: Write, db: Path) -> None:
    write("retry_lib.py", RETRY_LIB)
    wf = write("wf.yaml", RETRY_WF.replace("MAX", "3"))
    rec = Recorder()
    res, store = run_wf(wf, db, observer=rec)
    assert res.state["out"] == "ok on 3"
    (r,) = store.task_results(res.run_id)
    assert r.status == "ok" and r.attempts == 3
    assert [(n, a) for n, a, _ in rec.retries] == [("flaky", 1), ("flaky", 2)]
    retried = [e for e in store.events(res.run_id) if e.type == "task_retried"]
    assert [(e.attempt, e.error) for e in retried] == [
        (1, "retry_lib.py:3 in flaky: RuntimeError: flake 1"),  # the raising frame first
        (2, "retry_lib.py:3 in flaky: RuntimeError: flake 2"),
    ]


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_max_attempts_counts_the_first_attempt(write: Write, db: Path, max_attempts: int) -> None:
    write("retry_lib.py", RETRY_LIB)
    wf = write("wf.yaml", RETRY_WF.replace("MAX", str(max_attempts)))
    store = SQLiteStore(db)
    with pytest.raises(RunFailed, match=f"failed after {max_attempts} attempt"):
        Engine(store).start(load_workflow(str(wf)))
    (r,) = store.task_results(store.list_runs()[0].run_id)
    assert r.status == "failed" and r.attempts == max_attempts
    assert r.error == f"retry_lib.py:3 in flaky: RuntimeError: flake {max_attempts}"


def test_jitter_is_seeded_by_the_run_id(write: Write, tmp_path: Path) -> None:
    write("retry_lib.py", RETRY_LIB)
    wf = write("wf.yaml", RETRY_WF.replace("MAX", "3"))

    def delays(run_id: str, name: str) -> list[float]:
        rec = Recorder()
        run_wf(wf, tmp_path / name, observer=rec, run_id=run_id)
        return [d for _, _, d in rec.retries]

    first, again, other = delays("run-a", "1.db"), delays("run-a", "2.db"), delays("run-b", "3.db")
    assert first == again
    assert first != other
    # the RNG is seeded with the run id and the task's order key; one draw per retry
    rng = random.Random(f"run-a:{order_key('', 'flaky', 0)}")
    policy = RetryPolicy(max_attempts=3, backoff=0.02, max_backoff=0.05, jitter=True)
    assert first == [policy.delay(1, rng.random()), policy.delay(2, rng.random())]
    assert 0.01 <= first[0] <= 0.02 and 0.02 <= first[1] <= 0.04


def test_a_non_retryable_failure_is_not_retried(write: Write, db: Path) -> None:
    write("nr_lib.py", "def bad(state, ctx):\n    return 'not a mapping'\n")
    wf = write(
        "wf.yaml",
        """
        name: nr
        state: {}
        nodes:
          bad:
            python: nr_lib:bad
            retry: {max_attempts: 5, backoff: 10ms}
        """,
    )
    store = SQLiteStore(db)
    with pytest.raises(RunFailed, match="failed after 1 attempt"):
        Engine(store).start(load_workflow(str(wf)))


# the executor seam ------------------------------------------------------------------------
class CountingExecutor(Executor):
    """Any Executor will do: this one wraps a pool and counts what it is given."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=3)
        self.lock = threading.Lock()
        self.submits = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self.lock:
            self.submits += 1
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_the_engine_accepts_any_executor(write: Write, db: Path) -> None:
    write("ex_lib.py", SLEEPY)
    wf = write(
        "wf.yaml",
        """
        name: ex
        state: {out: {default: [], reducer: append}}
        nodes:
          first:
            set: {}
            next: each
          each:
            foreach: [1, 2, 3, 4, 5, 6, 7]
            python: ex_lib:nap
            save: out
        """,
    )
    ex = CountingExecutor()
    try:
        res, store = run_wf(wf, db, executor=ex, max_concurrency=3)
    finally:
        ex.shutdown()
    assert res.state["out"] == [1, 2, 3, 4, 5, 6, 7]
    assert ex.submits == 8
    assert len(store.task_results(res.run_id)) == 8
