"""Commands in flight: one row per running ``run:``/``shell:`` process group.

A row is written as a command starts and deleted as it ends, each in one small
fenced transaction. What a crashed owner leaves behind names the process groups
that may still be running, so the next holder of the run can kill them before it
runs the node again (``engine/runtime/orphans.py``).
"""

from __future__ import annotations

from .base import ProcRecord
from .sql import SQLDB


class SQLProcs(SQLDB):
    """The ``procs`` table."""

    def record_proc(self, run_id: str, token: int, proc: ProcRecord) -> int:
        """Note a started process group; return the row's id (for :meth:`forget_procs`)."""
        with self._tx() as c:
            self._fence(c, run_id, token)
            return self._insert_id(
                c,
                "INSERT INTO procs (run_id, host, owner_pid, owner_start, pid, pgid, start_time,"
                " step, node, started_at, pidns, boot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    proc.host,
                    proc.owner_pid,
                    proc.owner_start,
                    proc.pid,
                    proc.pgid,
                    proc.start_time,
                    proc.step,
                    proc.node,
                    proc.started_at,
                    proc.pidns,
                    proc.boot,
                ),
            )

    def forget_procs(self, run_id: str, token: int, ids: list[int]) -> None:
        """Delete the rows of process groups that ended (or were killed)."""
        with self._tx() as c:
            self._fence(c, run_id, token)
            c.executemany(
                "DELETE FROM procs WHERE id = ? AND run_id = ?", [(i, run_id) for i in ids]
            )

    def procs(self, run_id: str) -> list[ProcRecord]:
        with self._read() as c:
            rows = c.execute(
                "SELECT host, owner_pid, owner_start, pid, pgid, start_time, step, node,"
                " started_at, id, pidns, boot FROM procs WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [ProcRecord(run_id, *r) for r in rows]
