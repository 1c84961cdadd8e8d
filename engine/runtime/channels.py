"""The in-process effects channel (threads, and a task the coordinator runs inline).

See ``runtime/effects.py`` for the contract. :class:`LocalChannel` hands effects
over by reference (its sink is never pickled: a thread pool passes specs by
reference); its flags can be the coordinator's own events. :class:`InlineSink`
applies each effect as it is sent while the coordinator waits for a task it runs
itself. :class:`DriveSink` is what a drive's in-process tasks send on: the channel
while the drive lasts, and once it ended, a thread a task left running writes its
paid calls to the ledger itself (they are still billed). Worker processes use
``runtime/mpchannel.py``.

An effect applied on a task's thread is applied with that thread's output capture
suspended: what an observer hook prints is not the task's output (and cannot send
an effect of its own while one is being applied).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..output import capture_active, capturing
from .effects import Control, Effect, EffectNotSent, EffectRefused, EffectSink, UsageReported

ABORTED = "the run was aborted before the coordinator applied it"
CLOSED = "the run's drive is over: its effects channel is closed"
ENDED = "the run's drive ended before the coordinator applied it"

_log = logging.getLogger("flowrun")


class DriveEnded(EffectRefused):
    """The drive ended while a durable effect waited for its acknowledgement: the
    coordinator never applied it."""


class _Ack:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


class LocalSink:
    """In-process sink: ``send`` calls the coordinator's ``deliver`` on the worker's thread."""

    def __init__(self) -> None:
        self.deliver: Callable[[Effect], None] | None = None
        self._waiting: dict[str, _Ack] = {}
        self._lock = threading.Lock()

    def send(self, effect: Effect) -> None:
        deliver = self.deliver
        if deliver is None:
            raise EffectNotSent(CLOSED)
        deliver(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        ack = _Ack()
        with self._lock:  # so close() either refuses it here or releases its wait below
            deliver = self.deliver
            if deliver is None:
                raise EffectNotSent(CLOSED)
            self._waiting[effect.ack_id] = ack
        deliver(effect)
        while not ack.done.wait(0.05):
            if control.abort.is_set():
                with self._lock:
                    self._waiting.pop(effect.ack_id, None)
                raise EffectRefused(ABORTED)
        if ack.error is ENDED:
            raise DriveEnded(ENDED)
        if ack.error is not None:
            raise EffectRefused(ack.error)

    def ack(self, effect: Effect, error: str | None) -> None:
        with self._lock:
            ack = self._waiting.pop(effect.ack_id, None)
        if ack is not None:
            ack.error = error
            ack.done.set()

    def close(self) -> None:
        """Take no more effects; a sender still waiting for an acknowledgement is refused."""
        with self._lock:
            self.deliver = None
            waiting, self._waiting = self._waiting, {}
        for ack in waiting.values():
            ack.error = ENDED
            ack.done.set()


class LocalChannel:
    def __init__(self, control: Control | None = None) -> None:
        self._sink = LocalSink()
        self._control = control or Control(threading.Event(), threading.Event(), threading.Event())

    @property
    def sink(self) -> LocalSink:
        return self._sink

    @property
    def control(self) -> Control:
        return self._control

    def open(self, deliver: Callable[[Effect], None]) -> None:
        self._sink.deliver = deliver

    def ack(self, effect: Effect, error: str | None = None) -> None:
        self._sink.ack(effect, error)

    def close(self) -> None:
        self._sink.close()


class InlineSink:
    """The sink of a task the coordinator runs inline, on its own thread, waiting for it.

    Until :meth:`close` (the task returned), each effect is applied at once by the thread
    that sends it, one at a time (its output capture suspended meanwhile): the
    coordinator's own, which runs the task and its python call, or one such a call was
    abandoned on. The coordinator's loop is suspended in the task meanwhile (whichever
    thread drives it, ``runtime/relay.py``), so nothing else touches what the effects
    change, and a durable effect of the call could not wait for the loop (it waits for
    the call). The lock is reentrant: a hook that sent an effect on the same thread while
    one is applied (main's sink had no lock) must not wait for itself. After close, a
    thread the task left running (a python call abandoned past its timeout or at an
    interrupt) may still send: its effects go to ``later`` (the drive's
    :class:`DriveSink`) and are applied on the coordinator's thread, as those of a task
    on a pool are (a paid call: by the sending thread, once the drive ended).
    """

    def __init__(self, apply: Callable[[Effect], str | None], later: EffectSink) -> None:
        self._apply = apply
        self._later = later
        self._lock = threading.RLock()
        self._open = True

    def send(self, effect: Effect) -> None:
        with self._lock:
            if self._open:
                _uncaptured(self._apply, effect)
                return
        self._later.send(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        with self._lock:
            if self._open:
                error = _uncaptured(self._apply, effect)
                if error is not None:
                    raise EffectRefused(error)
                return
        self._later.send_durable(effect, control)

    def close(self) -> None:
        """The coordinator stopped waiting for the task (an effect being applied ends first)."""
        with self._lock:
            self._open = False


def _uncaptured(apply: Callable[[Effect], str | None], effect: Effect) -> str | None:
    """``apply(effect)`` with this thread's output capture (if any) suspended."""
    if not capture_active():  # the usual case: a line (its capture suspends itself)
        return apply(effect)
    with capturing(None):
        return apply(effect)


class DriveSink:
    """The sink of a drive's in-process tasks (threads, and what inline tasks left running).

    While the drive lasts, effects go to its ``channel`` and are applied on the
    coordinator's thread. Once it ended (:meth:`end`: the coordinator applied what was
    still queued), a thread a task left running (a python call abandoned past its
    timeout or at an interrupt) may still send: a paid LLM call is then applied by that
    thread itself (``apply``), one at a time, with its output capture suspended, so it
    is still written to the ledger (the store is thread-safe and ledger rows are not
    fenced by the lease); if it cannot be (the store was closed), a warning names it.
    Any other effect is then refused (:class:`EffectNotSent`: a command's start, as
    before, fails its call; a line is dropped).
    """

    def __init__(self, channel: EffectSink, apply: Callable[[Effect], str | None]) -> None:
        self._channel = channel
        self._apply = apply
        self._lock = threading.RLock()
        self._ended = False

    def send(self, effect: Effect) -> None:
        if self._ended:
            raise EffectNotSent(CLOSED)
        self._channel.send(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        if not self._ended:
            try:
                self._channel.send_durable(effect, control)
                return
            except (EffectNotSent, DriveEnded):  # the drive ended before it was applied
                if not self._ended or not isinstance(effect, UsageReported):
                    raise
        elif not isinstance(effect, UsageReported):  # a command: nobody would note its end
            raise EffectNotSent(CLOSED)
        self._late(effect)

    def _late(self, effect: UsageReported) -> None:
        with self._lock:
            try:
                error = _uncaptured(self._apply, effect)
            except Exception as exc:  # the store was closed under it
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            _log.warning(
                "flowrun: warning: %s, sent after its run's drive ended, was lost: %s",
                _described(effect),
                error,
            )
            raise EffectRefused(error)

    def end(self) -> None:
        """The drive is over (what was queued was applied; the channel closes next): from
        now on a paid call is applied by the thread that sends it."""
        with self._lock:
            self._ended = True


def _described(effect: UsageReported) -> str:
    u = effect.usage
    return (
        f"a paid {u.model} call of node {effect.node!r} (step {effect.step},"
        f" attempt {u.attempt}, {u.tokens_in} tokens in, {u.tokens_out} out)"
    )
