"""SQLiteStore on real files: pragmas, migrations, atomic step commit, idempotency, leases."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import LeaseLost, ResumeRefused, StepAlreadyCommitted, StoreError
from flowrun.engine.records import Entry, Frontier
from flowrun.engine.store.base import Event, StepCommit, TaskResult
from flowrun.engine.store.leases import start_time
from flowrun.engine.store.migrations import MIGRATIONS
from flowrun.engine.store.sqlite import LEASE_STALE_S, SQLiteStore

FRONTIER0 = Frontier.from_json(
    {"entries": [{"node": "a", "parent": "", "edge": 0}], "held": [], "since": {}}
)


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close()


def new_run(store: SQLiteStore, run_id: str = "r1", **state: Any) -> int:
    store.create_run(
        run_id,
        workflow_name="wf",
        workflow_path="/x/wf.yaml",
        workflow_text="name: wf\n",
        workflow_digest="d0",
        state=state or {"n": 0, "big": "x"},
        frontier=FRONTIER0,
        inputs={},
    )
    return store.take_lease(run_id).token


def commit(
    step: int, key: str | None = None, changed: dict[str, str] | None = None, **kw: Any
) -> StepCommit:
    return StepCommit(
        step=step,
        idempotency_key=key or f"idem-{step}",
        digest=f"digest-{step}",
        changed={"n": str(step + 1)} if changed is None else changed,
        frontier=Frontier((Entry("a", f"p{step}", 0),)),
        tasks=[{"key": f"k{step}", "node": "a", "index": None}],
        **kw,
    )


def result(step: int, key: str = "k", status: str = "ok") -> TaskResult:
    return TaskResult(step=step, order_key=key, node="a", index=None, status=status, delta={})


def pragma(store: SQLiteStore, name: str) -> Any:
    return store.conn.execute(f"PRAGMA {name}").fetchone()[0]


# the file and its pragmas ----------------------------------------------------------


def test_new_database_file_is_private_wal_and_versioned(db: Path) -> None:
    old = os.umask(0o022)
    try:
        s = SQLiteStore(db)
    finally:
        os.umask(old)
    new_run(s)
    assert db.stat().st_mode & 0o777 == 0o600
    for side in ("-wal", "-shm"):  # SQLite gives them the main file's mode
        assert Path(f"{db}{side}").stat().st_mode & 0o777 == 0o600
    assert pragma(s, "journal_mode") == "wal"
    assert pragma(s, "user_version") == len(MIGRATIONS)
    assert pragma(s, "foreign_keys") == 1
    assert pragma(s, "busy_timeout") >= 5000
    s.close()


def test_synchronous_is_normal_by_default_and_full_on_request(tmp_path: Path) -> None:
    from flowrun.cli.database import open_store

    normal = open_store(str(tmp_path / "a.db"))
    full = open_store(str(tmp_path / "b.db"), "full")
    assert pragma(normal, "synchronous") == 1  # NORMAL
    assert pragma(full, "synchronous") == 2  # FULL
    assert pragma(SQLiteStore(tmp_path / "a.db", durability="full"), "synchronous") == 2
    normal.close()
    full.close()


def test_reopening_applies_no_migration_twice(db: Path) -> None:
    s = SQLiteStore(db)
    new_run(s)
    s.close()
    s = SQLiteStore(db)
    assert pragma(s, "user_version") == len(MIGRATIONS)
    assert s.get_run("r1").workflow_name == "wf"
    s.close()


def test_a_newer_schema_is_refused(db: Path) -> None:
    SQLiteStore(db).close()
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    c.close()
    with pytest.raises(StoreError, match="newer than this flowrun"):
        SQLiteStore(db)


def test_a_file_that_is_not_a_database_is_a_store_error(db: Path) -> None:
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as exc:
        SQLiteStore(db)
    assert exc.value.hint and "--db" in exc.value.hint


# atomic step commit ----------------------------------------------------------------


class FailAfterStateWrite:
    """Wraps the store's connection; raises right after the next state_kv insert ran."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.fired = False

    def _check(self, sql: str) -> None:
        if not self.fired and sql.lstrip().upper().startswith("INSERT INTO STATE_KV"):
            self.fired = True
            raise sqlite3.OperationalError("disk I/O error (injected)")

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cur = self._conn.execute(sql, *args)
        self._check(sql)
        return cur

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        cur = self._conn.executemany(sql, rows)
        self._check(sql)
        return cur

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def snapshot(db: Path) -> dict[str, list[Any]]:
    c = sqlite3.connect(db)
    try:
        return {
            t: c.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
            for t in ("runs", "steps", "state_kv", "events", "task_results")
        }
    finally:
        c.close()


