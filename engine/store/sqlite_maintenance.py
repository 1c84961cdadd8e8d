"""Forks and pruning in SQLite: a new run from a checkpoint; deleting old runs."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..errors import ResumeRefused, RunExists, UsageError
from ..jsonvalue import dumps
from .base import PruneResult, RunRecord
from .leases import lease_live
from .sqlite_runs import SQLiteRuns
from .sqlite_steps import SQLiteSteps


class SQLiteMaintenance(SQLiteRuns, SQLiteSteps):
    """``fork_run`` and ``prune_runs``: whole runs in, whole runs out."""

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
                    "SELECT workflow_name, workflow_path, workflow_digest FROM runs"
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
                name, path, digest = parent
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
                    " status, step, frontier, created_at, updated_at, parent_run_id,"
                    " parent_step) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                    (new_run_id, name, path, digest, step, base[1], now, now, run_id, step),
                )
                c.execute(
                    "INSERT INTO run_inputs (run_id, inputs)"
                    " SELECT ?, inputs FROM run_inputs WHERE run_id = ?",
                    (new_run_id, run_id),
                )
                c.execute(
                    "INSERT INTO steps (run_id, step, idem_key, digest, tasks, frontier,"
                    " committed_at) VALUES (?, ?, ?, ?, '[]', ?, ?)",
                    (new_run_id, step - 1, f"fork:{new_run_id}", base[0], base[1], now),
                )
                # each key's latest value as of the checkpoint, as the fork's initial value
                c.executemany(
                    "INSERT INTO state_kv (run_id, key, step, value) VALUES (?, ?, -1, ?)",
                    [
                        (new_run_id, k, dumps(v))
                        for k, v in self._state_at(run_id, step - 1).items()
                    ],
                )
        except sqlite3.IntegrityError:
            raise RunExists(
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
            f"SELECT {self._RUN_COLS}, {self._LEASE_COLS} FROM runs"
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
                if lease_live(*self._owner(r[-6:]), now):
                    live.append(str(r[0]))
                else:
                    doomed.append(self._run(r[:-6]))
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
