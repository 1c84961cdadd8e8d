"""The event outbox: events commit with the writes they describe.

``runs.event_seq`` is the last sequence number written and ``runs.events_emitted``
the last one delivered to the sinks; what lies between is pending, and is
delivered again after a crash (at-least-once, in ``seq`` order).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..jsonvalue import dumps
from .base import Event
from .sql import SQLDB, SQLConn


class SQLEvents(SQLDB):
    """The ``events`` table and the run's ``event_seq`` / ``events_emitted`` marks."""

    def _insert_events(
        self, c: SQLConn, run_id: str, events: Sequence[Event], *, bump: bool = True
    ) -> None:
        c.executemany(
            "INSERT INTO events (run_id, seq, ts, step, node, type, attempt, duration,"
            " error, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (  # made row by row: a big step's events are made as they are read
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
                    None if e.data is None else dumps(e.data),
                )
                for e in events
            ),
        )
        if bump:
            c.execute(
                f"UPDATE runs SET event_seq = {self._GREATEST}(event_seq, ?) WHERE run_id = ?",
                (events[-1].seq, run_id),
            )

    def append_events(self, run_id: str, token: int, events: list[Event]) -> None:
        with self._tx() as c:
            self._fence(c, run_id, token)
            self._insert_events(c, run_id, events)

    def _events(self, sql: str, args: tuple[Any, ...]) -> list[Event]:
        with self._read() as c:
            rows = c.execute(
                "SELECT run_id, seq, ts, step, node, type, attempt, duration, error, data"
                " FROM events " + sql,
                args,
            ).fetchall()
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
            for r in rows
        ]

    def pending_events(self, run_id: str) -> list[Event]:
        with self._read() as c:
            (emitted,) = c.execute(
                "SELECT events_emitted FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return self._events("WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, emitted))

    def mark_events_emitted(self, run_id: str, upto_seq: int) -> None:
        with self._tx() as c:
            c.execute(
                f"UPDATE runs SET events_emitted = {self._GREATEST}(events_emitted, ?)"
                " WHERE run_id = ?",
                (upto_seq, run_id),
            )

    def events(self, run_id: str) -> list[Event]:
        return self._events("WHERE run_id = ? ORDER BY seq", (run_id,))

    def next_event_seq(self, run_id: str) -> int:
        with self._read() as c:
            (seq,) = c.execute("SELECT event_seq FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return int(seq) + 1
