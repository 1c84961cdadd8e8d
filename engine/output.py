"""What tasks print: captured per attempt, handed on line by line, kept as a bounded tail.

A :class:`Capture` takes one attempt's writes, tagged ``stdout`` or ``stderr``. Each
stream keeps a ring of recent chunks within the byte limit, so a node that prints
millions of lines costs the limit in memory, not its output; :meth:`Capture.freeze`
merges the rings in write order and cuts the oldest bytes to the limit.

Commands write into their capture from their pipes. Python nodes share the process's
``sys.stdout``/``sys.stderr``, so :func:`install` puts a proxy in front of each that
sends a write to the capture of the task running on the writing thread (a context
variable set for the call by :func:`capturing`) and passes every other write through.
"""

from __future__ import annotations

import contextvars
import re
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from .store.base import TaskOutput

DEFAULT_LIMIT = 1 << 20  # bytes kept per attempt: the last 1 MiB
BATCH = 256  # small writes queued, then taken at once, when nobody shows lines live
CHUNK = 8192  # adjacent writes to one stream are joined into chunks of about this size
LONG_LINE = 1 << 16  # an unended line longer than this is shown as it is
TAIL = 4000  # characters of each stream a failed command's error keeps

MASK_MARGIN = 4096  # characters read before a tail's cut, so a secret across it is masked whole

# called with (stream, complete lines without their ends), on the writing thread
LineSink = Callable[[str, list[str]], None]
# the run's secrets masker: text in, text with every secret replaced by *** out
Mask = Callable[[str], str]

