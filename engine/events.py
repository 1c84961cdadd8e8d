"""The event stream: outbox rows drained to sinks after each commit.

Delivery is at least once and in order: events are written in the step's own
transaction, handed to every sink after the commit, and marked emitted in
batches; on resume, events not yet marked are delivered again first. A sink sees
each event's ``event_id`` (``run_id:seq``) so it can drop a repeat.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO, Any, Protocol

from .jsonvalue import dumps
from .store.base import Event, Store


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """``--events FILE.jsonl``: one JSON object per line, appended, flushed per event."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._f: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        # a line cut short by a crash: start ours on a fresh line (a pipe has no past)
        if self._f.seekable() and self._f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    self._f.write("\n")

    def emit(self, event: Event) -> None:
        line = dumps(event.to_json(), sort_keys=False)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


class Outbox:
    """Allocates event sequence numbers for one run and fans committed events out."""

    MARK_EVERY_S = 0.5

    def __init__(self, store: Store, run_id: str, sinks: list[EventSink]) -> None:
        self.store = store
        self.run_id = run_id
        self.sinks = sinks
        self.seq = store.next_event_seq(run_id) - 1
        self._delivered = 0
        self._marked_at = time.monotonic()

    def make(
        self,
        type: str,
        *,
        step: int | None = None,
        node: str | None = None,
        attempt: int | None = None,
        duration: float | None = None,
        error: str | None = None,
        data: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> Event:
        self.seq += 1
        return Event(
            self.run_id,
            self.seq,
            time.time() if ts is None else ts,
            step,
            node,
            type,
            attempt,
            duration,
            error,
            data,
        )

    def deliver(self, events: list[Event]) -> None:
        for e in events:
            for s in self.sinks:
                s.emit(e)
            self._delivered = max(self._delivered, e.seq)
        if events and time.monotonic() - self._marked_at > self.MARK_EVERY_S:
            self.flush()

    def deliver_pending(self) -> None:
        self.deliver(self.store.pending_events(self.run_id))

    def flush(self) -> None:
        if self._delivered:
            self.store.mark_events_emitted(self.run_id, self._delivered)
        self._marked_at = time.monotonic()
