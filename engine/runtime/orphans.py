"""Commands a crashed flowrun left running: noted as they start, killed on takeover.

``run:``/``shell:`` commands start in their own session, so a timeout can kill the
whole process group; the price is that ``kill -9`` of flowrun leaves them running.
Each command's group is noted in the store as it starts (:class:`ProcLog`) and
forgotten as it ends. A process that takes over a run whose owner died on this
host kills the groups still running (:func:`reap_orphans`) before it runs their
nodes again, so two copies of a command never run at once.

A group is killed only if its leader still exists with the start time recorded
(``/proc/<pid>/stat`` field 22): a reused pid is never killed. An owner counts as
dead when its pid is gone, a zombie, or another process (another start time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from ..errors import FlowrunError
from ..nodes.base import Context, TaskError
from ..store.base import ProcRecord, Store
from ..store.leases import HOST

KILL_WAIT_S = 5.0  # how long a takeover waits for killed groups to be gone


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


def _running_as(pid: int, started: int) -> bool:
    """True if ``pid`` is the very process that started at ``started`` and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


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


class ProcLog:
    """The run scope's process log: a row per command as it starts, deleted as it ends.

    Called from worker threads; each call is one small fenced transaction through
    the store's lock (like the cost ledger). A failed write fails the attempt for
    good: the run's lease is gone, or the store cannot be written.
    """

    def __init__(self, store: Store, run_id: str, token: int) -> None:
        self.store = store
        self.run_id = run_id
        self.token = token
        self.owner_start = start_time(os.getpid())

    def started(self, ctx: Context, pid: int) -> int | None:
        """Note the group ``pid`` leads; return the row id, or None if nothing was noted."""
        started = start_time(pid)
        if started is None or self.owner_start is None:
            return None  # no /proc: a takeover could not tell this process from another
        try:
            return self.store.record_proc(
                self.run_id,
                self.token,
                ProcRecord(
                    run_id=self.run_id,
                    host=HOST,
                    owner_pid=os.getpid(),
                    owner_start=self.owner_start,
                    pid=pid,
                    pgid=pid,  # started with start_new_session: it leads its group
                    start_time=started,
                    step=ctx.step,
                    node=ctx.node,
                    started_at=time.time(),
                ),
            )
        except FlowrunError as exc:
            raise TaskError(exc.message, retryable=False, reason="store") from None

    def ended(self, row: int) -> None:
        try:
            self.store.forget_procs(self.run_id, self.token, [row])
        except FlowrunError as exc:
            raise TaskError(exc.message, retryable=False, reason="store") from None


def reap_orphans(store: Store, run_id: str, token: int) -> list[ProcRecord]:
    """Kill the process groups a dead owner of ``run_id`` (on this host) left running.

    Call it right after taking the lease (``token``). Rows of owners on other hosts
    or still alive are left alone; the rows of dead owners are deleted. Returns the
    groups that were killed, once they are gone (or after ``KILL_WAIT_S``).
    """
    rows = store.procs(run_id)
    if not rows:
        return []
    handled: list[int] = []
    killed: list[ProcRecord] = []
    for r in rows:
        if r.host != HOST or _running_as(r.owner_pid, r.owner_start):
            continue  # not ours to judge, or its owner still runs it
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
