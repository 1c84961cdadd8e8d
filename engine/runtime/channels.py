"""Effects channels for one machine: in-process (threads, inline) and multiprocessing.

See ``runtime/effects.py`` for the contract. :class:`LocalChannel` hands effects
over by reference (its sink is never pickled: a thread pool passes specs by
reference); its flags can be the coordinator's own events. :class:`ManagerChannel`
goes through a ``multiprocessing`` manager: a queue proxy carries effects to a
reader thread on the coordinator, a dict proxy carries acknowledgements back, and
the flags are the manager's events (asked a few times a second, see
:class:`PolledFlag`); all three pickle into a worker process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.managers import SyncManager
from typing import Any

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


class QueueSink:
    """A worker process's sink: effects into a manager queue, acknowledgements polled
    from a manager dict (an ack is ``""``, or the coordinator's error)."""

    def __init__(self, queue: Any, acks: Any) -> None:
        self.queue = queue
        self.acks = acks

    def send(self, effect: Effect) -> None:
        self.queue.put(effect)

    def send_durable(self, effect: Effect, control: Control) -> None:
        self.queue.put(effect)
        key, pause = effect.ack_id, 0.0005
        while True:
            got = self.acks.pop(key, None)
            if got is not None:
                if got:
                    raise EffectRefused(got)
                return
            if control.abort.is_set():
                raise EffectRefused(ABORTED)
            time.sleep(pause)
            pause = min(pause * 2, 0.02)


_polled: dict[str, tuple[float, bool]] = {}  # a flag's id -> when this process asked, what it was
_polled_lock = threading.Lock()


class PolledFlag:
    """A manager's Event proxy, asked at most every ``POLL_S`` per process; once seen set
    it stays set (a drive's flags are never cleared). Checking a flag then costs a
    round trip to the manager a few times a second, not once per task."""

    POLL_S = 0.05

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.key = f"{proxy._token.address}/{proxy._token.id}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PolledFlag, (self.proxy,))

    def is_set(self) -> bool:
        now = time.monotonic()
        with _polled_lock:
            asked, value = _polled.get(self.key, (float("-inf"), False))
        if value or now - asked < self.POLL_S:
            return value
        value = bool(self.proxy.is_set())
        with _polled_lock:
            _polled[self.key] = (now, value)
        return value

    def set(self) -> None:
        self.proxy.set()
        with _polled_lock:
            _polled[self.key] = (time.monotonic(), True)

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        value = bool(self.proxy.wait(timeout))
        with _polled_lock:
            _polled[self.key] = (time.monotonic(), value)
        return value


class ManagerChannel:
    """The channel of a drive on worker processes, through a ``multiprocessing`` manager
    (a server process of its own, started with ``mp_context``)."""

    def __init__(
        self,
        mp_context: BaseContext,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._manager = SyncManager(ctx=mp_context)
        self._manager.start(initializer, initargs)
        m = self._manager
        self._queue: Any = m.Queue()
        self._acks: Any = m.dict()
        self._sink = QueueSink(self._queue, self._acks)
        self._control = Control(PolledFlag(m.Event()), PolledFlag(m.Event()), PolledFlag(m.Event()))
        self._reader: threading.Thread | None = None

    @property
    def sink(self) -> QueueSink:
        return self._sink

    @property
    def control(self) -> Control:
        return self._control

    def open(self, deliver: Callable[[Effect], None]) -> None:
        def read() -> None:
            with contextlib.suppress(EOFError, OSError, BrokenPipeError):
                while (effect := self._queue.get()) is not None:
                    deliver(effect)

        self._reader = threading.Thread(target=read, name="flowrun-effects", daemon=True)
        self._reader.start()

    def ack(self, effect: Effect, error: str | None = None) -> None:
        self._acks[effect.ack_id] = error or ""

    def close(self) -> None:
        with contextlib.suppress(EOFError, OSError, BrokenPipeError):
            self._queue.put(None)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        with _polled_lock:
            for flag in (self._control.stop, self._control.abort, self._control.over_budget):
                if isinstance(flag, PolledFlag):
                    _polled.pop(flag.key, None)
        self._manager.shutdown()
