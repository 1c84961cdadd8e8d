"""The in-process effects channel (threads, and a task the coordinator runs inline).

See ``runtime/effects.py`` for the contract. :class:`LocalChannel` hands effects
over by reference (its sink is never pickled: a thread pool passes specs by
reference); its flags can be the coordinator's own events. :class:`InlineSink`
applies each effect as it is sent while the coordinator waits for a task it runs
itself. Worker processes use ``runtime/mpchannel.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .effects import Control, Effect, EffectNotSent, EffectRefused, EffectSink

ABORTED = "the run was aborted before the coordinator applied it"
CLOSED = "the run's drive is over: its effects channel is closed"
ENDED = "the run's drive ended before the coordinator applied it"


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
    that sends it, one at a time: the task's own thread, or the thread its python call
    runs on. The coordinator's thread is blocked in the task meanwhile, so nothing else
    touches what the effects change, and a durable effect of the call could not wait for
    that thread (it waits for the call). After close, a thread the task left running (a
    python call abandoned past its timeout or at an interrupt) may still send: its
    effects go to the drive's channel (``later``) and are applied on the coordinator's
    thread, as those of a task on a pool are.
    """

    def __init__(self, apply: Callable[[Effect], str | None], later: EffectSink) -> None:
        self._apply = apply
        self._later = later
        self._lock = threading.Lock()
        self._open = True

    def send(self, effect: Effect) -> None:
        with self._lock:
            if self._open:
                self._apply(effect)
                return
        self._later.send(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        with self._lock:
            if self._open:
                error = self._apply(effect)
                if error is not None:
                    raise EffectRefused(error)
                return
        self._later.send_durable(effect, control)

    def close(self) -> None:
        """The coordinator stopped waiting for the task (an effect being applied ends first)."""
        with self._lock:
            self._open = False
