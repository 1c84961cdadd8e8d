"""Typed frontiers and lazy steps end to end: what older flowruns stored resumes, and a
big ``foreach`` (its tasks made on demand, merged as they arrive) killed mid-step
resumes to the result of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from flowrun.engine.runtime.tasks import LAZY_ABOVE

from tests.support.installed import FLOWRUN
from tests.support.stores import integrity_ok

DATA = Path(__file__).parent.parent / "engine" / "data"


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def step_rows(db: Path, run_id: str) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT step, digest, frontier FROM steps WHERE run_id = ? AND step >= 0 ORDER BY step",
            (run_id,),
        ).fetchall()


JOINLIB = """
import os


def c(state, ctx):
    if not os.path.exists("fixed"):
        raise RuntimeError("not fixed yet")
    return {"c": state["x"] + 1}


def j(state, ctx):
    return {"total": state["x"] + state["c"]}
"""

JOIN_YAML = """name: old-join
state:
  x: {default: 0}
  c: {default: 0}
  total: {default: 0}
start: [a, b]
nodes:
  a:
    set: {x: 41}
    next: j
  b:
    set: {}
    next: c
  c:
    python: joinlib:c
    next: j
  j:
    needs: [a, c]
    python: joinlib:j
"""


def test_a_run_whose_frontier_an_older_flowrun_stored_resumes_to_the_same_result(
    tmp_path: Path,
) -> None:
    # the database an older flowrun left: step 1 failed, a join held with its progress
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript((DATA / "old_frontier_run.sql").read_text())
    (tmp_path / "joinlib.py").write_text(JOINLIB)
    (tmp_path / "join.yaml").write_text(JOIN_YAML)
    (tmp_path / "fixed").touch()
    p = flowrun(
        "resume", "old", "--db", str(db), "--workflow", "join.yaml", "--json", "-q", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"x": 41, "c": 42, "total": 83}
    # an uninterrupted run of today's flowrun: the same frontiers, text for text, and digests
    ref = tmp_path / "ref.db"
    p = flowrun("run", "join.yaml", "--db", str(ref), "--run-id", "old", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert step_rows(db, "old") == step_rows(ref, "old")


ITEMS = LAZY_ABOVE + 8_000  # past the threshold: the step's tasks are made on demand

BIGLIB = """
def make(state, ctx):
    return list(range(state["count"]))


def double(state, ctx):
    return {"out": ctx.item * 2, "seen": {str(ctx.index % 7): ctx.index}, "total": ctx.item}


def check(state, ctx):
    return {"summary": [len(state["out"]), sum(state["out"]), state["total"]]}
"""

BIG_YAML = f"""name: big
state:
  count: {{default: {ITEMS}}}
  items: {{default: []}}
  out: {{default: [], reducer: append}}
  seen: {{default: {{}}, reducer: merge}}
  total: {{default: 0, reducer: add}}
  summary: {{default: null}}
config: {{max_concurrency: 4, queue_depth: 64}}
nodes:
  make:
    python: biglib:make
    save: items
    next: map
  map:
    foreach: "{{{{ state.items }}}}"
    python: biglib:double
    next: check
  check:
    python: biglib:check
"""


def test_a_big_foreach_killed_mid_step_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    (tmp_path / "biglib.py").write_text(BIGLIB)
    (tmp_path / "big.yaml").write_text(BIG_YAML)
    ref = tmp_path / "ref.db"
    p = flowrun(
        "run", "big.yaml", "--db", str(ref), "--run-id", "big", "--json", "-q", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    want = json.loads(p.stdout)["state"]
    assert want["summary"] == [ITEMS, ITEMS * (ITEMS - 1), ITEMS * (ITEMS - 1) // 2]
    assert want["out"] == [i * 2 for i in range(ITEMS)]  # tree order, whatever the timing

    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [FLOWRUN, "run", "big.yaml", "--db", str(db), "--run-id", "big", "-q"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        saved = 0
        while saved < ITEMS // 4:  # a quarter of the foreach's results saved: kill it
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "the foreach never got going"
            time.sleep(0.05)
            try:
                with sqlite3.connect(db, timeout=5) as c:
                    (saved,) = c.execute(
                        "SELECT count(*) FROM task_results WHERE step = 1"
                    ).fetchone()
            except sqlite3.OperationalError:
                saved = 0  # the database is not made yet
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert integrity_ok(db)
    assert [s for s, _, _ in step_rows(db, "big")] == [0]  # killed inside the foreach's step
    p = flowrun("resume", "big", "--db", str(db), "--json", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == want
    assert step_rows(db, "big") == step_rows(ref, "big")
    with sqlite3.connect(db) as c:  # each task's event once, in task order
        rows = c.execute(
            "SELECT json_extract(data, '$.index') FROM events"
            " WHERE type = 'task_succeeded' AND step = 1 ORDER BY seq"
        ).fetchall()
    assert [i for (i,) in rows] == list(range(ITEMS))
