"""The durability contract (SPEC §4) end to end: failures, fixes, concurrency, checkpoint cost.

The end-to-end tests run with their runs in a SQLite file and in a PostgreSQL database
(``store_url``); the in-process ones that break a commit on purpose are SQLite's."""

from __future__ import annotations

import collections
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import Engine, SQLiteStore, StoreError, load_workflow
from flowrun.engine.store.base import StepCommit
from typer.testing import CliRunner

from tests.engine.store.test_store import FailAfterStateWrite
from tests.support.installed import FLOWRUN
from tests.support.stores import integrity_ok, is_postgres, query


def flowrun(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def executions(log: Path) -> collections.Counter[tuple[int, str, str]]:
    out: collections.Counter[tuple[int, str, str]] = collections.Counter()
    for line in log.read_text().splitlines():
        _run, step, node, index = line.split(" ")
        out[(int(step), node, index)] += 1
    return out


# failure, then the fix, then resume ---------------------------------------------------

FLAKY_LIB = """
import os
from pathlib import Path


def _log(ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.step} {ctx.node} {ctx.index}\\n")


def first(state, ctx):
    _log(ctx)
    return {"items": [10, 20, 30, 40]}


def check(state, ctx):
    _log(ctx)
    if ctx.index == 2:  # needs a flag file that does not exist yet
        return ctx.item + int(Path("flag.txt").read_text())
    return ctx.item


def final(state, ctx):
    _log(ctx)
    return {"total": sum(state["checked"])}
"""

FLAKY_YAML = """
name: flaky
state:
  items: {default: []}
  checked: {default: [], reducer: append}
  total: {default: 0}
nodes:
  first:
    python: flakylib:first
    next: check
  check:
    foreach: "{{ state.items }}"
    python: flakylib:check
    save: checked
    next: final
  final:
    python: flakylib:final
"""


def test_a_failed_node_exits_1_and_resume_after_the_fix_redoes_nothing_finished(
    tmp_path: Path, store_url: str
) -> None:
    (tmp_path / "flakylib.py").write_text(FLAKY_LIB)
    (tmp_path / "flaky.yaml").write_text(FLAKY_YAML)
    log = tmp_path / "tasks.log"
    env = dict(os.environ, FLOWRUN_TEST_LOG=str(log))
    db = store_url

    p = flowrun("run", "flaky.yaml", "--db", db, "--run-id", "f1", cwd=tmp_path, env=env)
    assert p.returncode == 1
    assert re.search(r"node 'check(\[2\])?' failed after 1 attempt\(s\)", p.stderr), p.stderr
    assert "FileNotFoundError" in p.stderr and "flag.txt" in p.stderr
    assert "flowrun resume" in p.stderr and "Traceback" not in p.stderr
    show = flowrun("show", "f1", "--db", db, "--json", cwd=tmp_path)
    assert show.returncode == 1
    assert json.loads(show.stdout)["status"] == "failed"
    assert executions(log) == {
        (0, "first", "None"): 1,
        (1, "check", "0"): 1,
        (1, "check", "1"): 1,
        (1, "check", "2"): 1,
        (1, "check", "3"): 1,
    }

    (tmp_path / "flag.txt").write_text("5")
    (tmp_path / "flaky.yaml").write_text("name: [broken\n")  # resume uses the stored definition
    p = flowrun("resume", "f1", "--db", db, "--json", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    assert out["state"]["checked"] == [10, 20, 35, 40]
    assert out["state"]["total"] == 105
    assert executions(log) == {
        (0, "first", "None"): 1,
        (1, "check", "0"): 1,
        (1, "check", "1"): 1,
        (1, "check", "2"): 2,  # only the failed task ran again
        (1, "check", "3"): 1,
        (2, "final", "None"): 1,
    }
    assert flowrun("show", "f1", "--db", db, cwd=tmp_path).returncode == 0


# several processes, one database file -------------------------------------------------

CHAIN_YAML = """
name: chain
state:
  n: {default: 0}
nodes:
  tick:
    set: {n: "{{ state.n + 1 }}"}
    routes:
      - when: "state.n < 50"
        to: tick
      - to: END
"""


def test_four_processes_running_different_runs_on_one_database_all_succeed(
    tmp_path: Path, store_url: str
) -> None:
    (tmp_path / "chain.yaml").write_text(CHAIN_YAML)
    db = store_url  # fresh: the processes also race to create the schema
    procs = [
        subprocess.Popen(
            [FLOWRUN, "run", "chain.yaml", "--db", db, "--run-id", f"c{i}", "--json", "-q"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr
        assert "locked" not in stderr
        out = json.loads(stdout)
        assert (out["status"], out["steps"], out["state"]) == ("succeeded", 50, {"n": 50})
    assert is_postgres(db) or integrity_ok(db)
    steps = query(
        db, "SELECT run_id, count(*) FROM steps WHERE step >= 0 GROUP BY run_id ORDER BY run_id"
    )
    assert steps == [(f"c{i}", 50) for i in range(4)]


# checkpoint cost ----------------------------------------------------------------------

BIG_YAML = """
name: big
state:
  big: {default: ""}
  n: {default: 0}
nodes:
  make:
    set: {big: "{{ 'x' * 1000000 }}"}
    next: tick
  tick:
    set: {n: "{{ state.n + 1 }}"}
    routes:
      - when: "state.n < 19"
        to: tick
      - to: END
"""


def test_an_unchanging_megabyte_is_written_to_state_once_across_twenty_steps(
    tmp_path: Path, store_url: str
) -> None:
    (tmp_path / "big.yaml").write_text(BIG_YAML)
    db = store_url
    p = flowrun("run", "big.yaml", "--db", db, "--run-id", "b", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert query(db, "SELECT count(*) FROM steps WHERE step >= 0") == [(20,)]
    rows = query(db, "SELECT step, length(value) FROM state_kv WHERE key = 'big' ORDER BY step")
    assert rows == [(-1, 2), (0, 1_000_002)]  # the default, then the megabyte once
    # the default and steps 1..19: the small key changes every step
    assert query(db, "SELECT count(*) FROM state_kv WHERE key = 'n'") == [(20,)]
    ((total,),) = query(db, "SELECT sum(length(value)) FROM state_kv")
    assert total < 1_001_000
    show = flowrun("show", "b", "--db", db, "--json", cwd=tmp_path)
    state = json.loads(show.stdout)["state"]
    assert state["n"] == 19 and state["big"] == "x" * 1_000_000


# a failure inside the step commit, in process ------------------------------------------

ATOMIC_LIB = """
import os


def grow(state, ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.step} {ctx.node} {ctx.index}\\n")
    return {"seen": [ctx.item * 10]}
"""

ATOMIC_YAML = """
name: atomic
state:
  items: {default: [1, 2, 3]}
  seen: {default: [], reducer: extend}
  n: {default: 0}
nodes:
  tick:
    set: {n: "{{ state.n + 1 }}"}
    next: grow
  grow:
    foreach: "{{ state.items }}"
    python: atomiclib:grow
    routes:
      - when: "state.n < 3"
        to: tick
      - to: END
"""


class FailingCommitStore(SQLiteStore):
    """Raises inside save_step's transaction, right after the state rows of ``fail_at``."""

    fail_at = 3

    def save_step(self, run_id: str, token: int, commit: StepCommit) -> None:
        if commit.step != self.fail_at:
            return super().save_step(run_id, token, commit)
        real = self.conn
        self.conn = FailAfterStateWrite(real)  # type: ignore[assignment]
        try:
            super().save_step(run_id, token, commit)
        finally:
            self.conn = real


def test_a_commit_that_fails_midway_changes_nothing_and_resume_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "atomiclib.py").write_text(ATOMIC_LIB)
    (tmp_path / "atomic.yaml").write_text(ATOMIC_YAML)
    log = tmp_path / "tasks.log"
    monkeypatch.setenv("FLOWRUN_TEST_LOG", str(log))
    wf = load_workflow(str(tmp_path / "atomic.yaml"))

    ref_store = SQLiteStore(tmp_path / "ref.db")
    ref = Engine(ref_store).start(wf, run_id="ref")
    assert ref.state["seen"] == [10, 20, 30] * 3
    log.unlink()

    db = tmp_path / "f.db"
    store = FailingCommitStore(db)
    with pytest.raises(StoreError, match="injected"):
        Engine(store).start(wf, run_id="a")
    store.close()

    check = SQLiteStore(db)
    cp = check.load_latest("a")
    assert cp.step == 3  # steps 0, 1 and 2 committed; step 3 did not
    assert cp.state == ref_store.load_at("ref", 3).state
    assert cp.frontier == ref_store.load_at("ref", 3).frontier
    partial = check.conn.execute(
        "SELECT (SELECT count(*) FROM state_kv WHERE run_id = 'a' AND step >= 3),"
        " (SELECT count(*) FROM steps WHERE run_id = 'a' AND step >= 3)"
    ).fetchone()
    assert partial == (0, 0)
    assert check.get_run("a").status == "running"  # unfinished: resume picks it up
    saved = {r.index for r in check.load_task_results("a", 3).values() if r.status == "ok"}
    check.close()

    store = SQLiteStore(db)
    result = Engine(store).resume(wf, "a")
    assert result.status == "succeeded"
    assert result.state == ref.state
    assert result.digest == ref.digest
    assert [s["digest"] for s in store.steps("a")] == [s["digest"] for s in ref_store.steps("ref")]
    runs = executions(log)
    for i in range(3):  # step 3 is a `grow` step: what was saved did not run again
        assert runs[(3, "grow", str(i))] == (1 if i in saved else 2)
    store.close()
    ref_store.close()


# --durability ------------------------------------------------------------------------


def test_durability_flag_sets_synchronous_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowrun.cli.app import app
    from flowrun.engine.store import sqlite

    (tmp_path / "chain.yaml").write_text(CHAIN_YAML.replace("< 50", "< 2"))
    seen: list[Any] = []

    class Spy(SQLiteStore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.conn.execute("PRAGMA synchronous").fetchone()[0])

    monkeypatch.setattr(sqlite, "SQLiteStore", Spy)  # what open_store builds for a path
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for flags, want in (([], 1), (["--durability", "full"], 2), (["--durability", "normal"], 1)):
        r = runner.invoke(app, ["run", "chain.yaml", "--db", "f.db", "-q", *flags])
        assert r.exit_code == 0, r.output
        assert seen[-1] == want
    r = runner.invoke(app, ["resume", "latest", "--db", "f.db", "-q", "--durability", "full"])
    assert r.exit_code == 0, r.output
    assert seen[-1] == 2

    p = flowrun("run", "chain.yaml", "--durability", "fast", cwd=tmp_path)
    assert p.returncode == 2
    assert "--durability must be normal or full" in p.stderr


def test_the_default_database_is_a_private_file_under_dot_flowrun(tmp_path: Path) -> None:
    (tmp_path / "chain.yaml").write_text(CHAIN_YAML.replace("< 50", "< 2"))
    p = flowrun("run", "chain.yaml", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    db = tmp_path / ".flowrun" / "flowrun.db"
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700
    c = sqlite3.connect(db)
    try:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        (status,) = c.execute("SELECT status FROM runs").fetchone()
        assert status == "succeeded"
    finally:
        c.close()

    env = dict(os.environ, FLOWRUN_DB=str(tmp_path / "other.db"))
    assert flowrun("run", "chain.yaml", "-q", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "other.db").stat().st_mode & 0o777 == 0o600
