"""Runs: creating one, its lease (take, heartbeat, release), its status, finding it.

A run row carries its lease (its owner: host, pid, start time, pid namespace, boot id;
its heartbeat and token); :func:`.leases.lease_live` decides whether a holder may be
displaced. Every lease change is one ``_tx``. Heartbeats are written, and judged, on
the database's clock (``_NOW``): on a server shared by many hosts no client's clock
decides whether another host's owner is stale.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import ResumeRefused, RunExists
from ..jsonvalue import dumps
from ..records import Frontier
from . import leases
from .base import Event, LeaseOwner, RunRecord, TakenLease
from .events import SQLEvents


class SQLRuns(SQLEvents):
    """The ``runs`` table: create, lease, status (with its closing events), look-ups."""

    def create_run(
        self,
        run_id: str,
        *,
        workflow_name: str,
        workflow_path: str,
        workflow_text: str,
        workflow_digest: str,
        state: dict[str, Any],
        frontier: Frontier,
        inputs: dict[str, Any],
    ) -> None:
        now = time.time()
        text = dumps(frontier.to_json())
        try:
            with self._tx() as c:
                # The text lives apart from the run row: runs is updated every step,
                # and SQLite rewrites a whole row (overflow pages too) on UPDATE.
                self._workflows_lock(c, exclusive=False)
                c.execute(
                    "INSERT INTO workflows (digest, text) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (workflow_digest, workflow_text),
                )
                c.execute(
                    "INSERT INTO runs (run_id, workflow_name, workflow_path,"
                    " workflow_digest, status, step, frontier, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'running', 0, ?, ?, ?)",
                    (
                        run_id,
                        workflow_name,
                        workflow_path,
                        workflow_digest,
                        text,
                        now,
                        now,
                    ),
                )
                c.execute(  # apart from the run row, for the same reason as the text
                    "INSERT INTO run_inputs (run_id, inputs) VALUES (?, ?)",
                    (run_id, dumps(inputs)),
                )
                c.execute(
                    "INSERT INTO steps (run_id, step, idem_key, digest, tasks, frontier,"
                    " committed_at) VALUES (?, -1, ?, '', '[]', ?, ?)",
                    (run_id, f"init:{run_id}", text, now),
                )
                c.executemany(
                    "INSERT INTO state_kv (run_id, key, step, value) VALUES (?, ?, -1, ?)",
                    [(run_id, k, dumps(v)) for k, v in state.items()],
                )
        except self._IntegrityError:
            raise RunExists(
                f"run id {run_id!r} already exists",
                hint=f"continue it with `flowrun resume {run_id}` (or `run --if-exists continue`),"
                " or pick another --run-id",
            ) from None

    # the lease columns, in the order of :meth:`_owner`, then the heartbeat
    _LEASE_COLS = "lease_host, lease_pid, lease_start, lease_pidns, lease_boot, lease_heartbeat"

    @staticmethod
    def _owner(cols: Any) -> tuple[LeaseOwner | None, float | None]:
        """The owner and heartbeat from the :attr:`_LEASE_COLS` of a row."""
        host, pid, start, pidns, boot, beat = cols
        if host is None or pid is None:
            return None, beat
        return LeaseOwner(host, pid, start, pidns, boot), beat

    def take_lease(self, run_id: str, *, force: bool = False) -> TakenLease:
        me = leases.me()
        with self._tx() as c:
            row = c.execute(
                f"SELECT {self._LEASE_COLS}, lease_token, {self._NOW} FROM runs"
                f" WHERE run_id = ?{self._FOR_UPDATE}",
                (run_id,),
            ).fetchone()
            if row is None:
                raise ResumeRefused(f"no run {run_id!r}")
            owner, beat = self._owner(row[:6])
            now = float(row[7])  # the database's clock, as the heartbeats are
            if owner == me:
                owner = None  # this very process took it before: nobody is displaced
            elif not force and leases.lease_live(owner, beat, now):
                assert owner is not None
                if leases.checkable(owner):
                    hint = "wait for it, or pass --force to kill its commands and take over"
                else:
                    hint = "wait for it, or pass --force if you know it is dead"
                raise ResumeRefused(
                    f"run {run_id} is being executed by {leases.describe(owner, beat, now)}",
                    hint=hint,
                )
            token = int(row[6]) + 1
            c.execute(
                "UPDATE runs SET lease_host = ?, lease_pid = ?, lease_start = ?, lease_pidns = ?,"
                f" lease_boot = ?, lease_heartbeat = {self._NOW}, lease_token = ?"
                " WHERE run_id = ?",
                (me.host, me.pid, me.start, me.pidns, me.boot, token, run_id),
            )
        # the displaced owner's heartbeat on this process's clock (its age is what counts)
        previous_beat = None if beat is None else time.time() - (now - beat)
        return TakenLease(token, owner, previous_beat)

    def run_is_live(self, run_id: str) -> bool:
        """True while a process holds the run's lease (it is being executed right now)."""
        with self._read() as c:
            row = c.execute(
                f"SELECT {self._LEASE_COLS}, {self._NOW} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return row is not None and leases.lease_live(*self._owner(row[:6]), float(row[6]))

    def heartbeat(self, run_id: str, token: int) -> bool:
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE runs SET lease_heartbeat = {self._NOW}"
                " WHERE run_id = ? AND lease_token = ?",
                (run_id, token),
            )
            return bool(cur.rowcount == 1)

    def release_lease(self, run_id: str, token: int) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET lease_host = NULL, lease_pid = NULL, lease_start = NULL,"
                " lease_pidns = NULL, lease_boot = NULL, lease_heartbeat = NULL"
                " WHERE run_id = ? AND lease_token = ?",
                (run_id, token),
            )

    def set_max_cost(self, run_id: str, token: int, max_cost_usd: float | None) -> None:
        """Store the run's budget (``--max-cost``), which a plain resume keeps."""
        with self._tx() as c:
            self._fence(c, run_id, token, max_cost_usd=max_cost_usd)

    def set_status(
        self,
        run_id: str,
        token: int,
        status: str,
        *,
        error: str | None = None,
        events: list[Event] | None = None,
        duration_s: float | None = None,
    ) -> None:
        with self._tx() as c:
            updates: dict[str, Any] = {"status": status, "error": error}
            if duration_s is not None:
                updates["duration_s"] = duration_s
            if status != "running":
                updates["finished_at"] = time.time()
            self._fence(c, run_id, token, **updates)
            if events:
                self._insert_events(c, run_id, events)

    # finding runs --------------------------------------------------------------
    _RUN_COLS = (
        "run_id, workflow_name, workflow_path, workflow_digest, status, step, created_at,"
        " updated_at, finished_at, error, duration_s, state_digest, parent_run_id, parent_step,"
        " max_cost_usd"
    )

    def _run(self, r: Any) -> RunRecord:
        return RunRecord(*r)

    def get_run(self, run_id: str) -> RunRecord:
        with self._read() as c:
            r = c.execute(
                f"SELECT {self._RUN_COLS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        if r is None:
            raise ResumeRefused(f"no run {run_id!r}")
        return self._run(r)

    def resolve_run_id(self, ref: str) -> str:
        with self._read() as c:
            if ref == "latest":
                row = c.execute(
                    "SELECT run_id FROM runs ORDER BY created_at DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    raise ResumeRefused(
                        "there are no runs in this database",
                        hint="start one with `flowrun run FILE`",
                    )
                return str(row[0])
            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (ref,)).fetchone():
                return ref
            rows = c.execute(  # case-sensitive on every store, as run ids are (not LIKE)
                "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? LIMIT 3",
                (len(ref), ref),
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
        with self._read() as c:
            row = c.execute(
                "SELECT r.workflow_path, w.text FROM runs r"
                " JOIN workflows w ON w.digest = r.workflow_digest WHERE r.run_id = ?",
                (run_id,),
            ).fetchone()
        if row is None:
            raise ResumeRefused(f"no run {run_id!r}")
        return str(row[0]), str(row[1])

    def inputs(self, run_id: str) -> dict[str, Any]:
        with self._read() as c:
            row = c.execute("SELECT inputs FROM run_inputs WHERE run_id = ?", (run_id,)).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def list_runs(self, *, status: str | None = None, limit: int = 20) -> list[RunRecord]:
        with self._read() as c:
            if status:
                rows = c.execute(
                    f"SELECT {self._RUN_COLS} FROM runs WHERE status = ?"
                    " ORDER BY created_at DESC LIMIT ?",
                    (status, limit),
                ).fetchall()
            else:
                rows = c.execute(
                    f"SELECT {self._RUN_COLS} FROM runs ORDER BY created_at DESC LIMIT ?",
                    (limit,),
                ).fetchall()
        return [self._run(r) for r in rows]
