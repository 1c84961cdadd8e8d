"""``flowrun fork`` (a new run from a committed step of an old one) and ``flowrun prune``."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flowrun.engine import SQLiteStore
from flowrun.engine.store.base import LLMCall

from .conftest import FLOWRUN

Write = Callable[[str, str], Path]
DAY = 86400.0

LIB = """
import os


def _log(ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.node} {ctx.step} {ctx.index}\\n")


def seed(state, ctx):
    _log(ctx)
    return {"items": list(range(1, state["n"] + 3)), "trail": [ctx.node]}


def square(state, ctx):
    _log(ctx)
    return ctx.item * ctx.item


def total(state, ctx):
    _log(ctx)
    return {"n": sum(state["squares"]), "trail": [ctx.node]}


def tail(state, ctx):
    _log(ctx)
    return {"n": state["n"] * 10 + ctx.step, "trail": [ctx.node]}


def flaky(state, ctx):
    _log(ctx)
    raise RuntimeError("b is broken")
"""

CHAIN = """
name: chain
state:
  n: {default: 1}
  items: {default: []}
  squares: {default: [], reducer: append}
  trail: {default: [], reducer: extend}
nodes:
  seed: {python: lib:seed, next: fan}
  fan: {foreach: "{{ state.items }}", python: lib:square, save: squares, next: total}
  total: {python: lib:total, next: tail}
  tail: {python: lib:tail}
