"""Who holds a run: the lease liveness rule, shared by every store.

A lease names a host, a pid and the time of its last heartbeat. It is live while
the heartbeat is younger than ``LEASE_STALE_S`` and, on this host, the process
still exists; a dead or silent holder can be taken over without ``--force``.
"""

from __future__ import annotations

import os
import socket

from ..errors import UsageError

LEASE_STALE_S = 30.0  # the default; FLOWRUN_LEASE_STALE_S overrides it
HOST = socket.gethostname()


def stale_after() -> float:
    """Seconds without a heartbeat after which a lease counts as abandoned."""
    raw = os.environ.get("FLOWRUN_LEASE_STALE_S")
    if raw is None:
        return LEASE_STALE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"FLOWRUN_LEASE_STALE_S={raw!r} is not a number of seconds > 0")
    return value


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live, non-zombie process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lease_live(host: str | None, pid: int | None, beat: float | None, now: float) -> bool:
    """A lease whose holder still heartbeats (and, on this host, still exists)."""
    if host is None or beat is None or now - beat >= stale_after():
        return False
    return host != HOST or (pid is not None and pid_alive(pid))
