"""The effects channel: what a running task tells the coordinator, and how it is told to stop.

A task runs on a worker (a pool thread, a pool process, a Dask worker) and never
touches the store, the observer or the cost ledger. What must reach the
coordinator while it runs travels on one channel, as plain picklable records:

- :class:`UsageReported`, one billed LLM call. **Durable**: the worker's
  :meth:`EffectSink.send_durable` returns only once the coordinator has committed
  the ledger row, so a kill -9 of the coordinator after that cannot lose a paid
  call (the attempt goes on only then, as it did when the worker wrote the row).
- :class:`ProcStarted`, a command's process group (host, pid, pgid, start time),
  with an id the worker made (``proc_id``), so it need not learn a row id.
  **Durable**, for a takeover to find it. :class:`ProcEnded` forgets it (not durable:
  a task's report forgets whatever its commands left noted).
- :class:`TaskStarted`, :class:`TaskRetried`, :class:`OutputLines`: for the
  observer (the live view, metrics). Not durable.

Every effect names its task (``step``, ``key``), the execution of the task that sent
it (``execution``: an id made as a worker starts running it, so a task Dask runs
again after its worker died is a new execution) and its place among the effects that
execution sent (``seq``, 1, 2, …). The execution's report (``TaskReport.effects``)
counts those the channel took (an effect whose send raised :class:`EffectNotSent` is
not waited for), and the coordinator applies all of them before the report; whatever a
report also carries (its usage list) is applied once, deduplicated by (execution,
attempt, call).

Stopping goes the other way, through three flags the worker polls (:class:`Flag`:
``threading.Event``, a ``multiprocessing.Manager().Event()`` proxy, a
``distributed.Event`` all fit): ``stop`` (SIGINT/SIGTERM: no new attempt), ``abort``
(the grace period is over: kill running work), ``over_budget`` (no new LLM call).
The coordinator also cancels futures that have not started.

Implementing a channel (threads and processes here, Dask elsewhere) means:

- a worker side, :class:`EffectSink`, picklable, put into every ``TaskSpec``;
- a coordinator side, :class:`Channel`: ``open(deliver)`` starts handing arriving
  effects to ``deliver`` (from any thread; it must not block), ``ack(effect,
  error)`` releases a worker waiting in ``send_durable`` (``error``: the coordinator
  could not apply it, say the lease is lost; the worker's call raises
  :class:`EffectRefused`), ``close()`` ends it: a durable effect is then never
  dropped quietly (a send raises :class:`EffectNotSent`, a wait for an
  acknowledgement that can no longer come ends with :class:`EffectRefused`);
- the three flags, picklable, as ``Channel.control``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ..records import Flag, LLMUsage

__all__ = [
    "Channel",
    "Control",
    "Effect",
    "EffectNotSent",
    "EffectRefused",
    "EffectSink",
    "Flag",
    "OutputLines",
    "ProcEnded",
    "ProcStarted",
    "TaskRetried",
    "TaskStarted",
    "UsageReported",
]


class EffectRefused(Exception):
    """The coordinator could not apply a durable effect (its store refused it)."""


class EffectNotSent(EffectRefused):
    """The channel did not take an effect (it is closed, its queue is gone): the
    coordinator never sees it, and the execution's report does not count it."""


@dataclass(frozen=True, slots=True)
class Effect:
    """What every effect carries: its task and its place among that task's effects."""

    step: int
    key: str  # the task's order key
    seq: int  # 1, 2, … per execution (its TaskReport counts them)
    execution: str = field(default="", kw_only=True)  # the task's run on a worker that sent it

    DURABLE: ClassVar[bool] = False  # sent with send_durable, acknowledged once applied

    @property
    def ack_id(self) -> str:
        """Unique within a drive: how a durable effect's acknowledgement finds its sender."""
        return f"{self.step}/{self.seq}/{self.execution}/{self.key}"


@dataclass(frozen=True, slots=True)
class TaskStarted(Effect):
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class TaskRetried(Effect):
    attempt: int
    reason: str
    error: str
    delay: float


@dataclass(frozen=True, slots=True)
class OutputLines(Effect):
    attempt: int
    stream: str  # stdout | stderr
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UsageReported(Effect):
    DURABLE: ClassVar[bool] = True

    call: int  # 1, 2, … per execution: with it and the usage's attempt, what dedups it
    node: str
    index: int | None
    usage: LLMUsage


@dataclass(frozen=True, slots=True)
class ProcStarted(Effect):
    DURABLE: ClassVar[bool] = True

    proc_id: str  # made by the worker: "<host>:<pid>:<start time>"
    node: str
    host: str  # where the command runs (a takeover kills it only there)
    pidns: str | None  # that host's pid namespace and boot, as store.leases.me() has them
    boot: str | None
    pid: int
    pgid: int
    start_time: int  # /proc/<pid>/stat field 22: a reused pid is never killed
    started_at: float


@dataclass(frozen=True, slots=True)
class ProcEnded(Effect):
    proc_id: str


@dataclass(frozen=True, slots=True)
class Control:
    """The stop flags a task polls; picklable when its flags are."""

    stop: Flag  # SIGINT/SIGTERM: no new attempt, running work has the grace period
    abort: Flag  # the grace period is over: kill and abandon running work
    over_budget: Flag  # the cost ledger passed the budget: no new LLM call, no retry


class EffectSink(Protocol):
    """The worker's end: picklable, one per drive, shared by the drive's tasks."""

    def send(self, effect: Effect) -> None:
        """Hand ``effect`` to the coordinator; do not wait. Raise :class:`EffectNotSent`
        if the channel cannot take it (it was closed)."""

    def send_durable(self, effect: Effect, control: Control) -> None:
        """Hand ``effect`` over and return once the coordinator applied it; raise
        :class:`EffectNotSent` if the channel cannot take it, :class:`EffectRefused` if
        the coordinator could not apply it (or the drive ended first), and give up
        waiting (raise) once ``control.abort`` is set."""


class Channel(Protocol):
    """The coordinator's end of one drive's channel."""

    @property
    def sink(self) -> EffectSink: ...

    @property
    def control(self) -> Control: ...

    def open(self, deliver: Callable[[Effect], None]) -> None:
        """From now on hand every arriving effect to ``deliver`` (any thread; it never blocks)."""

    def ack(self, effect: Effect, error: str | None = None) -> None:
        """The durable ``effect`` was applied (``error``: it could not be)."""

    def close(self) -> None:
        """The drive is over: stop delivering, free what the channel holds."""