_SIZE = re.compile(r"\s*(\d+)\s*(|b|kb|kib|k|mb|mib|m|gb|gib|g)\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6}
_UNITS.update({"mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30})


def parse_size(text: str) -> int:
    """``1048576``, ``512KiB``, ``1MiB``, ``2MB``… in bytes; ``ValueError`` otherwise."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 1MiB, 512KiB, 65536)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def cut_note(cut: int) -> str:
    return f"… {cut:,} bytes cut …"


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


class _Ring:
    """One stream's recent chunks, ``(seq, text, size)``, at most about ``limit`` bytes."""

    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[tuple[int, str, int]] = deque()
        self.size = 0

    def add(self, seq: int, text: str, size: int) -> None:
        self.chunks.append((seq, text, size))
        self.size += size
        # drop the oldest chunk only while what is left still fills the limit
        while len(self.chunks) > 1 and self.size - self.chunks[0][2] >= self.limit:
            self.size -= self.chunks.popleft()[2]


def _unmasked(text: str) -> str:
    return text


class Capture:
    """One attempt's output. Thread-safe; ``on_lines`` hears complete lines as they end.

    Everything that leaves a capture (lines handed on, tails, the stored form) has
    passed ``mask`` first, whole lines or whole kept text, before any cut: the run's
    secrets never reach the console, an error or the database.
    """

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        on_lines: LineSink | None = None,
        mask: Mask | None = None,
    ) -> None:
        self.limit = max(0, limit)
        self.on_lines = on_lines
        self.mask = mask or _unmasked
        self.written = 0  # bytes, both streams
        self._rings: dict[str, _Ring] = {}  # by stream, made on its first write
        self._open: str | None = None  # the stream of the chunk being filled
        self._parts: list[str] = []
        self._open_size = 0
        self._seq = 0
        self._partial: dict[str, str] = {}  # by stream: a line not ended yet, for on_lines
        self._before: dict[str, str] = {}  # by stream: the end of a long line's shown pieces
        self._queue: deque[tuple[str, str]] = deque()  # writes not taken into the rings yet
        self._lock = threading.Lock()
        self._closed = False

    def write(self, stream: str, text: str) -> None:
        """Add ``text``, written to ``stream`` (``stdout`` or ``stderr``).

        Writes are queued and taken in batches: a node printing line by line pays
        for a deque append per write, not for the bookkeeping (unless its lines are
        shown live, which hands each line on as it ends).
        """
        if text and not self._closed:  # closed: an abandoned call still printing
            self._queue.append((stream, text))
            if self.on_lines is not None or len(self._queue) >= BATCH or len(text) >= CHUNK:
                self._take()

    def _take(self) -> None:
        """Move the queued writes into the rings (adjacent writes to a stream as one)."""
        with self._lock:
            queue = self._queue
            items = [queue.popleft() for _ in range(len(queue))]
            if self._closed:
                return
            i, n = 0, len(items)
            while i < n:
                stream, j = items[i][0], i + 1
                while j < n and items[j][0] == stream:
                    j += 1
                text = items[i][1] if j == i + 1 else "".join(t for _, t in items[i:j])
                self._add(stream, text)
                i = j

    def _add(self, stream: str, text: str) -> None:
        if text.isascii():
            n = len(text)
        else:  # what cannot be UTF-8 (a lone surrogate) is stored as "?"
            data = text.encode("utf-8", "replace")
            text, n = data.decode("utf-8"), len(data)
        self.written += n
        if stream != self._open or self._open_size >= CHUNK:
            self._seal()
            self._open = stream
        self._parts.append(text)
        self._open_size += n
        if self.on_lines is None:
            return
        if "\n" in text:
            lines = (self._partial.get(stream, "") + text).split("\n")
            self._partial[stream] = lines.pop()
            self._emit(stream, lines)
        else:
            self._partial[stream] = self._partial.get(stream, "") + text
        partial = self._partial[stream]
        if len(partial) > LONG_LINE:  # shown in pieces, not held forever
            # the last MASK_MARGIN characters wait for the next piece, so a secret
            # across the cut is masked whole
            self._partial[stream] = partial[-MASK_MARGIN:]
            self._emit(stream, [partial[:-MASK_MARGIN]], held=self._partial[stream])

    def _seal(self) -> None:
        if self._open is not None and self._parts:
            self._seq += 1
            ring = self._rings.get(self._open)
            if ring is None:
                ring = self._rings[self._open] = _Ring(self.limit)
            ring.add(self._seq, "".join(self._parts), self._open_size)
        self._parts, self._open_size = [], 0

    def _emit(self, stream: str, lines: list[str], held: str = "") -> None:
        """Hand on ``lines``, masked; ``held`` is the rest of an unended last line."""
        assert self.on_lines is not None
        masked = [self.mask(line) for line in lines]
        if self.mask is not _unmasked:
            # a line shown in pieces: its piece is masked between the text before
            # it and the text held back after it
            before = self._before.pop(stream, "")
            if before or held:  # ``held`` comes with one line only: a piece
                masked[0] = masked_between(self.mask, before, lines[0], held)
            if held:
                self._before[stream] = (before + lines[0])[-MASK_MARGIN:]
        token = _current.set(None)  # what the sink prints is not this task's output
        try:
            self.on_lines(stream, masked)
        except (OSError, ValueError):  # a closed stderr never changes a task's outcome
            pass
        finally:
            _current.reset(token)

    def close(self) -> None:
        """The attempt is over: hand on unended lines; later writes are ignored."""
        self._take()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._seal()
            if self.on_lines is not None:
                for stream, rest in self._partial.items():
                    if rest:
                        self._emit(stream, [rest])

    def tail(self, stream: str, chars: int = TAIL) -> str:
        """The last ``chars`` characters written to ``stream``, masked before the cut."""
        self._take()
        with self._lock:
            self._seal()
            texts: list[str] = []
            got = 0
            ring = self._rings.get(stream)
            for _, text, _ in reversed(ring.chunks if ring else ()):
                texts.append(text)
                got += len(text)
                if got >= chars + MASK_MARGIN:
                    break
            return self.mask("".join(reversed(texts))[-(chars + MASK_MARGIN) :])[-chars:]

    def freeze(
        self, step: int, order_key: str, node: str, index: int | None, attempt: int
    ) -> TaskOutput | None:
        """The stored form: chunks in write order within the limit; None if nothing."""
        if not self._queue and not self.written:  # the usual case: it printed nothing
            self._closed = True
            return None
        self.close()
        if not self.written:
            return None
        chunks = sorted(
            (seq, stream, text, size)
            for stream, ring in self._rings.items()
            for seq, text, size in ring.chunks
        )
        kept: list[tuple[str, str]] = []
        room = self.limit
        before, cut_stream = "", ""  # what the cut chunk's stream wrote just before the cut
        for i in range(len(chunks) - 1, -1, -1):
            _, stream, text, size = chunks[i]
            if size > room:
                end = _last_bytes(text, room) if room > 0 else ""
                kept.append((stream, end))
                before, cut_stream = _written_before(chunks, i, len(text) - len(end)), stream
                break
            kept.append((stream, text))
            room -= size
        kept.reverse()
        merged: list[tuple[str, str]] = []
        for stream, text in kept:
            if merged and merged[-1][0] == stream:
                merged[-1] = (stream, merged[-1][1] + text)
            elif text:
                merged.append((stream, text))
        cut = self.written - sum(_size(t) for _, t in merged)  # bytes as written, not masked
        parts = [(stream, self.mask(text)) for stream, text in merged]
        if parts and before and parts[0][0] == cut_stream:
            # masked across the cut, then cut: no part of a secret is kept
            parts[0] = (parts[0][0], masked_between(self.mask, before, merged[0][1]))
        return TaskOutput(step, order_key, node, index, attempt, tuple(parts), cut)


def _written_before(chunks: list[tuple[int, str, str, int]], i: int, at: int) -> str:
    """The MASK_MARGIN characters written to chunk ``i``'s stream before its character ``at``."""
    stream = chunks[i][1]
    texts = [chunks[i][2][:at]]
    got = at
    while got < MASK_MARGIN and i > 0 and chunks[i - 1][1] == stream:
        i -= 1
        texts.append(chunks[i][2])
        got += len(chunks[i][2])
    return "".join(reversed(texts))[-MASK_MARGIN:]


def masked_between(mask: Mask, before: str, text: str, after: str = "") -> str:
    """``text`` masked as it stands between ``before`` and ``after``.

    ``before + text + after`` is masked whole, and what stands for ``before`` and for
    ``after`` is dropped: a secret across either edge shows as ``***``, never in part.
    """
    whole = mask(before + text + after)
    head = _common_prefix(whole, mask(before)) if before else 0
    tail = _common_prefix(whole[::-1], mask(after)[::-1]) if after else 0
    return whole[head : max(head, len(whole) - tail)]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _last_bytes(text: str, room: int) -> str:
    """The end of ``text`` within ``room`` bytes, from the start of a line where one fits."""
    data = text.encode("utf-8", "replace")[-room:]
    tail = data.decode("utf-8", "ignore")  # a character cut in two is dropped
    newline = tail.find("\n")
    return tail[newline + 1 :] if 0 <= newline < len(tail) - 1 else tail


# Python nodes ---------------------------------------------------------------------------

_current: contextvars.ContextVar[Capture | None] = contextvars.ContextVar(
    "flowrun_capture", default=None
)
_install_lock = threading.Lock()


class _Proxy:
    """``sys.stdout``/``sys.stderr`` for the process: a task's writes go to its capture."""

    def __init__(self, stream: str, real: TextIO) -> None:
        self._stream = stream
        self._real = real

    def write(self, text: str) -> int:
        capture = _current.get()
        if capture is None:
            return self._real.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        capture.write(self._stream, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current.get() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer…
        return getattr(self._real, name)


def install() -> None:
    """Put the proxies in front of ``sys.stdout``/``sys.stderr`` (again if replaced)."""
    if isinstance(sys.stdout, _Proxy) and isinstance(sys.stderr, _Proxy):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _Proxy) and sys.stdout is not None:
            sys.stdout = _Proxy("stdout", sys.stdout)
        if not isinstance(sys.stderr, _Proxy) and sys.stderr is not None:
            sys.stderr = _Proxy("stderr", sys.stderr)


def capture_active() -> bool:
    """Whether this thread's prints go to a task's capture now."""
    return _current.get() is not None


class capturing:  # a context manager, named like contextlib's
    """While the block runs on this thread, its ``print``s go to ``capture`` (None: to
    the process's own streams, as if no task's capture were active on this thread)."""

    __slots__ = ("_capture", "_token")

    def __init__(self, capture: Capture | None) -> None:
        self._capture = capture

    def __enter__(self) -> None:
        if self._capture is not None:
            install()
        self._token = _current.set(self._capture)

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)
