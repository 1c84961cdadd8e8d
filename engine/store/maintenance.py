"""Forks and pruning: a new run from a checkpoint; deleting old runs in batches."""

from __future__ import annotations

import time
from typing import Any

from ..errors import ResumeRefused, RunExists, UsageError
from ..jsonvalue import dumps
from .base import PruneResult, RunRecord
from .leases import lease_live
from .runs import SQLRuns
from .sql import SQLConn
from .steps import SQLSteps

PRUNE_BATCH = 100  # runs deleted per transaction: no long lock, however much goes


class SQLMaintenance(SQLRuns, SQLSteps):
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
                self._workflows_lock(c, exclusive=False)
                parent = c.execute(
                    "SELECT workflow_name, workflow_path, workflow_digest FROM runs"
                    f" WHERE run_id = ?{self._FOR_UPDATE}",
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
                        "INSERT INTO workflows (digest, text) VALUES (?, ?) ON CONFLICT DO NOTHING",
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
                        for k, v in self._state_at(c, run_id, step - 1).items()
                    ],
                )
        except self._IntegrityError:
            raise RunExists(
                f"run id {new_run_id!r} already exists", hint="pick another --run-id"
            ) from None

    def prune_runs(
        self, *, before: float, status: str | None = None, dry_run: bool = False
    ) -> PruneResult:
        """Delete runs last written (created, stepped, finished) before ``before``.

        A run whose lease is live is kept. All of a run's rows go with it (the child
        tables cascade), then workflow texts no run uses. Runs go :data:`PRUNE_BATCH` to a
        transaction, each batch looked at again under the transaction's lock, so a run
        that took a lease meanwhile is kept. Then, if anything went, the store gives the
        space back where it can (SQLite: ``VACUUM``).
        """
        where = f" WHERE {self._GREATEST}(created_at, updated_at, coalesce(finished_at, 0)) < ?"
        args: tuple[Any, ...] = (before,)
        if status is not None:
            where, args = where + " AND status = ?", (before, status)

        def candidates(
            c: SQLConn, sql: str, params: tuple[Any, ...], lock: str = ""
        ) -> tuple[list[RunRecord], list[str]]:
            doomed, live = [], []
            for r in c.execute(
                f"SELECT {self._RUN_COLS}, {self._LEASE_COLS}, {self._NOW} FROM runs"
                + sql
                + " ORDER BY created_at, run_id"
                + lock,
                params,
            ).fetchall():
                if lease_live(*self._owner(r[-7:-1]), float(r[-1])):
                    live.append(str(r[0]))
                else:
                    doomed.append(self._run(r[:-7]))
            return doomed, live

        size = self._size()
        with self._read() as c:
            doomed, live = candidates(c, where, args)
        if dry_run:
            return PruneResult(doomed, live, size, size, dry_run=True)
        gone: list[RunRecord] = []
        for i in range(0, len(doomed), PRUNE_BATCH):
            ids = [r.run_id for r in doomed[i : i + PRUNE_BATCH]]
            marks = ",".join("?" * len(ids))
            with self._tx() as c:  # the lease check and the delete see the same rows
                batch, now_live = candidates(
                    c, f"{where} AND run_id IN ({marks})", (*args, *ids), self._FOR_UPDATE
                )
                c.executemany("DELETE FROM runs WHERE run_id = ?", [(r.run_id,) for r in batch])
            gone += batch
            live += now_live
        if gone:
            with self._tx() as c:
                self._workflows_lock(c, exclusive=True)
                c.execute(
                    "DELETE FROM workflows WHERE digest NOT IN (SELECT workflow_digest FROM runs)"
                )
        if not gone:
            return PruneResult(gone, live, size, size)
        error = self._reclaim()
        return PruneResult(gone, live, size, self._size(), vacuum_error=error)
