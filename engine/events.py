"""The event stream: outbox rows drained to sinks after each commit.

Delivery is at least once and in order: events are written in the step's own
transaction, handed to every sink after the commit, and marked emitted in
batches; on resume, events not yet marked are delivered again first. A sink sees
each event's ``event_id`` (``run_id:seq``) so it can drop a repeat. An event's
error and data are masked by the run's secrets masker as the event is made, so
neither the outbox rows nor any sink ever hold a secret.

Only a ``durable`` sink (an events file) marks events emitted: a run or resume
with no ``--events`` leaves them pending for the next one that has it, so the file
has no gap. A sink whose write fails (disk full, broken pipe, I/O error) is given
nothing more and marks nothing more; the run goes on, and its events from the
failure on stay pending until a later ``resume --events`` delivers them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import IO, Any, Protocol

from .jsonvalue import dumps
from .secrets import Masker
from .store.base import Event, Store


class EventSink(Protocol):
    durable: bool  # keeps what it took: only such sinks mark events emitted

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """``--events FILE.jsonl``: one JSON object per line, appended, flushed per event.

    A failed write is kept in ``error`` and raised; the outbox then drops the sink.
    """

    durable = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.error: OSError | None = None
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
            try:
                self._f.write(line + "\n")
                self._f.flush()
            except OSError as exc:
                self.error = self.error or exc
                raise

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as exc:  # what a failed write left in the buffer: still pending
            self.error = self.error or exc


class Outbox:
    """Allocates event sequence numbers for one run and fans committed events out."""

    MARK_EVERY_S = 0.5

    def __init__(
        self, store: Store, run_id: str, sinks: list[EventSink], masker: Masker | None = None
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.sinks = list(sinks)
        self.masker = masker or Masker()
        self.seq = store.next_event_seq(run_id) - 1
        self._delivered = 0
        self._marks = any(s.durable for s in sinks)  # no events file: nothing is delivered
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
        seq: int | None = None,
    ) -> Event:
        """An event with the next sequence number, or with ``seq`` (one :meth:`reserve`
        gave)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        return Event(
            self.run_id,
            seq,
            time.time() if ts is None else ts,
            step,
            node,
            type,
            attempt,
            duration,
            self.masker.optional(error),
            self.masker.value(data),
        )

    def reserve(self, n: int) -> int:
        """Take ``n`` sequence numbers for events made later (``make(seq=...)``); return
        the first."""
        first = self.seq + 1
        self.seq += n
        return first

    def deliver(self, events: Sequence[Event]) -> None:
        if not self.sinks:
            return  # nothing to hand them to (a big step's events are made as read)
        for e in events:
            for s in list(self.sinks):
                try:
                    s.emit(e)
                except OSError:
                    self.sinks.remove(s)  # in order or not at all: it gets nothing more
                    self._marks = self._marks and not s.durable
            if self._marks:
                self._delivered = max(self._delivered, e.seq)
        if events and time.monotonic() - self._marked_at > self.MARK_EVERY_S:
            self.flush()

    def deliver_pending(self) -> None:
        """Deliver the events a crash left undelivered (only a sink that keeps them marks
        events delivered: without one, every event of the run is pending, and none is read)."""
        if self._marks:
            self.deliver(self.store.pending_events(self.run_id))

    def flush(self) -> None:
        if self._delivered:
            self.store.mark_events_emitted(self.run_id, self._delivered)
        self._marked_at = time.monotonic()
