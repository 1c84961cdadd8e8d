"""Taking a run over: stop its old owner's commands (and, forced, the owner) first.

``run:``/``shell:`` commands start in their own session, so a timeout can kill the
whole process group; the price is that ``kill -9`` of flowrun leaves them running.
Each command's group is noted in the store as it starts (``runtime/apply.py``
``ProcLog``, from the worker's effects) and forgotten as it ends. A process that
takes over a run (:func:`take_over`) first kills the old owner itself if
``--force`` displaced a live owner on this host (SIGKILL: a stopped owner cannot
act on anything gentler; its commits are already fenced by the new lease token),
then kills the groups a dead owner left running (:func:`reap_orphans`), and only
then runs their nodes again: two copies of a command never run at once.

A process is killed only if it still exists with the start time recorded
(``/proc/<pid>/stat`` field 22): a reused pid is never killed. An owner counts as
dead when its pid is gone, a zombie, or another process (another start time).
Rows written in another pid namespace (another container) are not ours to judge.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from ..store.base import LeaseOwner, ProcRecord, Store
from ..store.leases import me, owner_alive, proc_stat, running_as, stale_after, start_time

__all__ = ["KILL_WAIT_S", "reap_orphans", "start_time", "stop_owner", "take_over"]

KILL_WAIT_S = 5.0  # how long a takeover waits for killed processes to be gone


def _group_running(pgid: int) -> bool:
    """True while some non-zombie process is in process group ``pgid``."""
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return False
    for name in entries:
        stat = proc_stat(int(name))
        if stat is not None and stat[1] == pgid and stat[0] != "Z":
            return True
    return False


def take_over(store: Store, run_id: str, *, force: bool = False) -> int:
    """Take ``run_id``'s lease; stop whatever its old owner still runs; return the token.

    Refused (``ResumeRefused``) while the owner lives, unless ``force``: then a live
    owner on this host that is stalled is killed (:func:`stop_owner`), and the
    commands of a displaced live owner are killed like those of a dead one.
    """
    taken = store.take_lease(run_id, force=force)
    displaced = None
    if taken.previous is not None and owner_alive(taken.previous):
        displaced = taken.previous
        stop_owner(displaced, taken.previous_beat)
    reap_orphans(store, run_id, taken.token, displaced=displaced)
    return taken.token


def stop_owner(owner: LeaseOwner, beat: float | None) -> bool:
    """SIGKILL a displaced live ``owner`` on this host if it is stalled; True if killed.

    Stalled: stopped (SIGSTOP, it could act on nothing gentler), or silent for longer
    than the heartbeat window (a C call holding the GIL, say). A running owner is
    left to stop at its next write, which the new lease token refuses (LeaseLost).
    """
    stat = proc_stat(owner.pid)
    if owner.start is None or owner == me() or stat is None or not owner_alive(owner):
        return False
    silent = beat is None or time.time() - beat >= stale_after()
    if stat[0] not in ("T", "t") and not silent:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(owner.pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while running_as(owner.pid, owner.start) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def _ours_to_judge(r: ProcRecord) -> bool:
    """A row written on this host, boot and pid namespace (or by a flowrun before schema 6)."""
    here = me()
    if r.host != here.host:
        return False
    return r.pidns is None or (r.pidns, r.boot) == (here.pidns, here.boot)


def reap_orphans(
    store: Store, run_id: str, token: int, *, displaced: LeaseOwner | None = None
) -> list[ProcRecord]:
    """Kill the process groups a dead (or ``displaced``) owner of ``run_id`` left running.

    Call it right after taking the lease (``token``). Rows of owners on other hosts,
    in other pid namespaces, or alive and not displaced are left alone; the others
    are deleted. Returns the groups that were killed, once they are gone (or after
    ``KILL_WAIT_S``).
    """
    rows = store.procs(run_id)
    if not rows:
        return []
    handled: list[int] = []
    killed: list[ProcRecord] = []
    for r in rows:
        if not _ours_to_judge(r):
            continue  # another host's or another container's
        forced_out = displaced is not None and (r.owner_pid, r.owner_start) == (
            displaced.pid,
            displaced.start,
        )
        if not forced_out and running_as(r.owner_pid, r.owner_start):
            continue  # its owner still runs it
        handled.append(r.id)
        stat = proc_stat(r.pid)
        # the leader itself (a zombie leader too: its group id cannot have been reused)
        if stat is not None and stat[2] == r.start_time and stat[1] == r.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.pgid, signal.SIGKILL)
                killed.append(r)
    deadline = time.monotonic() + KILL_WAIT_S
    for r in killed:
        while _group_running(r.pgid) and time.monotonic() < deadline:
            time.sleep(0.01)
    if handled:
        store.forget_procs(run_id, token, handled)
    return killed
