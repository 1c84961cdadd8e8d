"""Who holds a run: the lease liveness rule, shared by every store.

A lease names its owner (:class:`~.base.LeaseOwner`: host, pid, the pid's start
time, pid namespace and boot id) and the time of its last heartbeat.

* An owner this process can check (same host, boot and pid namespace, start time
  known) is live exactly while that process exists with that start time, whatever
  its heartbeat says: a stopped owner, or one whose heartbeat thread a long C call
  starves of the GIL, keeps its run. A reused pid (another start time) is dead.
* Any other owner (another host, another container's pid namespace, a lease taken
  by an older flowrun) is live while its heartbeat is younger than
  :func:`stale_after` (30 s, ``FLOWRUN_LEASE_STALE_S``): a heartbeat is all there is.

``--force`` takes a live lease all the same (the runtime then stops a checkable owner).
"""

from __future__ import annotations

import functools
import os
import socket

from ..envvars import LEASE_STALE_S as LEASE_STALE_S  # the default, FLOWRUN_LEASE_STALE_S
from ..envvars import lease_stale_s
from .base import LeaseOwner

HOST = socket.gethostname()

_STATES = {"R": "running", "S": "sleeping", "D": "in disk wait", "T": "stopped", "t": "stopped"}


def stale_after() -> float:
    """Seconds without a heartbeat after which a lease counts as abandoned."""
    return lease_stale_s()


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, start time) of ``pid`` from ``/proc``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[2]


def running_as(pid: int, started: int) -> bool:
    """True if ``pid`` is the very process that started at ``started`` and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


def state_name(pid: int) -> str | None:
    """``stopped``, ``running``, … for ``pid``; None if there is no such process."""
    stat = proc_stat(pid)
    return None if stat is None else _STATES.get(stat[0], stat[0])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live, non-zombie process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_stat(pid)
    return stat is None or stat[0] != "Z"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def me() -> LeaseOwner:
    """This process, as a lease names it."""
    return _me(os.getpid())  # keyed by pid: a forked child is another owner


@functools.cache
def _me(pid: int) -> LeaseOwner:
    try:
        pidns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    boot = _read("/proc/sys/kernel/random/boot_id")
    return LeaseOwner(HOST, pid, start_time(pid), pidns, boot)


def checkable(owner: LeaseOwner) -> bool:
    """True if this process can see whether ``owner`` exists (same host, boot, pid namespace)."""
    here = me()
    return (
        owner.start is not None
        and here.pidns is not None
        and (owner.host, owner.boot, owner.pidns) == (here.host, here.boot, here.pidns)
    )


def owner_alive(owner: LeaseOwner) -> bool | None:
    """Whether a checkable ``owner`` still exists; None if it cannot be told from here."""
    if not checkable(owner) or owner.start is None:
        return None
    if running_as(owner.pid, owner.start):
        return True
    if proc_stat(owner.pid) is None and pid_alive(owner.pid):
        return None  # it exists but /proc hides it (hidepid): its start time is unknown
    return False


def lease_live(owner: LeaseOwner | None, beat: float | None, now: float) -> bool:
    """A lease whose owner is alive (checked on this host) or, if it cannot be checked,
    still heartbeats."""
    if owner is None:
        return False
    alive = owner_alive(owner)
    if alive is not None:
        return alive
    fresh = beat is not None and now - beat < stale_after()
    if owner.host == HOST and owner.pidns is None:  # taken by a flowrun before schema 6
        return fresh and pid_alive(owner.pid)
    return fresh


def describe(owner: LeaseOwner, beat: float | None, now: float) -> str:
    """``pid 123 on host`` and what is known of it (``stopped``, its heartbeat's age)."""
    out = f"pid {owner.pid} on {owner.host}"
    if owner_alive(owner):
        state = state_name(owner.pid)
        return f"{out} ({state})" if state == "stopped" else out
    if beat is not None:
        out += f", last heartbeat {max(0.0, now - beat):.0f}s ago"
    if owner.host == HOST and not checkable(owner) and owner.pidns is not None:
        out += " (another pid namespace)"
    return out
