"""The effects channel of worker processes, through ``multiprocessing``.

See ``runtime/effects.py`` for the contract. Effects go up a queue each worker
inherited from the pool's initializer (:class:`Inherited`; a pool this channel did
not start gets a manager queue instead), read by a thread on the coordinator.
Acknowledgements come back in a manager's dict, and the flags are the manager's
events, asked a few times a second (:class:`PolledFlag`). Proxies pickle as their
tokens (:class:`Remote`). Imported only by runs on worker processes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.managers import SyncManager
from typing import Any

from .channels import ABORTED, ENDED, DriveEnded
from .effects import Control, Effect, EffectNotSent, EffectRefused

# what a manager's proxy or a closed queue raises once the coordinator's end is gone
_GONE = (OSError, EOFError, ValueError)

_proxies: dict[str, Any] = {}  # a manager object's id -> this process's proxy of it
_proxies_lock = threading.Lock()


class Remote:
    """A manager's proxy that pickles as its token and is rebuilt once per process.

    A proxy's own pickling costs two round trips to the manager per copy (an incref
    as it is rebuilt, a decref as it is collected): ten a task for a spec's sink and
    flags. This one is rebuilt without an incref, once per worker process, and kept:
    the coordinator's own proxy keeps the object alive on the manager.
    """

    __slots__ = ("args", "key")

    def __init__(self, proxy: Any) -> None:
        _, self.args = proxy.__reduce__()  # (rebuild function, token, serializer, kwds)
        token = self.args[1]
        self.key = f"{token.address}/{token.id}"
        with _proxies_lock:
            _proxies.setdefault(self.key, proxy)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_remote, (self.args,))

    def get(self) -> Any:
        with _proxies_lock:
            proxy = _proxies.get(self.key)
            if proxy is None:
                func, token, serializer, kwds = self.args
                proxy = _proxies[self.key] = func(token, serializer, **{**kwds, "incref": False})
        return proxy

    def forget(self) -> None:
        with _proxies_lock:
            _proxies.pop(self.key, None)


def _remote(args: tuple[Any, ...]) -> Remote:
    r = Remote.__new__(Remote)
    r.args = args
    token = args[1]
    r.key = f"{token.address}/{token.id}"
    return r


_inherited: dict[str, Any] = {}  # objects a worker process was started with, by name


class Inherited:
    """An object a worker process inherits as it starts (a ``multiprocessing`` queue
    passed to the pool's initializer), named in specs: it pickles as its name."""

    __slots__ = ("name",)

    def __init__(self, name: str, obj: Any = None) -> None:
        self.name = name
        if obj is not None:
            _inherited[name] = obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (Inherited, (self.name,))

    def get(self) -> Any:
        return _inherited[self.name]

    def forget(self) -> None:
        _inherited.pop(self.name, None)


def inherit(objects: dict[str, Any]) -> None:
    """A worker process's initializer step: keep what it was started with, by name."""
    _inherited.update(objects)


class QueueSink:
    """A worker process's sink: effects into a manager queue, acknowledgements polled
    from a manager dict (an ack is ``""``, or the coordinator's error)."""

    def __init__(self, queue: Remote | Inherited, acks: Remote) -> None:
        self.queue = queue
        self.acks = acks

    def send(self, effect: Effect) -> None:
        try:
            self.queue.get().put(effect)
        except _GONE as exc:  # the coordinator's queue (or its manager) is gone
            raise EffectNotSent(f"the effects channel is gone: {type(exc).__name__}") from None

    def send_durable(self, effect: Effect, control: Control) -> None:
        self.send(effect)
        acks = self.acks.get()
        key, pause = effect.ack_id, 0.0005
        while True:
            try:
                got = acks.pop(key, None)
            except _GONE as exc:  # the manager went with the drive: no ack can come
                raise DriveEnded(f"{ENDED} ({type(exc).__name__})") from None
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
    """A manager's Event, asked at most every ``POLL_S`` per process; once seen set it
    stays set (a drive's flags are never cleared). Checking a flag then costs a round
    trip to the manager a few times a second, not once per task."""

    POLL_S = 0.05
    __slots__ = ("remote",)

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def is_set(self) -> bool:
        key, now = self.remote.key, time.monotonic()
        with _polled_lock:
            asked, value = _polled.get(key, (float("-inf"), False))
        if value or now - asked < self.POLL_S:
            return value
        value = bool(self.remote.get().is_set())
        with _polled_lock:
            _polled[key] = (now, value)
        return value

    def set(self) -> None:
        self.remote.get().set()
        with _polled_lock:
            _polled[self.remote.key] = (time.monotonic(), True)

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        value = bool(self.remote.get().wait(timeout))
        with _polled_lock:
            _polled[self.remote.key] = (time.monotonic(), value)
        return value

    def forget(self) -> None:
        with _polled_lock:
            _polled.pop(self.remote.key, None)
        self.remote.forget()


class ManagerChannel:
    """The channel of a drive on worker processes, through a ``multiprocessing`` manager
    (a server process of its own, started with ``mp_context``).

    ``effects``: a queue the workers inherited (:class:`Inherited`), for the effects
    themselves: reading a pipe costs the coordinator no round trip to the manager,
    which would bound it to one effect per round trip. Without one (workers of a pool
    this channel did not start), effects go through a manager queue too.
    """

    def __init__(
        self,
        mp_context: BaseContext,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        effects: Inherited | None = None,
    ) -> None:
        self._manager = SyncManager(ctx=mp_context)
        self._manager.start(initializer, initargs)
        m = self._manager
        # the coordinator's proxies: they keep the objects alive on the manager
        self._objects: list[Any] = [m.dict(), m.Event(), m.Event(), m.Event()]
        if effects is None:
            self._objects.append(m.Queue())
        acks, *flags = map(Remote, self._objects[:4])
        queue = effects or Remote(self._objects[4])
        self._queue: Any = queue.get()
        self._acks: Any = self._objects[0]
        self._sink = QueueSink(queue, acks)
        self._flags = [PolledFlag(f) for f in flags]
        self._control = Control(*self._flags)
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
        for flag in self._flags:
            flag.forget()
        self._sink.queue.forget()
        self._sink.acks.forget()
        self._objects.clear()
        self._manager.shutdown()
