"""``flowrun fork`` (a new run from a committed step of an old one) and ``flowrun prune``."""

from __future__ import annotations

import json
import os
import shlex
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import SQLiteStore
from flowrun.engine.store.base import LLMCall, ProcRecord

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]
DAY = 86400.0

LIB = """
import os
import shlex


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


class Cli:
    """``cli("fork orig --from-step 2 --json")`` runs the installed flowrun on one database."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.db = tmp_path / "f.db"
        self.log = tmp_path / "calls.log"  # python nodes append "run node step index"

    def __call__(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLOWRUN, *shlex.split(command), "--db", str(self.db)],
            cwd=self.cwd,
            env={**os.environ, "FLOWRUN_TEST_LOG": str(self.log)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def json(self, command: str) -> Any:
        p = self(command + " --json")
        assert p.stdout, p.stderr
        return json.loads(p.stdout)


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
def cli(write: Write, tmp_path: Path) -> Cli:
    write("lib.py", LIB)
    write("chain.yaml", CHAIN)
    return Cli(tmp_path)


@pytest.fixture
def chain(cli: Cli) -> Cli:
    """The CHAIN workflow, run once as ``orig`` with n=2."""
    p = cli("run chain.yaml --run-id orig --set n=2")
    assert p.returncode == 0, p.stderr
    return cli


def test_fork_from_step_n_reexecutes_only_steps_from_n_and_ends_in_the_same_state(
    chain: Cli,
) -> None:
    cli = chain
    orig = cli.json("show orig")
    assert orig["state"]["n"] == (1 + 4 + 9 + 16) * 10 + 3
    everything = [(node, s) for s, nodes in CHAIN_STEPS.items() for node in nodes]
    assert executed(cli.log, "orig") == everything
    for n in range(4):
        p = cli(f"fork orig --from-step {n} --run-id fork-{n} --json")
        assert p.returncode == 0, p.stderr
        assert f"run fork-{n} forked from orig at step {n}" in p.stderr
        out = json.loads(p.stdout)
        assert out["run_id"] == f"fork-{n}"
        assert out["status"] == "succeeded"
        assert out["forked_from"] == {"run_id": "orig", "step": n}
        # the same state and the same state digest as the original, step numbers included
        assert out["state"] == orig["state"]
        assert out["digest"] == orig["digest"]
        assert out["steps"] == orig["steps"] == 4
        assert executed(cli.log, f"fork-{n}") == [(node, s) for node, s in everything if s >= n]
        log = cli.json(f"show fork-{n}")["step_log"]
        assert [s["step"] for s in log if s["tasks"]] == list(range(n, 4))  # no history copied
    # the original is untouched, and a fork outlives its parent being pruned
    assert executed(cli.log, "orig") == everything
    backdate(cli.db, "orig", days=60)
    assert [r["run_id"] for r in cli.json("prune")["runs"]] == ["orig"]
    show = cli("show fork-2")
    assert show.returncode == 0, show.stderr
    assert "forked    from orig at step 2" in show.stdout
    assert ["n", "303"] in [line.split() for line in show.stdout.splitlines()]


def test_fork_of_a_failed_run_onto_a_fixed_workflow_reruns_only_the_failed_part(
    cli: Cli, write: Write
) -> None:
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
    first = cli("run broken.yaml --run-id bad")
    assert first.returncode == 1, first.stderr
    assert "b is broken" in first.stderr
    p = cli("fork bad --from-step 1 --workflow fixed.yaml --run-id good --json")
    assert p.returncode == 0, p.stderr
    state = json.loads(p.stdout)["state"]
    # seed's items come from `bad`; squares is new in fixed.yaml and starts at its default
    assert state["items"] == [1, 2, 3, 4, 5]
    assert state["squares"] == []
    assert state["trail"] == ["seed", "b", "tail"]
    assert state["n"] == 0 * 10 + 2  # tail: n * 10 + its step
    assert executed(cli.log, "bad") == [("seed", 0), ("b", 1)]
    assert executed(cli.log, "good") == [("b", 1), ("tail", 2)]
    shown = cli("show good --json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["forked_from"] == {"run_id": "bad", "step": 1}
    old = cli("show bad --json")  # the failed run stays as it was
    assert old.returncode == 1
    assert json.loads(old.stdout)["status"] == "failed"
    assert json.loads(old.stdout)["forked_from"] is None


def test_fork_refuses_a_step_past_the_last_committed_one_an_unknown_run_and_missing_nodes(
    chain: Cli, write: Write
) -> None:
    cli = chain
    for step in (4, 99):
        p = cli(f"fork orig --from-step {step}")
        assert p.returncode == 2, p.stderr
        assert f"--from-step {step} is beyond run orig's last committed step (3)" in p.stderr
        assert "hint: pick a step from 0 to 3" in p.stderr
        assert "Traceback" not in p.stderr
    assert cli("fork orig --from-step -1").returncode == 2
    unknown = cli("fork nope --from-step 1")
    assert unknown.returncode == 3
    assert "no run matches 'nope'" in unknown.stderr
    write(
        "other.yaml", CHAIN.replace("  tail: {python: lib:tail}\n", "").replace(", next: tail", "")
    )
    missing = cli("fork orig --from-step 3 --workflow other.yaml")
    assert missing.returncode == 2
    assert "step 3 of run orig runs tail, which" in missing.stderr
    # the refused forks created no run and ran nothing
    assert [r["run_id"] for r in cli.json("runs")] == ["orig"]
    assert {line.split()[0] for line in cli.log.read_text().splitlines()} == {"orig"}


def test_prune_deletes_old_runs_with_all_their_rows_but_keeps_recent_and_live_ones(
    cli: Cli, write: Write
) -> None:
    write(
        "old.yaml",
        """
        name: old
        state: {out: {default: ""}}
        nodes:
          talk: {shell: "echo hello; echo err >&2", save: out, next: end}
          end: {shell: "exit 2"}
        """,
    )
    write("new.yaml", "name: new\nstate: {n: {default: 0}}\nnodes:\n  a: {set: {n: 1}}\n")
    for run_id in ("old-1", "old-2", "busy"):
        assert cli(f"run old.yaml --run-id {run_id}").returncode == 1
    for run_id in ("recent", "done"):
        assert cli(f"run new.yaml --run-id {run_id}").returncode == 0
    store = SQLiteStore(cli.db)
    store.save_checkpoint("old-1", "mark", 0)
    store.record_llm_call(LLMCall("old-1", 0, "talk", None, 1, "openai", "gpt-4o-mini", 10, 2))
    token = store.take_lease("old-1").token  # a command a crash left in flight (procs)
    store.record_proc("old-1", token, ProcRecord("old-1", "h", 1, 1, 1, 1, 1, 0, "talk"))
    store.release_lease("old-1", token)
    store.close()
    backdate(cli.db, "old-1", "old-2", "busy", "done", days=40)
    with sqlite3.connect(cli.db) as c:  # "busy" is old, but a live process drives it now
        c.execute(
            "UPDATE runs SET status = 'running', lease_host = ?, lease_pid = ?,"
            " lease_heartbeat = ? WHERE run_id = 'busy'",
            (socket.gethostname(), os.getpid(), time.time()),
        )
        (old_digest,) = c.execute(
            "SELECT workflow_digest FROM runs WHERE run_id = 'busy'"
        ).fetchone()
    c.close()
    before = {r: rows_of(cli.db, r) for r in ("old-1", "old-2", "busy", "recent", "done")}
    tables = {"runs", "steps", "state_kv", "task_results", "events", "checkpoints", "llm_calls"}
    assert set(before["old-1"]) >= tables
    assert all(before["old-1"].values()), before["old-1"]  # a row in every table

    dry = cli.json("prune --dry-run")
    assert dry["dry_run"] is True
    assert [r["run_id"] for r in dry["runs"]] == ["old-1", "old-2", "done"]
    assert dry["skipped_live"] == ["busy"]
    assert {r: rows_of(cli.db, r) for r in before} == before  # a dry run deletes nothing
    human = cli("prune --dry-run")
    assert "would delete old-1" in human.stdout
    assert "dry run: would delete 3 runs; kept 1 with a live lease" in human.stdout

    assert [r["run_id"] for r in cli.json("prune --status failed")["runs"]] == ["old-1", "old-2"]
    assert rows_of(cli.db, "done") == before["done"]
    p = cli("prune --older-than 30d")
    assert p.returncode == 0, p.stderr
    assert "deleted 1 run, reclaimed" in p.stdout
    assert "kept 1 with a live lease" in p.stdout
    for gone in ("old-1", "old-2", "done"):
        assert set(rows_of(cli.db, gone).values()) == {0}, gone
        assert cli(f"show {gone}").returncode == 3
    assert rows_of(cli.db, "busy") == before["busy"]
    assert rows_of(cli.db, "recent") == before["recent"]
    with sqlite3.connect(cli.db) as c:
        texts = {d for (d,) in c.execute("SELECT digest FROM workflows")}
        used = {d for (d,) in c.execute("SELECT workflow_digest FROM runs")}
    c.close()
    assert old_digest in texts  # "busy" still needs the old workflow's text
    assert texts == used  # and no text is left that no run uses
    # a shorter age reaches the recent run too; the live one is never deleted
    assert [r["run_id"] for r in cli.json("prune --older-than 0s")["runs"]] == ["recent"]
    assert rows_of(cli.db, "busy") == before["busy"]


def test_prune_reclaims_the_space_of_a_big_run(cli: Cli, write: Write) -> None:
    write("blob.py", "def make(state, ctx):\n    return {'blob': ctx.node * 3_000_000}\n")
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
    write("small.yaml", "name: small\nstate: {n: {default: 0}}\nnodes:\n  a: {set: {n: 1}}\n")
    assert cli("run big.yaml --run-id big").returncode == 0
    assert cli("run small.yaml").returncode == 0
    size = cli.db.stat().st_size  # the processes have exited: the WAL is checkpointed
    assert size > 6_000_000
    assert cli.json("prune")["count"] == 0
    assert cli.db.stat().st_size == size  # nothing deleted: no VACUUM
    backdate(cli.db, "big", days=31)
    out = cli.json("prune")
    assert [r["run_id"] for r in out["runs"]] == ["big"]
    assert out["bytes_reclaimed"] > 5_000_000
    assert cli.db.stat().st_size < 200_000
    assert cli.db.stat().st_mode & 0o777 == 0o600
    assert [r["workflow"] for r in cli.json("runs")] == ["small"]


def test_prune_rejects_a_bad_duration_or_status(cli: Cli) -> None:
    for args, text in (
        ("--older-than '3 weeks'", "--older-than '3 weeks' is not a duration"),
        ("--older-than -5d", "--older-than '-5d' is not a duration"),
        ("--status done", "--status must be one of"),
    ):
        p = cli(f"prune {args}")
        assert p.returncode == 2, p.stderr
        assert text in p.stderr
        assert "Traceback" not in p.stderr