def test_a_failure_inside_the_step_transaction_leaves_the_last_checkpoint_intact(
    store: SQLiteStore, db: Path
) -> None:
    token = new_run(store)
    store.save_step("r1", token, commit(0))
    before = store.load_latest("r1")
    rows_before = snapshot(db)

    real = store.conn
    store.conn = FailAfterStateWrite(real)  # type: ignore[assignment]
    ev = Event("r1", 1, time.time(), 1, None, "step_committed")
    with pytest.raises(StoreError, match="injected"):
        store.save_step(
            "r1",
            token,
            commit(1, changed={"n": "2", "big": '"y"'}, events=[ev], results=[result(1)]),
        )
    assert store.conn.fired  # type: ignore[attr-defined]
    store.conn = real
    assert not real.in_transaction

    assert store.load_latest("r1") == before
    assert snapshot(db) == rows_before  # no partial state, frontier, step, event or result row
    other = SQLiteStore(db)  # and another connection sees the same
    assert other.load_latest("r1") == before
    other.close()

    store.save_step("r1", token, commit(1, changed={"n": "2", "big": '"y"'}))  # the retry works
    cp = store.load_latest("r1")
    assert (cp.step, cp.state) == (2, {"n": 2, "big": "y"})
    assert cp.frontier.entries[0].parent == "p1"


