"""An append/extend key is stored as what each step added, with bounded snapshots."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from flowrun.engine import Engine, RunFailed, Settings, SQLiteStore, load_workflow
from flowrun.engine.runtime.reducers import SNAPSHOT_EVERY

N = 300


def _loop(write: Callable[[str, str], Path]) -> Path:
    write("lib.py", "def push(state, ctx):\n    return {'out': {'i': ctx.step, 'z': [ctx.step]}}\n")
    return write(
        "wf.yaml",
        f"""
        name: grow
        state:
          out: {{default: [], reducer: append}}
          more: {{default: [], reducer: extend}}
          n: {{default: 0}}
        config: {{max_steps: {N + 5}}}
        nodes:
          push:
            python: lib:push
            next: count
          count:
            set: {{n: "{{{{ state.n + 1 }}}}", more: ["{{{{ state.n }}}}", "x"]}}
            routes:
              - {{when: "{{{{ state.n < {N // 2} }}}}", to: push}}
              - {{to: END}}
        """,
    )


def test_append_keys_store_the_items_each_step_added(
    write: Callable[[str, str], Path], db: Path
) -> None:
    store = SQLiteStore(db)
    res = Engine(store).start(load_workflow(_loop(write)))
    assert res.status == "succeeded"
    out = [{"i": s, "z": [s]} for s in range(0, N, 2)]
    assert res.state["out"] == out
    run_id = res.run_id
    latest = store.load_latest(run_id)
    assert latest.state["out"] == out
    assert latest.state["more"] == [x for i in range(N // 2) for x in (i, "x")]
    mid = store.load_at(run_id, 101)  # after steps 0..100: pushes at 0, 2, ..., 100
    assert mid.state["out"] == out[:51]
    store.close()

    c = sqlite3.connect(db)
    rows = c.execute(
        "SELECT step, value, delta FROM state_kv WHERE key = 'out' ORDER BY step"
    ).fetchall()
    c.close()
    whole = len(json.dumps(out, separators=(",", ":")))
    stored = sum(len(v) for _, v, _ in rows)
    # stored whole at every step this would be ~N/4 times the final value
    assert stored < 8 * whole, (stored, whole)
    deltas = [d for _, _, d in rows]
    assert deltas.count(1) > deltas.count(0) > 1
    run = 0  # a resume reads at most SNAPSHOT_EVERY deltas after a whole value
    for d in deltas:
        run = run + 1 if d else 0
        assert run <= SNAPSHOT_EVERY


def test_a_run_resumed_from_delta_rows_ends_as_an_uninterrupted_one(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    wf = load_workflow(_loop(write))
    one = SQLiteStore(tmp_path / "one.db")
    ref = Engine(one).start(wf, run_id="r")
    two = SQLiteStore(tmp_path / "two.db")
    with pytest.raises(RunFailed, match="max_steps"):  # stopped between two snapshots
        Engine(two, settings=Settings(max_steps=131)).start(wf, run_id="r")
    done = Engine(two).resume(wf, "r", force=True)
    assert done.status == "succeeded"
    assert done.state == ref.state
    assert two.get_run("r").state_digest == one.get_run("r").state_digest
    # each step's digest covers the state digest: the same step by step
    assert [s["digest"] for s in two.steps("r")] == [s["digest"] for s in one.steps("r")]
    one.close()
    two.close()


def test_a_python_node_sees_a_grown_list_whole_and_only_new_items_are_frozen(
    write: Callable[[str, str], Path], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowrun.engine.nodes import python as python_node

    calls = 0
    real = python_node.freeze

    def counting(value: object) -> object:
        nonlocal calls
        calls += 1
        return real(value)

    monkeypatch.setattr(python_node, "freeze", counting)
    write(
        "seen.py",
        "def look(state, ctx):\n"
        "    assert list(state['out']) == [{'i': s, 'z': [s]} for s in range(0, ctx.step, 3)]\n"
        "    try:\n"
        "        state['out'].append(1)\n"
        "    except TypeError:\n"
        "        return {}\n"
        "    raise AssertionError('the view is writable')\n",
    )
    _loop(write)  # its lib.py
    path = write(
        "look.yaml",
        f"""
        name: look
        state:
          out: {{default: [], reducer: append}}
          n: {{default: 0}}
        config: {{max_steps: {2 * N}}}
        nodes:
          push:
            python: lib:push
            next: look
          look:
            python: seen:look
            routes:
              - {{when: "{{{{ state.n < {N // 2 - 1} }}}}", to: bump}}
              - {{to: END}}
          bump:
            set: {{n: "{{{{ state.n + 1 }}}}"}}
            next: push
        """,
    )
    store = SQLiteStore(db)
    res = Engine(store).start(load_workflow(path))
    store.close()
    assert res.status == "succeeded"
    pushes = len(res.state["out"])
    assert pushes == N // 2
    # frozen whole at every step this is ~3 * pushes**2 / 2 (about 34,000) calls
    assert calls < 20 * pushes, calls
