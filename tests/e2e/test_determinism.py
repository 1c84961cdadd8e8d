"""The same workflow gives the same merge order, final state and step digests at any
--max-concurrency, however the threads' timing falls (SPEC §3, ordering contract), with
its runs in a SQLite file or in a PostgreSQL database (``store_url``)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowrun.engine.store import open_store

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

LIB = """
import os
import random
import time


def _nap():
    time.sleep(random.random() * 0.02)  # 0-20 ms, different on every run


def _log(name, line):
    with open(os.path.join(os.environ["DET_LOGS"], name), "a") as f:
        f.write(line + "\\n")


def seed(state, ctx):
    _nap()
    return {"items": list(range(state["count"])), "trail": "seed"}


def branch(state, ctx):
    _nap()
    return {"trail": ctx.node, "total": len(ctx.node), "best": len(ctx.node) * 10}


def square(state, ctx):
    _nap()
    _log("finished", str(ctx.item))
    return {"item": ctx.item, "square": ctx.item * ctx.item}


def score(state, ctx):
    _nap()
    return {"total": ctx.item, "best": ctx.item, "by_item": {str(ctx.item): ctx.index}}


def join(state, ctx):
    _nap()
    _log("join", f"{ctx.step}")
    return {
        "summary": {
            "squares": sum(r["square"] for r in state["results"]),
            "trail": list(state["trail"]),
            "total": state["total"],
        }
    }
"""

WORKFLOW = """
name: determinism
state:
  count:   {default: 30}
  items:   {default: []}
  results: {default: [], reducer: append}
  trail:   {default: [], reducer: append}
  total:   {default: 0, reducer: add}
  best:    {default: 0, reducer: max}
  by_item: {default: {}, reducer: merge}
  summary: {default: null}
config: {max_concurrency: 8}
nodes:
  seed:
    python: det_lib:seed
    next: [left, right, each]
  left:                       # a two-step branch: the join has to wait for it
    python: det_lib:branch
    next: left2
  left2:
    python: det_lib:branch
    next: join
  right:
    python: det_lib:branch
    next: join
  each:
    foreach: "{{ state.items }}"
    python: det_lib:square
    save: results
    next: [score, join]
  score:
    foreach: "{{ state.items[::3] }}"
    python: det_lib:score
    next: join
  join:
    needs: [left2, right, each, score]
    python: det_lib:join
"""


def run_at(tmp_path: Path, db: str, concurrency: int) -> dict[str, Any]:
    logs = tmp_path / f"logs-{concurrency}"
    logs.mkdir()
    p = subprocess.run(
        [
            FLOWRUN,
            "run",
            "wf.yaml",
            "--db",
            db,
            "--max-concurrency",
            str(concurrency),
            "--json",
            "--quiet",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DET_LOGS": str(logs)},
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def test_same_state_and_step_digests_at_any_concurrency(
    write: Write, tmp_path: Path, store_url: str
) -> None:
    write("det_lib.py", LIB)
    write("wf.yaml", WORKFLOW)
    finals: dict[int, str] = {}
    digests: dict[int, list[str]] = {}
    tasks: dict[int, list[list[str]]] = {}
    for conc in (1, 3, 8):
        out = run_at(tmp_path, store_url, conc)  # three runs, one store
        assert out["status"] == "succeeded"
        store = open_store(store_url, readonly=True)
        stored = store.load_latest(out["run_id"]).state
        assert stored == out["state"]
        finals[conc] = json.dumps(stored, ensure_ascii=False)  # key order counts too
        steps = store.steps(out["run_id"])
        digests[conc] = [s["digest"] for s in steps]
        tasks[conc] = [[t["key"] for t in s["tasks"]] for s in steps]
        # the join ran exactly once: one task result, one line in its side log
        assert sum(1 for r in store.task_results(out["run_id"]) if r.node == "join") == 1
        assert (tmp_path / f"logs-{conc}" / "join").read_text().split() == ["3"]
        store.close()

    assert finals[1] == finals[3] == finals[8]
    assert digests[1] == digests[3] == digests[8]
    assert tasks[1] == tasks[3] == tasks[8]
    assert len(digests[1]) == 4

    state = json.loads(finals[8])
    # foreach results merge in item order, whatever order the tasks finished in
    assert state["results"] == [{"item": i, "square": i * i} for i in range(30)]
    finished = [int(x) for x in (tmp_path / "logs-8" / "finished").read_text().split()]
    assert sorted(finished) == list(range(30))
    assert finished != list(range(30)), "8 threads with random naps finished in item order?"
    assert state["trail"] == ["seed", "left", "right", "left2"]
    assert state["total"] == len("left") + len("right") + sum(range(0, 30, 3)) + len("left2")
    assert state["best"] == 50  # max(len("right") * 10, 27, ...)
    assert state["by_item"] == {str(i): i // 3 for i in range(0, 30, 3)}
    assert state["summary"] == {
        "squares": sum(i * i for i in range(30)),
        "trail": ["seed", "left", "right", "left2"],
        "total": state["total"],
    }