def test_a_full_disk_during_a_commit_is_a_store_error_and_changes_nothing(
    store: SQLiteStore, db: Path
) -> None:
    token = new_run(store)
    store.save_step("r1", token, commit(0))
    before = store.load_latest("r1")
    rows_before = snapshot(db)
    (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
    store.conn.execute(f"PRAGMA max_page_count = {pages + 4}")  # a real SQLITE_FULL
    big = commit(1, changed={"n": "2", "big": '"' + "x" * 1_000_000 + '"'})
    with pytest.raises(StoreError, match="full") as exc:
        store.save_step("r1", token, big)
    assert str(db) in exc.value.message
    assert not store.conn.in_transaction
    assert store.load_latest("r1") == before
    assert snapshot(db) == rows_before

    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space was freed
    store.save_step("r1", token, big)
    assert store.load_latest("r1").state["big"] == "x" * 1_000_000


def test_an_exception_inside_a_write_transaction_rolls_it_back_and_is_raised_as_it_was(
    store: SQLiteStore, db: Path
) -> None:
    token = new_run(store)
    with pytest.raises(ValueError, match="mine"), store._tx() as c:
        c.execute("UPDATE runs SET status = 'odd' WHERE run_id = 'r1'")
        raise ValueError("mine")
    assert not store.conn.in_transaction
    assert store.get_run("r1").status == "running"
    # the lock was let go: another thread writes at once
    other = threading.Thread(target=store.set_max_cost, args=("r1", token, 2.0))
    other.start()
    other.join(timeout=10)
    assert not other.is_alive()
    assert store.get_run("r1").max_cost_usd == 2.0


def test_a_commit_the_database_refuses_is_rolled_back_and_raised(store: SQLiteStore) -> None:
    token = new_run(store)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), store._tx() as c:
        c.execute("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT, which fails
        c.execute(
            "INSERT INTO state_kv (run_id, key, step, value) VALUES ('no such run', 'n', 0, '1')"
        )
    assert not store.conn.in_transaction
    n = store.conn.execute("SELECT count(*) FROM state_kv WHERE run_id = 'no such run'")
    assert n.fetchone() == (0,)
    assert store.load_latest("r1").state == {"n": 0, "big": "x"}
    store.save_step("r1", token, commit(0))  # the store writes on
    assert store.load_latest("r1").state["n"] == 1


def test_none_parameters_are_stored_as_null(store: SQLiteStore) -> None:
    token = new_run(store)
    ev = Event("r1", 1, time.time(), None, None, "x", None, None, None, None)
    store.save_step("r1", token, commit(0, events=[ev]))
    row = store.conn.execute(
        "SELECT typeof(step), typeof(node), typeof(attempt), typeof(duration), typeof(error),"
        " typeof(data) FROM events WHERE seq = 1"
    ).fetchone()
    assert row == ("null",) * 6
    assert store.events("r1")[0] == ev
    assert store.conn.execute("SELECT typeof(error) FROM runs").fetchone() == ("null",)


def test_an_adapter_the_program_registered_for_none_is_left_in_place() -> None:
    code = (
        "import sqlite3\n"
        "mine = lambda v: 'none'\n"
        "sqlite3.register_adapter(type(None), mine)\n"
        "import flowrun.engine.store.sqlite_db\n"
        "assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)] is mine\n"
        "c = sqlite3.connect(':memory:')\n"
        "print(c.execute('SELECT ?', (None,)).fetchone()[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "none\n"


def test_a_repeated_idempotency_key_is_rejected_by_the_database(store: SQLiteStore) -> None:
    token = new_run(store)
    store.save_step("r1", token, commit(0, key="K"))
    assert store.check_idempotency("K")
    assert not store.check_idempotency("other")
    before = store.load_latest("r1")
    with pytest.raises(StepAlreadyCommitted, match="step 0 of run r1 was already committed"):
        store.save_step("r1", token, commit(0, key="K"))
    with pytest.raises(StepAlreadyCommitted):  # the same key under another step number
        store.save_step("r1", token, commit(1, key="K", changed={"n": "99"}))
    assert store.load_latest("r1") == before
    n_rows = store.conn.execute("SELECT count(*) FROM state_kv WHERE key = 'n'").fetchone()[0]
    assert n_rows == 2  # the initial value and step 0's


def test_only_changed_keys_are_written_and_history_reads_back(store: SQLiteStore) -> None:
    token = new_run(store, big="x" * 100_000, n=0)
    for step in range(20):
        store.save_step("r1", token, commit(step))
    (rows, size) = store.conn.execute(
        "SELECT count(*), sum(length(value)) FROM state_kv WHERE key = 'big'"
    ).fetchone()
    assert (rows, size) == (1, 100_002)
    assert store.load_latest("r1").state["n"] == 20
    assert store.load_at("r1", 7).state == {"n": 7, "big": "x" * 100_000}
    assert store.load_at("r1", 0).state["n"] == 0
    store.save_checkpoint("r1", "seven", 7)
    assert store.load_checkpoint("r1", "seven").state["n"] == 7
    with pytest.raises(ResumeRefused):
        store.load_checkpoint("r1", "nope")


def test_task_results_are_saved_one_by_one_and_replaced_on_retry(store: SQLiteStore) -> None:
    token = new_run(store)
    store.save_task_results("r1", token, [result(0, "a", "failed")])
    store.save_task_results("r1", token, [result(0, "b")])
    assert {k: r.status for k, r in store.load_task_results("r1", 0).items()} == {
        "a": "failed",
        "b": "ok",
    }
    store.save_task_results("r1", token, [result(0, "a")])
    assert store.load_task_results("r1", 0)["a"].status == "ok"


def test_events_stay_pending_until_marked_emitted(store: SQLiteStore) -> None:
    token = new_run(store)
    events = [Event("r1", i, time.time(), 0, "a", "x") for i in (1, 2, 3)]
    store.save_step("r1", token, commit(0, events=events))
    assert [e.seq for e in store.pending_events("r1")] == [1, 2, 3]
    assert store.next_event_seq("r1") == 4
    store.mark_events_emitted("r1", 2)
    assert [e.seq for e in store.pending_events("r1")] == [3]
    store.mark_events_emitted("r1", 1)  # never goes backwards
    assert [e.seq for e in store.pending_events("r1")] == [3]


# leases and fencing ----------------------------------------------------------------


def test_a_store_whose_lease_was_taken_over_cannot_commit(db: Path) -> None:
    a = SQLiteStore(db)
    token_a = new_run(a)
    a.save_step("r1", token_a, commit(0))
    b = SQLiteStore(db)
    token_b = b.take_lease("r1", force=True).token
    assert token_b > token_a

    before = b.load_latest("r1")
    with pytest.raises(LeaseLost, match="taken over"):
        a.save_step("r1", token_a, commit(1))
    with pytest.raises(LeaseLost):
        a.save_task_results("r1", token_a, [result(1)])
    with pytest.raises(LeaseLost):
        a.set_status("r1", token_a, "failed", error="late")
    assert not a.heartbeat("r1", token_a)
    a.release_lease("r1", token_a)  # a stale release leaves the new holder's lease alone
    assert b.load_latest("r1") == before
    assert b.load_task_results("r1", 1) == {}
    assert b.get_run("r1").status == "running"

    ev = Event("r1", 1, time.time(), 1, None, "step_committed")
    b.save_step("r1", token_b, commit(1, events=[ev]))
    assert b.heartbeat("r1", token_b)
    after = b.load_latest("r1")
    assert after.step == 2
    # the old holder replays the step b just committed, with the same event seq: still
    # LeaseLost (checked first), never a constraint error on rows the new holder wrote
    with pytest.raises(LeaseLost):
        a.save_step("r1", token_a, commit(1, events=[ev]))
    with pytest.raises(LeaseLost):
        a.set_status("r1", token_a, "failed", events=[ev])
    assert b.load_latest("r1") == after
    a.close()
    b.close()


def set_lease(db: Path, pid: int, started: int | None, beat: float) -> None:
    """Make ``pid`` (started at ``started``) the lease's owner, as its acquire_lease would."""
    c = sqlite3.connect(db)
    c.execute(
        "UPDATE runs SET lease_pid = ?, lease_start = ?, lease_heartbeat = ?", (pid, started, beat)
    )
    c.commit()
    c.close()


def test_a_live_owner_is_refused_even_when_silent_and_a_dead_one_taken_over(
    store: SQLiteStore, db: Path
) -> None:
    token = new_run(store)
    store.release_lease("r1", token)
    store.take_lease("r1")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = start_time(live.pid)
    try:
        set_lease(db, live.pid, started, time.time())
        with pytest.raises(ResumeRefused, match=f"being executed by pid {live.pid}") as exc:
            store.take_lease("r1")
        assert exc.value.exit_code == 3 and exc.value.hint and "--force" in exc.value.hint
        assert store.take_lease("r1", force=True).token > token

        # no heartbeat for too long, but the owner is alive on this host: still its run
        set_lease(db, live.pid, started, time.time() - LEASE_STALE_S - 1)
        with pytest.raises(ResumeRefused, match=f"being executed by pid {live.pid}"):
            store.take_lease("r1")
    finally:
        live.kill()
        live.wait()
    set_lease(db, live.pid, started, time.time())  # a fresh heartbeat, but the process is gone
    store.take_lease("r1")
    with pytest.raises(ResumeRefused, match="no run"):
        store.take_lease("nope")


def test_creating_a_run_id_twice_is_refused(store: SQLiteStore) -> None:
    new_run(store)
    with pytest.raises(ResumeRefused, match="already exists"):
        new_run(store)


def test_run_inputs_are_stored_once_apart_from_the_row_each_step_rewrites(
    store: SQLiteStore, db: Path
) -> None:
    big = {"doc": "x" * 100_000, "n": 1}
    store.create_run(
        "r1",
        workflow_name="wf",
        workflow_path="/x/wf.yaml",
        workflow_text="name: wf\n",
        workflow_digest="d0",
        state={"n": 0},
        frontier=FRONTIER0,
        inputs=big,
    )
    token = store.take_lease("r1").token
    for step in range(5):
        store.save_step("r1", token, commit(step))
    store.fork_run("r1", 3, "r2")
    assert store.inputs("r1") == big and store.inputs("r2") == big
    c = sqlite3.connect(db)
    # the runs row (UPDATEd at every step, rewritten whole by SQLite) holds no copy
    assert c.execute("SELECT max(length(inputs)) FROM runs").fetchone() == (2,)
    assert c.execute("SELECT run_id FROM run_inputs ORDER BY run_id").fetchall() == [
        ("r1",),
        ("r2",),
    ]
    c.close()


def test_migration_moves_inputs_out_of_the_runs_row(db: Path) -> None:
    s = SQLiteStore(db)
    new_run(s)
    s.close()
    before = next(i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE run_inputs" in m)
    c = sqlite3.connect(db, isolation_level=None)  # as the version before it left it
    c.execute("DROP TABLE run_inputs")
    c.execute("""UPDATE runs SET inputs = '{"topic": "tea"}'""")
    c.execute("ALTER TABLE state_kv DROP COLUMN delta")  # the migrations after it, undone
    c.execute(f"PRAGMA user_version = {before}")
    c.close()
    s = SQLiteStore(db)
    assert s.inputs("r1") == {"topic": "tea"}
    assert pragma(s, "user_version") == len(MIGRATIONS)
    (row,) = s.conn.execute("SELECT inputs FROM runs").fetchall()
    assert row == ("{}",)
    s.close()


def test_migration_makes_the_idempotency_key_unique_within_its_run(db: Path) -> None:
    s = SQLiteStore(db)
    for run_id in ("r1", "r2"):
        token = new_run(s, run_id)
        for step in range(3):
            s.save_step(run_id, token, commit(step, key=f"{run_id}-idem-{step}"))
    s.close()
    before = next(i for i, m in enumerate(MIGRATIONS) if "UNIQUE (run_id, idem_key)" in m)
    c = sqlite3.connect(db, isolation_level=None)  # steps as the version before it left them
    c.executescript(
        """
        CREATE TABLE steps_old (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            step INTEGER NOT NULL, idem_key TEXT NOT NULL UNIQUE, digest TEXT NOT NULL,
            tasks TEXT NOT NULL, frontier TEXT NOT NULL, committed_at REAL NOT NULL,
            PRIMARY KEY (run_id, step)
        ) WITHOUT ROWID;
        INSERT INTO steps_old SELECT * FROM steps;
        DROP TABLE steps;
        ALTER TABLE steps_old RENAME TO steps;
        """
    )
    rows = c.execute("SELECT * FROM steps ORDER BY run_id, step").fetchall()
    c.execute(f"PRAGMA user_version = {before}")
    c.close()
    s = SQLiteStore(db)
    assert pragma(s, "user_version") == len(MIGRATIONS)
    assert s.conn.execute("SELECT * FROM steps ORDER BY run_id, step").fetchall() == rows
    unique = [
        [col for (_, _, col) in s.conn.execute(f"PRAGMA index_info('{name}')")]
        for (_, name, is_unique, *_) in s.conn.execute("PRAGMA index_list('steps')")
        if is_unique
    ]
    assert sorted(unique) == [["run_id", "idem_key"], ["run_id", "step"]]
    assert s.check_idempotency("r2-idem-1", "r2") and not s.check_idempotency("r2-idem-1", "r1")
    token = s.take_lease("r1", force=True).token
    with pytest.raises(StepAlreadyCommitted):  # a key of the run, again, under a new step
        s.save_step("r1", token, commit(3, key="r1-idem-0"))
    assert s.load_latest("r1").step == 3
    s.close()


def test_reading_a_checkpoint_back_costs_the_same_after_ten_steps_or_two_thousand(
    store: SQLiteStore,
) -> None:
    # counted in SQLite's virtual machine instructions (not time): the versions a run
    # left behind are never visited, whatever the planner knows of the table
    ops = 0

    def count() -> int:
        nonlocal ops
        ops += 1
        return 0

    def cost(run_id: str, steps: int) -> int:
        nonlocal ops
        token = new_run(store, run_id, n=0, rows=[])
        for step in range(steps):
            store.save_step(run_id, token, commit(step, changed={"n": str(step + 1)}))
        store.conn.set_progress_handler(count, 1)
        ops = 0
        cp = store.load_latest(run_id)
        store.conn.set_progress_handler(None, 1)
        assert cp.state["n"] == steps
        return ops

    short, long = cost("short", 10), cost("long", 2000)
    assert long < 1.5 * short, (short, long)  # 219 and 219 (before: 445 and 66,116)
