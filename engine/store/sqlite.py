"""The SQLite store: one file, WAL, one explicit transaction per write.

Connections run in autocommit mode (``isolation_level=None``); every write is a
``BEGIN IMMEDIATE`` … ``COMMIT`` block from :meth:`SQLiteStore._tx`, so the
writer lock is taken up front and ``busy_timeout`` handles other processes.
Every write made on behalf of a run checks the run's lease token inside its
transaction (fencing): a process whose lease was taken over can never commit.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LeaseLost, ResumeRefused, StepAlreadyCommitted, StoreError, UsageError
from .base import Checkpoint, Event, LLMCall, PruneResult, RunRecord, StepCommit, TaskResult
from .migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 30_000
LEASE_STALE_S = 30.0
HOST = socket.gethostname()


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live, non-zombie process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lease_live(host: str | None, pid: int | None, beat: float | None, now: float) -> bool:
    """A lease whose holder still heartbeats (and, on this host, still exists)."""
    if host is None or beat is None or now - beat >= LEASE_STALE_S:
        return False
    return host != HOST or (pid is not None and pid_alive(pid))


class SQLiteStore:
    def __init__(self, path: str | os.PathLike[str], *, durability: str = "normal") -> None:
        self.path = Path(path)
        self.durability = durability
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create database {self.path}: {exc.strerror}") from None
        self._lock = threading.RLock()  # the heartbeat thread shares the connection
        self.conn = self._connect()
        self._migrate()

    # plumbing --------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open database {self.path}: {exc}",
                hint="is it a flowrun database? use --db to pick another file",
            ) from None
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                    self.conn.execute("COMMIT")
                except BaseException:
                    # SQLite may already have rolled back (disk full, I/O error): a second
                    # ROLLBACK would fail and hide the real cause
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:  # locked for too long, disk full, I/O
                raise StoreError(
                    f"cannot write to {self.path}: {exc}",
                    hint="nothing of the failed write was kept; fix the cause, then"
                    " `flowrun resume` continues from the last committed step",
                ) from exc

    def _migrate(self) -> None:
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this flowrun",
                hint="upgrade flowrun",
            )
        while version < len(MIGRATIONS):
            with self._tx() as c:
                (version,) = c.execute("PRAGMA user_version").fetchone()
                if version >= len(MIGRATIONS):
                    break
                for stmt in MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {version + 1}")
            version += 1

    def _fence(self, c: sqlite3.Connection, run_id: str, token: int, **updates: Any) -> None:
        updates["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in updates)
        cur = c.execute(
            f"UPDATE runs SET {cols} WHERE run_id = ? AND lease_token = ?",
            (*updates.values(), run_id, token),
        )
        if cur.rowcount != 1:
            raise LeaseLost(
                f"run {run_id} was taken over by another process; this one stops",
                hint="two processes drove the same run; only the newest lease may commit",
            )

    def close(self) -> None:
        self.conn.close()

    # runs -----------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        *,
        workflow_name: str,
        workflow_path: str,
        workflow_text: str,
        workflow_digest: str,
        state: dict[str, Any],
        frontier: dict[str, Any],
        inputs: dict[str, Any],
    ) -> None:
        now = time.time()
        try:
            with self._tx() as c:
                # The text lives apart from the run row: runs is updated every step,
                # and SQLite rewrites a whole row (overflow pages too) on UPDATE.
                c.execute(
                    "INSERT OR IGNORE INTO workflows (digest, text) VALUES (?, ?)",
                    (workflow_digest, workflow_text),
                )
                c.execute(
                    "INSERT INTO runs (run_id, workflow_name, workflow_path,"
                    " workflow_digest, inputs, status, step, frontier, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, 'running', 0, ?, ?, ?)",
                    (
                        run_id,
                        workflow_name,
                        workflow_path,
                        workflow_digest,
                        _dumps(inputs),
                        _dumps(frontier),
                        now,
                        now,
                    ),
                )
                c.execute(
                    "INSERT INTO steps (run_id, step, idem_key, digest, tasks, frontier,"
                    " committed_at) VALUES (?, -1, ?, '', '[]', ?, ?)",
                    (run_id, f"init:{run_id}", _dumps(frontier), now),
                )
                c.executemany(
                    "INSERT INTO state_kv (run_id, key, step, value) VALUES (?, ?, -1, ?)",
                    [(run_id, k, _dumps(v)) for k, v in state.items()],
                )
        except sqlite3.IntegrityError:
            raise ResumeRefused(
                f"run id {run_id!r} already exists",
                hint=f"use `flowrun resume {run_id}` or pick another --run-id",
            ) from None

    def acquire_lease(self, run_id: str, *, force: bool = False) -> int:
        with self._tx() as c:
            row = c.execute(
                "SELECT lease_host, lease_pid, lease_heartbeat, lease_token FROM runs"
                " WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise ResumeRefused(f"no run {run_id!r}")
            host, pid, beat, token = row
            mine = host == HOST and pid == os.getpid()
            if not force and not mine and lease_live(host, pid, beat, time.time()):
                raise ResumeRefused(
                    f"run {run_id} is being executed by pid {pid} on {host}",
                    hint="wait for it, or pass --force if you know it is dead",
                )
            token += 1
            c.execute(
                "UPDATE runs SET lease_host = ?, lease_pid = ?, lease_heartbeat = ?,"
                " lease_token = ? WHERE run_id = ?",
                (HOST, os.getpid(), time.time(), token, run_id),
            )
            return int(token)

    def heartbeat(self, run_id: str, token: int) -> bool:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET lease_heartbeat = ? WHERE run_id = ? AND lease_token = ?",
                (time.time(), run_id, token),
            )
            return cur.rowcount == 1

    def release_lease(self, run_id: str, token: int) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET lease_host = NULL, lease_pid = NULL, lease_heartbeat = NULL"
                " WHERE run_id = ? AND lease_token = ?",
                (run_id, token),
            )

    def set_status(
        self,
        run_id: str,
        token: int,
        status: str,
        *,
        error: str | None = None,
        events: list[Event] | None = None,
    ) -> None:
        with self._tx() as c:
            updates: dict[str, Any] = {"status": status, "error": error}
            if status != "running":
                updates["finished_at"] = time.time()
            self._fence(c, run_id, token, **updates)
            if events:
                self._insert_events(c, run_id, events)

    def _insert_events(
        self, c: sqlite3.Connection, run_id: str, events: list[Event], *, bump: bool = True
    ) -> None:
        c.executemany(
            "INSERT INTO events (run_id, seq, ts, step, node, type, attempt, duration,"
            " error, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run_id,
                    e.seq,
                    e.ts,
                    e.step,
                    e.node,
                    e.type,
                    e.attempt,
                    e.duration,
                    e.error,
                    None if e.data is None else _dumps(e.data),
                )
                for e in events
            ],
        )
        if bump:
            c.execute(
                "UPDATE runs SET event_seq = max(event_seq, ?) WHERE run_id = ?",
                (events[-1].seq, run_id),
            )

    def append_events(self, run_id: str, token: int, events: list[Event]) -> None:
        with self._tx() as c:
            self._fence(c, run_id, token)
            self._insert_events(c, run_id, events)

    # task results ----------------------------------------------------------
    def add_state_keys(self, run_id: str, token: int, values: dict[str, Any]) -> None:
        """Keys a changed workflow declares that the run did not have yet (their defaults)."""
        with self._tx() as c:
            self._fence(c, run_id, token)
            c.executemany(
                "INSERT OR IGNORE INTO state_kv (run_id, key, step, value) VALUES (?, ?, -1, ?)",
                [(run_id, k, _dumps(v)) for k, v in values.items()],
            )

    def save_task_result(self, run_id: str, token: int, result: TaskResult) -> None:
        self.save_task_results(run_id, token, [result])

    def save_task_results(self, run_id: str, token: int, results: list[TaskResult]) -> None:
        """Results that finished together, in one transaction (a group commit)."""
        with self._tx() as c:
            self._fence(c, run_id, token)
            for result in results:
                self._insert_result(c, run_id, result)

    def _insert_result(self, c: sqlite3.Connection, run_id: str, result: TaskResult) -> None:
        c.execute(
            "INSERT OR REPLACE INTO task_results (run_id, step, order_key, node, idx, status,"
            " delta, attempts, started_at, duration_s, error, stdout, stderr)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                result.step,
                result.order_key,
                result.node,
                result.index,
                result.status,
                None if result.delta is None else _dumps(result.delta),
                result.attempts,
                result.started_at,
                result.duration_s,
                result.error,
                result.stdout,
                result.stderr,
            ),
        )

    def _results(self, sql: str, args: tuple[Any, ...]) -> list[TaskResult]:
        return [
            TaskResult(
                step=r[0],
                order_key=r[1],
                node=r[2],
                index=r[3],
                status=r[4],
                delta=None if r[5] is None else json.loads(r[5]),
                attempts=r[6],
                started_at=r[7],
                duration_s=r[8],
                error=r[9],
                stdout=r[10],
                stderr=r[11],
            )
            for r in self.conn.execute(
                "SELECT step, order_key, node, idx, status, delta, attempts, started_at,"
                " duration_s, error, stdout, stderr FROM task_results " + sql,
                args,
            )
        ]

    def load_task_results(self, run_id: str, step: int) -> dict[str, TaskResult]:
        rows = self._results("WHERE run_id = ? AND step = ?", (run_id, step))
        return {r.order_key: r for r in rows}

    def task_results(self, run_id: str) -> list[TaskResult]:
        """Every task outcome of the run, oldest first.

        A committed step's outcomes are its task events (a step's last results are
        not kept as rows of their own unless they carry output tails); rows add
        the delta and tails where they exist, and cover the step the run stopped in.
        """
        rows = {
            (r.step, r.order_key, r.status): r for r in self._results("WHERE run_id = ?", (run_id,))
        }
        row = self.conn.execute("SELECT step FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        current = row[0] if row else 0
        out: list[TaskResult] = []
        for e in self._events(
            "WHERE run_id = ? AND type IN ('task_succeeded', 'task_failed') ORDER BY seq", (run_id,)
        ):
            data = e.data or {}
            status = "ok" if e.type == "task_succeeded" else "failed"
            key = str(data.get("key", ""))
            saved = rows.pop((e.step or 0, key, status), None)
            out.append(
                saved
                or TaskResult(
                    step=e.step or 0,
                    order_key=key,
                    node=e.node or "",
                    index=data.get("index"),
                    status=status,
                    attempts=e.attempt or 1,
                    started_at=e.ts - (e.duration or 0.0),
                    duration_s=e.duration or 0.0,
                    error=e.error,
                )
            )
        out.extend(
            r for r in sorted(rows.values(), key=lambda r: r.started_at) if r.step >= current
        )
        return out

    # the cost ledger -------------------------------------------------------
    def record_llm_call(self, call: LLMCall) -> None:
        """One billed call, committed at once from the calling (worker) thread.

        Not fenced by the lease: money spent is counted even by a process that
        has lost its run. ``_tx`` serialises it with the coordinator's writes.
        """
        with self._tx() as c:
            c.execute(
                "INSERT INTO llm_calls (run_id, step, node, idx, attempt, provider, model,"
                " tokens_in, tokens_out, cached_tokens, cache_write_tokens, price, cost_usd, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    call.run_id,
                    call.step,
                    call.node,
                    call.index,
                    call.attempt,
                    call.provider,
                    call.model,
                    call.tokens_in,
                    call.tokens_out,
                    call.cached_tokens,
                    call.cache_write_tokens,
                    None if call.price is None else _dumps(call.price),
                    call.cost_usd,
                    call.ts,
                ),
            )

    def llm_calls(self, run_id: str) -> list[LLMCall]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT run_id, step, node, idx, attempt, provider, model, tokens_in, tokens_out,"
                " cached_tokens, cache_write_tokens, price, cost_usd, ts FROM llm_calls"
                " WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [
            LLMCall(
                run_id=r[0],
                step=r[1],
                node=r[2],
                index=r[3],
                attempt=r[4],
                provider=r[5],
                model=r[6],
                tokens_in=r[7],
                tokens_out=r[8],
                cached_tokens=r[9],
                cache_write_tokens=r[10],
                price=None if r[11] is None else json.loads(r[11]),
                cost_usd=r[12],
                ts=r[13],
            )
            for r in rows
        ]

    # steps ----------------------------------------------------------------
    def save_step(self, run_id: str, token: int, commit: StepCommit) -> None:
        try:
            with self._tx() as c:
                updates: dict[str, Any] = {
                    "step": commit.step + 1,
                    "frontier": _dumps(commit.frontier),
                    "status": commit.status,
                    "error": commit.error,
                    "state_digest": commit.state_digest,
                    "duration_s": commit.duration_s,
                }
                if commit.events:
                    updates["event_seq"] = commit.events[-1].seq
                if commit.status != "running":
                    updates["finished_at"] = time.time()
                # fence first: a process whose lease was taken over gets LeaseLost, never a
                # clash with rows (steps, events) the new holder already wrote
                self._fence(c, run_id, token, **updates)
                c.execute(
                    "INSERT INTO steps (run_id, step, idem_key, digest, tasks, frontier,"
                    " committed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        commit.step,
                        commit.idempotency_key,
                        commit.digest,
                        _dumps(commit.tasks),
                        _dumps(commit.frontier),
                        time.time(),
                    ),
                )
                if commit.changed:
                    c.executemany(
                        "INSERT INTO state_kv (run_id, key, step, value) VALUES (?, ?, ?, ?)",
                        [(run_id, k, commit.step, v) for k, v in commit.changed.items()],
                    )
                for result in commit.results:
                    self._insert_result(c, run_id, result)
                if commit.events:
                    self._insert_events(c, run_id, commit.events, bump=False)
        except sqlite3.IntegrityError as exc:
            if "idem_key" in str(exc) or "steps" in str(exc):
                raise StepAlreadyCommitted(
                    f"step {commit.step} of run {run_id} was already committed"
                    f" (idempotency key {commit.idempotency_key[:12]})"
                ) from None
            raise

    def check_idempotency(self, key: str) -> bool:
        """True if a step with this idempotency key was committed."""
        row = self.conn.execute("SELECT 1 FROM steps WHERE idem_key = ?", (key,)).fetchone()
        return row is not None

    def _state_at(self, run_id: str, step: int) -> dict[str, Any]:
        keys = [
            k
            for (k,) in self.conn.execute(
                "SELECT DISTINCT key FROM state_kv WHERE run_id = ? AND step = -1", (run_id,)
            )
        ]
        state: dict[str, Any] = {}
        for k in keys:
            (value,) = self.conn.execute(
                "SELECT value FROM state_kv WHERE run_id = ? AND key = ? AND step <= ?"
                " ORDER BY step DESC LIMIT 1",
                (run_id, k, step),
            ).fetchone()
            state[k] = json.loads(value)
        return state

    def load_latest(self, run_id: str) -> Checkpoint:
        row = self.conn.execute(
            "SELECT step, frontier, status FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise ResumeRefused(f"no run {run_id!r}")
        step, frontier, status = row
        return Checkpoint(
            run_id, step, self._state_at(run_id, step - 1), json.loads(frontier), status
        )

    def load_at(self, run_id: str, step: int) -> Checkpoint:
        """The checkpoint after committed step ``step - 1`` (step 0: the initial state)."""
        row = self.conn.execute(
            "SELECT frontier FROM steps WHERE run_id = ? AND step = ?", (run_id, step - 1)
        ).fetchone()
        if row is None:
            raise ResumeRefused(f"run {run_id} has no committed step {step - 1}")
        return Checkpoint(
            run_id, step, self._state_at(run_id, step - 1), json.loads(row[0]), "running"
        )

    def save_checkpoint(self, run_id: str, name: str, step: int | None = None) -> None:
        with self._tx() as c:
            if step is None:
                (step,) = c.execute("SELECT step FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            c.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, name, step) VALUES (?, ?, ?)",
                (run_id, name, step),
            )

    def load_checkpoint(self, run_id: str, name: str) -> Checkpoint:
        row = self.conn.execute(
            "SELECT step FROM checkpoints WHERE run_id = ? AND name = ?", (run_id, name)
        ).fetchone()
        if row is None:
            raise ResumeRefused(f"run {run_id} has no checkpoint named {name!r}")
        return self.load_at(run_id, row[0])

    # events ---------------------------------------------------------------
    def _events(self, sql: str, args: tuple[Any, ...]) -> list[Event]:
        return [
            Event(
                run_id=r[0],
                seq=r[1],
                ts=r[2],
                step=r[3],
                node=r[4],
                type=r[5],
                attempt=r[6],
                duration=r[7],
                error=r[8],
                data=None if r[9] is None else json.loads(r[9]),
            )
            for r in self.conn.execute(
                "SELECT run_id, seq, ts, step, node, type, attempt, duration, error, data"
                " FROM events " + sql,
                args,
            )
        ]

    def pending_events(self, run_id: str) -> list[Event]:
        (emitted,) = self.conn.execute(
            "SELECT events_emitted FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return self._events("WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, emitted))

    def mark_events_emitted(self, run_id: str, upto_seq: int) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET events_emitted = max(events_emitted, ?) WHERE run_id = ?",
                (upto_seq, run_id),
            )

    def events(self, run_id: str) -> list[Event]:
        return self._events("WHERE run_id = ? ORDER BY seq", (run_id,))

    def next_event_seq(self, run_id: str) -> int:
        (seq,) = self.conn.execute(
            "SELECT event_seq FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(seq) + 1

    # forks and pruning ------------------------------------------------------
    def fork_run(
        self,
        run_id: str,
        step: int,
        new_run_id: str,
        *,
        workflow_name: str | None = None,
        workflow_path: str | None = None,
        workflow_text: str | None = None,
        workflow_digest: str | None = None,
    ) -> None:
        """Create ``new_run_id`` from ``run_id``'s checkpoint after committed step ``step - 1``.

        The fork gets that state (as its initial values), that frontier and the parent's
        inputs; its step counter goes on at ``step``, so ``run.step`` and step digests
        match the parent's. Nothing after the checkpoint is copied. The workflow is the
        parent's unless all four ``workflow_*`` are given. One transaction.
        """
        now = time.time()
        try:
            with self._tx() as c:
                parent = c.execute(
                    "SELECT workflow_name, workflow_path, workflow_digest, inputs FROM runs"
                    " WHERE run_id = ?",
                    (run_id,),
                ).fetchone()
                if parent is None:
                    raise ResumeRefused(f"no run {run_id!r}")
                base = c.execute(
                    "SELECT digest, frontier FROM steps WHERE run_id = ? AND step = ?",
                    (run_id, step - 1),
                ).fetchone()
                if base is None:
                    raise UsageError(f"run {run_id} has no checkpoint before step {step}")
                name, path, digest, inputs = parent
                if workflow_digest is not None and workflow_text is not None:
                    c.execute(
                        "INSERT OR IGNORE INTO workflows (digest, text) VALUES (?, ?)",
                        (workflow_digest, workflow_text),
                    )
                    name = workflow_name or name
                    path = workflow_path or path
                    digest = workflow_digest
                c.execute(
                    "INSERT INTO runs (run_id, workflow_name, workflow_path, workflow_digest,"
                    " inputs, status, step, frontier, created_at, updated_at, parent_run_id,"
                    " parent_step) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                    (new_run_id, name, path, digest, inputs, step, base[1], now, now, run_id, step),
                )
                c.execute(
                    "INSERT INTO steps (run_id, step, idem_key, digest, tasks, frontier,"
                    " committed_at) VALUES (?, ?, ?, ?, '[]', ?, ?)",
                    (new_run_id, step - 1, f"fork:{new_run_id}", base[0], base[1], now),
                )
                # each key's latest value as of the checkpoint, as the fork's initial value
                c.execute(
                    "INSERT INTO state_kv (run_id, key, step, value)"
                    " SELECT ?, s.key, -1, s.value FROM state_kv s WHERE s.run_id = ?"
                    " AND s.step = (SELECT max(step) FROM state_kv"
                    " WHERE run_id = s.run_id AND key = s.key AND step < ?)",
                    (new_run_id, run_id, step),
                )
        except sqlite3.IntegrityError:
            raise ResumeRefused(
                f"run id {new_run_id!r} already exists", hint="pick another --run-id"
            ) from None

    def prune_runs(
        self, *, before: float, status: str | None = None, dry_run: bool = False
    ) -> PruneResult:
        """Delete runs last written (created, stepped, finished) before ``before``.

        A run whose lease is live is kept. All of a run's rows go with it (the child
        tables cascade), then workflow texts no run uses; one transaction. Then, if
        anything went, ``VACUUM`` returns the pages to the file system.
        """
        sql = (
            f"SELECT {self._RUN_COLS}, lease_host, lease_pid, lease_heartbeat FROM runs"
            " WHERE max(created_at, updated_at, coalesce(finished_at, 0)) < ?"
        )
        args: tuple[Any, ...] = (before,)
        if status is not None:
            sql, args = sql + " AND status = ?", (before, status)
        sql += " ORDER BY created_at, run_id"

        def candidates(c: sqlite3.Connection) -> tuple[list[RunRecord], list[str]]:
            doomed, live = [], []
            now = time.time()
            for r in c.execute(sql, args).fetchall():
                host, pid, beat = r[-3:]
                if lease_live(host, pid, beat, now):
                    live.append(str(r[0]))
                else:
                    doomed.append(self._run(r[:-3]))
            return doomed, live

        size = self._file_bytes()
        if dry_run:
            with self._lock:
                doomed, live = candidates(self.conn)
            return PruneResult(doomed, live, size, size, dry_run=True)
        with self._tx() as c:  # the lease check and the delete see the same rows
            doomed, live = candidates(c)
            c.executemany("DELETE FROM runs WHERE run_id = ?", [(r.run_id,) for r in doomed])
            if doomed:
                c.execute(
                    "DELETE FROM workflows WHERE digest NOT IN (SELECT workflow_digest FROM runs)"
                )
        if not doomed:
            return PruneResult(doomed, live, size, size)
        error = None
        with self._lock:
            try:  # not inside a transaction: VACUUM cannot run in one
                self.conn.execute("VACUUM")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                error = str(exc)
        return PruneResult(doomed, live, size, self._file_bytes(), vacuum_error=error)

    def _file_bytes(self) -> int:
        """The size of the database file and its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    # listing ----------------------------------------------------------------
    _RUN_COLS = (
        "run_id, workflow_name, workflow_path, workflow_digest, status, step, created_at,"
        " updated_at, finished_at, error, duration_s, state_digest, parent_run_id, parent_step"
    )

    def _run(self, r: Any) -> RunRecord:
        return RunRecord(*r)

    def get_run(self, run_id: str) -> RunRecord:
        r = self.conn.execute(
            f"SELECT {self._RUN_COLS} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if r is None:
            raise ResumeRefused(f"no run {run_id!r}")
        return self._run(r)

    def resolve_run_id(self, ref: str) -> str:
        if ref == "latest":
            row = self.conn.execute(
                "SELECT run_id FROM runs ORDER BY created_at DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise ResumeRefused(
                    "there are no runs in this database", hint="start one with `flowrun run FILE`"
                )
            return str(row[0])
        if self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (ref,)).fetchone():
            return ref
        like = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.conn.execute(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\' LIMIT 3", (like,)
        ).fetchall()
        if not rows:
            raise ResumeRefused(f"no run matches {ref!r}", hint="`flowrun runs` lists them")
        if len(rows) > 1:
            raise ResumeRefused(
                f"run id prefix {ref!r} is ambiguous ({', '.join(r[0] for r in rows)}, …)",
                hint="give more characters",
            )
        return str(rows[0][0])

    def workflow_text(self, run_id: str) -> tuple[str, str]:
        row = self.conn.execute(
            "SELECT r.workflow_path, w.text FROM runs r"
            " JOIN workflows w ON w.digest = r.workflow_digest WHERE r.run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise ResumeRefused(f"no run {run_id!r}")
        return str(row[0]), str(row[1])

    def inputs(self, run_id: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT inputs FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def list_runs(self, *, status: str | None = None, limit: int = 20) -> list[RunRecord]:
        if status:
            rows = self.conn.execute(
                f"SELECT {self._RUN_COLS} FROM runs WHERE status = ?"
                " ORDER BY created_at DESC LIMIT ?",
                (status, limit),
            )
        else:
            rows = self.conn.execute(
                f"SELECT {self._RUN_COLS} FROM runs ORDER BY created_at DESC LIMIT ?", (limit,)
            )
        return [self._run(r) for r in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return [
            {"step": r[0], "digest": r[1], "tasks": json.loads(r[2]), "committed_at": r[3]}
            for r in self.conn.execute(
                "SELECT step, digest, tasks, committed_at FROM steps WHERE run_id = ? AND step >= 0"
                " ORDER BY step",
                (run_id,),
            )
        ]
