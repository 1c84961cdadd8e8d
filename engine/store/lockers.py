"""Who holds a database file: named when a write waited past ``busy_timeout``.

Every process with the database, its ``-wal`` or its ``-shm`` open is found by
scanning ``/proc/*/fd``; the one holding SQLite's WAL write lock (a POSIX lock on
byte 120 of the ``-shm`` file) is found in ``/proc/locks``. Linux only; elsewhere,
or where ``/proc`` hides other processes, nobody is named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .leases import state_name

WAL_WRITE_LOCK = 120  # the -shm byte a WAL writer locks (sqlite3 os_unix.c: WALINDEX_LOCK_OFFSET)


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    command: str
    state: str  # running, sleeping, stopped, …
    writer: bool  # holds the write lock

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.state}: {self.command})"


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(w.decode(errors="replace") for w in words).split())
    return text if len(text) <= 80 else text[:79] + "…"


def _write_lockers(shm: os.stat_result) -> set[int]:
    """Pids holding a POSIX write lock over the WAL write-lock byte of the ``-shm`` file."""
    pids: set[int] = set()
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return pids
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        try:
            kind, mode, pid, dev_ino, start, end = parts[1], parts[3], parts[4], *parts[5:8]
            major, minor, ino = dev_ino.split(":")
            on_shm = (int(major, 16), int(minor, 16), int(ino)) == (
                os.major(shm.st_dev),
                os.minor(shm.st_dev),
                shm.st_ino,
            )
            covers = int(start) <= WAL_WRITE_LOCK and (end == "EOF" or int(end) >= WAL_WRITE_LOCK)
        except ValueError:
            continue
        if kind == "POSIX" and mode == "WRITE" and on_shm and covers:
            pids.add(int(pid))
    return pids


def holders(path: Path) -> list[Holder]:
    """Other processes with ``path`` (or its WAL files) open; the write-lock holder first."""
    files = set()
    writers: set[int] = set()
    for suffix in ("", "-wal", "-shm"):
        try:
            st = path.with_name(path.name + suffix).stat()
        except OSError:
            continue
        files.add((st.st_dev, st.st_ino))
        if suffix == "-shm":
            writers = _write_lockers(st)
    if not files:
        return []
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in files:
                state = state_name(pid)
                if state is not None:
                    found.append(Holder(pid, _command(pid), state, pid in writers))
                break
    return sorted(found, key=lambda h: (not h.writer, h.pid))


def locked_message(path: Path, waited_s: float) -> tuple[str, str]:
    """The message and hint for a write that waited ``waited_s`` for ``path``'s lock."""
    found = holders(path)
    writers = [h for h in found if h.writer] or found[:3]
    wait = f"waited {waited_s:g}s (FLOWRUN_BUSY_TIMEOUT)"
    if not writers:
        return (
            f"cannot write to {path}: database is locked by a process not visible here; {wait}",
            "another host or container may be writing to it; nothing of the failed write"
            " was kept: retry once it is done",
        )
    who = "; ".join(map(str, writers))
    held = "held by" if writers[0].writer else "open in"
    message = f"cannot write to {path}: database is locked, {held} {who}; {wait}"
    stopped = [h for h in writers if h.state == "stopped"]
    if stopped:
        pid = stopped[0].pid
        hint = f"pid {pid} is stopped: `kill -CONT {pid}` lets it finish (or end it), then retry"
    else:
        hint = "wait for it to finish, then retry (nothing of the failed write was kept)"
    return message, hint
