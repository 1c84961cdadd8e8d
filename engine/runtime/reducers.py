"""How a step's deltas are merged into the state, key by key."""

from __future__ import annotations

import hashlib
import math
from typing import Any


class ReduceError(Exception):
    pass


def reduce(reducer: str, current: Any, value: Any, key: str, *, owned: bool = False) -> Any:
    """Combine ``value`` into ``current``; with ``owned``, ``current`` may be mutated.

    The engine passes ``owned=True`` once it has copied a container during a step,
    so a 100,000-item ``foreach`` appends in linear time.
    """
    if reducer == "replace":
        return value
    if reducer == "append":
        out = _list(current, key) if owned else list(_list(current, key))
        out.append(value)
        return out
    if reducer == "extend":
        if not isinstance(value, list):
            raise ReduceError(f"state key {key!r} (extend) got {type(value).__name__}, not a list")
        out = _list(current, key) if owned else list(_list(current, key))
        out.extend(value)
        return out
    if reducer == "merge":
        if not isinstance(value, dict):
            raise ReduceError(
                f"state key {key!r} (merge) got {type(value).__name__}, not a mapping"
            )
        base = current if isinstance(current, dict) else {}
        merged = base if owned and base is current else dict(base)
        merged.update(value)
        return merged
    if reducer in ("add", "max", "min"):
        if current is None:
            return value
        try:
            if reducer != "add":
                return max(current, value) if reducer == "max" else min(current, value)
            total = current + value
            if isinstance(total, float) and not math.isfinite(total):
                raise ReduceError(
                    f"state key {key!r} (add) overflows: {current!r} + {value!r}"
                    " is beyond the range of a JSON number"
                )
            return total
        except TypeError:
            raise ReduceError(
                f"state key {key!r} ({reducer}) cannot combine"
                f" {type(current).__name__} and {type(value).__name__}"
            ) from None
    raise ReduceError(f"unknown reducer {reducer!r}")


def _list(current: Any, key: str) -> list[Any]:
    if current is None:
        return []
    if not isinstance(current, list):
        raise ReduceError(f"state key {key!r} holds {type(current).__name__}, not a list")
    return current


SNAPSHOT_EVERY = 64  # delta rows of an append/extend key between two whole-value rows


class AppendLog:
    """What an ``append``/``extend`` key stores each step: the items it gained, or itself.

    A list key that grows by a few items a step is stored as those items (a delta
    row) rather than whole, so storage and hashing grow with what changed. Every
    :data:`SNAPSHOT_EVERY` deltas, or once the deltas since the last whole value
    outweigh it, the whole value is stored again (a snapshot), so a resume reads at
    most that many rows per key and never more than about twice the value's bytes.
    The first change of a key after a start or resume is a snapshot.

    The key's digest stays ``value_digest`` of its whole JSON text: the text of a
    list only grows at its end, so a running SHA-256 of all but its closing ``]``
    is extended by the new items' text.
    """

    def __init__(self) -> None:
        self._prefix: dict[str, Any] = {}  # key -> sha256 of its stored text minus "]"
        self._deltas: dict[str, int] = {}  # key -> delta rows since its snapshot
        self._bytes: dict[str, tuple[int, int]] = {}  # key -> (snapshot size, delta bytes)

    def snapshot_due(self, key: str) -> bool:
        if key not in self._prefix or self._deltas[key] >= SNAPSHOT_EVERY:
            return True
        size, since = self._bytes[key]
        return since > size

    def snapshot(self, key: str, text: str) -> str:
        """Record the whole value ``text`` as stored; returns its digest."""
        h = hashlib.sha256(text[:-1].encode())
        self._prefix[key], self._deltas[key], self._bytes[key] = h, 0, (len(text), 0)
        return _close(h)

    def delta(self, key: str, items: str, was_empty: bool) -> str:
        """Record the items ``items`` (a JSON array's text) appended; returns the digest."""
        h = self._prefix[key]
        h.update((items[1:-1] if was_empty else "," + items[1:-1]).encode())
        size, since = self._bytes[key]
        self._deltas[key] += 1
        self._bytes[key] = (size, since + len(items))
        return _close(h)


def _close(h: Any) -> str:
    whole = h.copy()
    whole.update(b"]")
    return str(whole.hexdigest())
