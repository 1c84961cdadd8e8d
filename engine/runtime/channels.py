"""The in-process effects channel (threads, and a task the coordinator runs inline).

See ``runtime/effects.py`` for the contract. :class:`LocalChannel` hands effects
over by reference (its sink is never pickled: a thread pool passes specs by
reference); its flags can be the coordinator's own events. :class:`DirectSink`
applies each effect as it is sent. Worker processes use ``runtime/mpchannel.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .effects import Control, Effect, EffectRefused

ABORTED = "the run was aborted before the coordinator applied it"


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
        if self.deliver is not None:
            self.deliver(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        if self.deliver is None:
            return
        ack = _Ack()
        with self._lock:
            self._waiting[effect.ack_id] = ack
        self.deliver(effect)
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
        self._sink.deliver = None


class DirectSink:
    """A sink that applies each effect at once, on the sending thread: for a task the
    coordinator runs inline, while it waits for that task (nothing else runs)."""

    def __init__(self, apply: Callable[[Effect], str | None]) -> None:
        self.apply = apply

    def send(self, effect: Effect) -> None:
        self.apply(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        error = self.apply(effect)
        if error is not None:
            raise EffectRefused(error)