"""

# which nodes each step of CHAIN runs (n=2: four items in step 1)
CHAIN_STEPS = {0: ["seed"], 1: ["fan"] * 4, 2: ["total"], 3: ["tail"]}


def flowrun(*args: str, cwd: Path, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if log is not None:
        env["FLOWRUN_TEST_LOG"] = str(log)
    return subprocess.run(
        [FLOWRUN, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def executed(log: Path, run_id: str) -> list[tuple[str, int]]:
    """(node, step) of every python call the run made, in order."""
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(r[1], int(r[2])) for r in rows if r[0] == run_id]


def backdate(db: Path, *run_ids: str, days: float) -> None:
    with sqlite3.connect(db) as c:
        c.executemany(
            "UPDATE runs SET created_at = created_at - ?, updated_at = updated_at - ?,"
            " finished_at = finished_at - ? WHERE run_id = ?",
            [(days * DAY, days * DAY, days * DAY, r) for r in run_ids],
        )
    c.close()


def rows_of(db: Path, run_id: str) -> dict[str, int]:
    """Rows per table holding ``run_id``, for every table that has a run_id column."""
    with sqlite3.connect(db) as c:
        tables = [t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for t in tables:
            cols = [r[1] for r in c.execute(f"PRAGMA table_info({t})")]
            if "run_id" in cols:
                (n,) = c.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", (run_id,)).fetchone()
                out[t] = n
    c.close()
    return out


@pytest.fixture
def chain(write: Write, tmp_path: Path) -> tuple[Path, Path]:
    """The CHAIN workflow run once as ``orig`` (with --set n=2): (db, log)."""
    write("lib.py", LIB)
    write("chain.yaml", CHAIN)
    db, log = tmp_path / "f.db", tmp_path / "calls.log"
    p = flowrun(
        *"run chain.yaml --db".split(),
        str(db),
        "--run-id",
        "orig",
        "--set",
        "n=2",
        cwd=tmp_path,
        log=log,
    )
    assert p.returncode == 0, p.stderr
    return db, log


def test_fork_from_step_n_reexecutes_only_steps_from_n_and_ends_in_the_same_state(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    db, log = chain
    orig = json.loads(flowrun("show", "orig", "--db", str(db), "--json", cwd=tmp_path).stdout)
    assert orig["state"]["n"] == (1 + 4 + 9 + 16) * 10 + 3
    assert executed(log, "orig") == [(n, s) for s, ns in CHAIN_STEPS.items() for n in ns]
    for n in range(4):
        fork_id = f"fork-{n}"
        p = flowrun(
            *f"fork orig --from-step {n} --run-id {fork_id} --db".split(),
            str(db),
            "--json",
            cwd=tmp_path,
            log=log,
        )
        assert p.returncode == 0, p.stderr
        assert f"run {fork_id} forked from orig at step {n}" in p.stderr
        out = json.loads(p.stdout)
        assert out["run_id"] == fork_id
        assert out["status"] == "succeeded"
        assert out["forked_from"] == {"run_id": "orig", "step": n}
        # the same state and the same state digest as the original, step numbers included
        assert out["state"] == orig["state"]
        assert out["digest"] == orig["digest"]
        assert out["steps"] == orig["steps"] == 4
        want = [(node, s) for s, ns in CHAIN_STEPS.items() if s >= n for node in ns]
        assert executed(log, fork_id) == want
        steps = [
            s["step"]
            for s in json.loads(
                flowrun("show", fork_id, "--db", str(db), "--json", cwd=tmp_path).stdout
            )["step_log"]
            if s["tasks"]
        ]
        assert steps == list(range(n, 4))  # later history is the fork's own, none copied
    # the original is untouched, and a fork outlives its parent being pruned
    assert executed(log, "orig") == [(n, s) for s, ns in CHAIN_STEPS.items() for n in ns]
    backdate(db, "orig", days=60)
    p = flowrun("prune", "--db", str(db), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert [r["run_id"] for r in json.loads(p.stdout)["runs"]] == ["orig"]
    show = flowrun("show", "fork-2", "--db", str(db), cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert "forked    from orig at step 2" in show.stderr
    assert '"n": 303' in show.stderr


def test_fork_of_a_failed_run_onto_a_fixed_workflow_reruns_only_the_failed_part(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    broken = """
    name: mend
    state:
      n: {default: 3}
      items: {default: []}
      trail: {default: [], reducer: extend}
    nodes:
      seed: {python: lib:seed, next: b}
      b: {python: BROKEN, next: tail}
      tail: {python: lib:tail}
    """
    write("broken.yaml", broken.replace("BROKEN", "lib:flaky"))
    fixed = broken.replace("BROKEN", "lib:total")
    write("fixed.yaml", fixed.replace("  trail:", "  squares: {default: []}\n      trail:"))
    db, log = tmp_path / "f.db", tmp_path / "calls.log"
    first = flowrun("run", "broken.yaml", "--db", str(db), "--run-id", "bad", cwd=tmp_path, log=log)
    assert first.returncode == 1, first.stderr
    assert "b is broken" in first.stderr
    p = flowrun(
        *"fork bad --from-step 1 --workflow fixed.yaml --run-id good --db".split(),
        str(db),
        "--json",
        cwd=tmp_path,
        log=log,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    # squares is new in fixed.yaml: it starts at its default; seed's items came from `bad`
    assert out["state"]["items"] == [1, 2, 3, 4, 5]
    assert out["state"]["squares"] == []
    assert out["state"]["trail"] == ["seed", "b", "tail"]
    assert out["state"]["n"] == 0 * 10 + 2
    assert executed(log, "bad") == [("seed", 0), ("b", 1)]
    assert executed(log, "good") == [("b", 1), ("tail", 2)]
    # the fork runs the fixed workflow from now on; the failed run stays failed
    shown = flowrun("show", "good", "--db", str(db), "--json", cwd=tmp_path)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["forked_from"] == {"run_id": "bad", "step": 1}
    old = flowrun("show", "bad", "--db", str(db), "--json", cwd=tmp_path)
    assert old.returncode == 1
    assert json.loads(old.stdout)["status"] == "failed"
    assert json.loads(old.stdout)["forked_from"] is None


def test_fork_refuses_a_step_past_the_last_committed_one_an_unknown_run_and_missing_nodes(
    chain: tuple[Path, Path], write: Write, tmp_path: Path
) -> None:
    db, log = chain
    for step in ("4", "99"):
        p = flowrun("fork", "orig", "--from-step", step, "--db", str(db), cwd=tmp_path, log=log)
        assert p.returncode == 2, p.stderr
        assert f"--from-step {step} is beyond run orig's last committed step (3)" in p.stderr
        assert "hint: pick a step from 0 to 3" in p.stderr
        assert "Traceback" not in p.stderr
    negative = flowrun("fork", "orig", "--from-step", "-1", "--db", str(db), cwd=tmp_path)
    assert negative.returncode == 2
    unknown = flowrun("fork", "nope", "--from-step", "1", "--db", str(db), cwd=tmp_path)
    assert unknown.returncode == 3
    assert "no run matches 'nope'" in unknown.stderr
    write(
        "other.yaml", CHAIN.replace("  tail: {python: lib:tail}\n", "").replace(", next: tail", "")
    )
    missing = flowrun(
        *"fork orig --from-step 3 --workflow other.yaml --db".split(),
        str(db),
        cwd=tmp_path,
        log=log,
    )
    assert missing.returncode == 2
    assert "runs tail, which" in missing.stderr
    # nothing was created by the refused forks, and nothing ran
    runs = json.loads(flowrun("runs", "--db", str(db), "--json", cwd=tmp_path).stdout)
    assert [r["run_id"] for r in runs] == ["orig"]
    assert {line.split()[0] for line in log.read_text().splitlines()} == {"orig"}


def test_prune_deletes_old_runs_with_all_their_rows_but_keeps_recent_and_live_ones(
    write: Write, tmp_path: Path
) -> None:
    write(
        "old.yaml",
        """
        name: old
        state: {out: {default: ""}}
        nodes:
          talk: {shell: "echo hello; echo err >&2", save: out, next: end}
          end: {shell: "exit $((1 + 1))"}
        """,
    )
    write(
        "new.yaml",
        """
        name: new
        state: {n: {default: 0}}
        nodes:
          a: {set: {n: 1}}
        """,
    )
    db = tmp_path / "f.db"
    for run_id in ("old-1", "old-2", "busy"):
        p = flowrun("run", "old.yaml", "--db", str(db), "--run-id", run_id, cwd=tmp_path)
        assert p.returncode == 1, p.stderr
    assert (
        flowrun("run", "new.yaml", "--db", str(db), "--run-id", "recent", cwd=tmp_path).returncode
        == 0
    )
    assert (
        flowrun("run", "new.yaml", "--db", str(db), "--run-id", "done", cwd=tmp_path).returncode
        == 0
    )
    store = SQLiteStore(db)
    store.save_checkpoint("old-1", "mark", 0)
    store.record_llm_call(
        LLMCall("old-1", 0, "talk", None, 1, "openai", "gpt-4o-mini", 10, 2, ts=time.time())
    )
    store.close()
    backdate(db, "old-1", "old-2", "busy", "done", days=40)
    with sqlite3.connect(db) as c:  # "busy" is old but driven right now by a live process
        c.execute(
            "UPDATE runs SET status = 'running', lease_host = ?, lease_pid = ?,"
            " lease_heartbeat = ? WHERE run_id = 'busy'",
            (socket.gethostname(), os.getpid(), time.time()),
        )
        c.execute("UPDATE runs SET status = 'succeeded' WHERE run_id = 'done'")
        (old_digest,) = c.execute(
            "SELECT workflow_digest FROM runs WHERE run_id = 'old-1'"
        ).fetchone()
    c.close()
    before = {r: rows_of(db, r) for r in ("old-1", "old-2", "busy", "recent", "done")}
    assert set(before["old-1"]) >= {
        "runs",
        "steps",
        "state_kv",
        "task_results",
        "events",
        "checkpoints",
        "llm_calls",
    }
    assert all(before["old-1"][t] > 0 for t in before["old-1"]), before["old-1"]

    dry = flowrun("prune", "--db", str(db), "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    out = json.loads(dry.stdout)
    assert out["dry_run"] is True
    assert [r["run_id"] for r in out["runs"]] == ["old-1", "old-2", "done"]
    assert out["skipped_live"] == ["busy"]
    assert {r: rows_of(db, r) for r in before} == before  # a dry run deletes nothing
    human = flowrun("prune", "--db", str(db), "--dry-run", cwd=tmp_path)
    assert "would delete old-1" in human.stderr
    assert "dry run: would delete 3 runs; kept 1 with a live lease" in human.stderr

    failed = flowrun("prune", "--db", str(db), "--status", "failed", "--json", cwd=tmp_path)
    assert failed.returncode == 0, failed.stderr
    assert [r["run_id"] for r in json.loads(failed.stdout)["runs"]] == ["old-1", "old-2"]
    assert rows_of(db, "done") == before["done"]

    p = flowrun("prune", "--db", str(db), "--older-than", "30d", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "deleted 1 run, reclaimed" in p.stderr
    assert "kept 1 with a live lease" in p.stderr
    for gone in ("old-1", "old-2", "done"):
        assert set(rows_of(db, gone).values()) == {0}, gone
        shown = flowrun("show", gone, "--db", str(db), cwd=tmp_path)
        assert shown.returncode == 3
    assert rows_of(db, "busy") == before["busy"]
    assert rows_of(db, "recent") == before["recent"]
    with sqlite3.connect(db) as c:
        digests = {d for (d,) in c.execute("SELECT digest FROM workflows")}
        used = {d for (d,) in c.execute("SELECT workflow_digest FROM runs")}
    c.close()
    assert old_digest in used  # "busy" still needs the old workflow's text
    assert digests == used  # no workflow text is left that no run uses
    # a shorter age reaches the recent run too; the live one is never deleted
    p = flowrun("prune", "--db", str(db), "--older-than", "0s", "--json", cwd=tmp_path)
    assert [r["run_id"] for r in json.loads(p.stdout)["runs"]] == ["recent"]
    assert rows_of(db, "busy") == before["busy"]


def test_prune_reclaims_the_space_of_a_big_run(write: Write, tmp_path: Path) -> None:
    write(
        "big.yaml",
        """
        name: big
        state: {blob: {default: ""}}
        nodes:
          a: {python: "blob:make", next: b}
          b: {python: "blob:make"}
        """,
    )
    write("blob.py", "def make(state, ctx):\n    return {'blob': ctx.node * 3_000_000}\n")
    write("small.yaml", "name: small\nstate: {n: {default: 0}}\nnodes:\n  a: {set: {n: 1}}\n")
    db = tmp_path / "f.db"
    assert (
        flowrun("run", "big.yaml", "--db", str(db), "--run-id", "big", cwd=tmp_path).returncode == 0
    )
    assert flowrun("run", "small.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    size = db.stat().st_size  # the processes have exited: the WAL is checkpointed
    assert size > 6_000_000
    nothing = flowrun("prune", "--db", str(db), "--json", cwd=tmp_path)
    assert json.loads(nothing.stdout)["count"] == 0
    assert db.stat().st_size == size  # nothing deleted: no VACUUM
    backdate(db, "big", days=31)
    p = flowrun("prune", "--db", str(db), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["run_id"] for r in out["runs"]] == ["big"]
    assert out["bytes_reclaimed"] > 5_000_000
    assert db.stat().st_size < 200_000
    assert db.stat().st_mode & 0o777 == 0o600
    runs = json.loads(flowrun("runs", "--db", str(db), "--json", cwd=tmp_path).stdout)
    assert [r["workflow"] for r in runs] == ["small"]


def test_prune_rejects_a_bad_duration_or_status(tmp_path: Path) -> None:
    for args, text in (
        (["--older-than", "3 weeks"], "--older-than '3 weeks' is not a duration"),
        (["--older-than", "-5d"], "is not a duration"),
        (["--status", "done"], "--status must be one of"),
    ):
        p = flowrun("prune", "--db", str(tmp_path / "f.db"), *args, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert text in p.stderr
        assert "Traceback" not in p.stderr
