"""The effects channel of a run on Dask: worker events up, acknowledgements and flags down.

Up: a task's effects are pickled and logged as worker events
(``Worker.log_event``) on a topic of the drive's own. The scheduler forwards each
to the coordinator's client, subscribed (``Client.subscribe_topic``) before the
first task is submitted. A worker's events travel on its one batched stream to
the scheduler and on to the client, so one task's effects arrive in the order it
sent them (1-5 ms after, on one machine).

Down: a durable effect's acknowledgement is a ``distributed.Variable`` named
after it, which the sending worker waits on and then deletes. The three stop
flags are ``distributed.Event``\\ s, read through a sticky cache that asks the
scheduler at most every :data:`POLL_S`: a command polls ``abort`` many times a
second, and a flag, once set, stays set for the rest of the drive. ``abort`` is
also set, for a task, once Dask cancelled it: its future was cancelled, or the
coordinator's client went away (kill -9), and Dask forgot the task while its
thread went on; a command it runs is then killed as after the grace period.

A worker that waits for an acknowledgement gives up after :data:`ACK_WAIT_S`: a
coordinator that died acknowledges nothing, and its worker must not be held.

``distributed`` is imported only by what runs with it (this module is never
imported without it).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import distributed

from .effects import Control, Effect, EffectRefused

__all__ = ["ACK_WAIT_S", "POLL_S", "DaskChannel", "DaskFlag", "DaskSink"]

POLL_S = 0.05  # a flag asks the scheduler at most this often
ACK_WAIT_S = 60.0  # a durable effect not acknowledged in this long fails the attempt
_ACK_POLL_S = 0.5  # how often a waiting worker looks at the abort flag

_log = logging.getLogger("flowrun")
_seen_set: set[str] = set()  # flags this process saw set: sticky for every copy of them
_worker_here: list[distributed.Worker] = []  # the worker of this process, once a task found it


def _worker() -> distributed.Worker:
    """The Dask worker this code runs in: from a task's thread, or a thread it started."""
    try:
        worker = distributed.get_worker()
    except ValueError:  # not a task's own thread (get_worker reads a context variable)
        if not _worker_here:
            raise
        return _worker_here[0]
    if not _worker_here or _worker_here[0] is not worker:
        _worker_here[:] = [worker]
    return worker


def _task_cancelled() -> bool:
    """True in a task's thread once Dask cancelled that task (no RPC: the worker's own state).

    Dask cannot stop a running task's thread; it only forgets the task. That happens
    when the coordinator cancels its future and when the coordinator's client goes
    (a kill -9 of it): its tasks' work is then abandoned as after ``abort``.
    """
    try:
        worker = distributed.get_worker()
    except ValueError:
        return False
    key = worker.get_current_task()
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


class DaskFlag:
    """A ``distributed.Event`` with ``threading.Event``'s shape, cheap to poll.

    Pickled, it is its name; unpickled on a worker it binds to that worker's client.
    ``or_cancelled``: also set, in a task's thread, once Dask cancelled that task
    (the ``abort`` flag: the work is abandoned either way).
    """

    def __init__(
        self, name: str, client: distributed.Client | None = None, *, or_cancelled: bool = False
    ) -> None:
        self.name = name
        self.or_cancelled = or_cancelled
        self._client = client  # the coordinator's; None on a worker
        self._event: distributed.Event | None = None
        self._asked = float("-inf")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_flag, (self.name, self.or_cancelled))

    def _remote(self) -> distributed.Event:
        if self._event is None:
            client = self._client or _worker().client
            self._event = distributed.Event(self.name, client=client)
        return self._event

    def is_set(self) -> bool:
        if self.name in _seen_set:
            return True
        if self.or_cancelled and _task_cancelled():
            return True
        now = time.monotonic()
        if now - self._asked >= POLL_S:
            self._asked = now
            if self._remote().is_set():
                _seen_set.add(self.name)
        return self.name in _seen_set

    def set(self) -> None:
        _seen_set.add(self.name)
        self._remote().set()

    def wait(self, timeout: float | None = None) -> bool:
        if self.name in _seen_set:
            return True
        if self._remote().wait(timeout):
            _seen_set.add(self.name)
        return self.name in _seen_set

    def clear(self) -> None:
        """Forget the flag on the scheduler (which then drops it): the drive is over."""
        _seen_set.discard(self.name)
        self._remote().clear()


def _flag(name: str, or_cancelled: bool) -> DaskFlag:
    return DaskFlag(name, or_cancelled=or_cancelled)


@dataclass(frozen=True, slots=True)
class DaskSink:
    """The worker's end: effects go up as events on ``topic``.

    Unlike the channels of one machine, it does not refuse an effect once the
    coordinator closed the channel (``effects.EffectSink``'s contract): a worker cannot
    see that without asking the scheduler on every send, and nothing the scheduler
    keeps for it could be freed at close. What a task Dask left running (its future
    cancelled, its thread going on) sends after the drive ended goes to a topic nobody
    reads: the send succeeds and is lost, and a durable one waits :data:`ACK_WAIT_S`
    (or until the task sees ``abort``) and is then refused.
    """

    topic: str

    def send(self, effect: Effect) -> None:
        _worker().log_event(self.topic, pickle.dumps(effect, protocol=pickle.HIGHEST_PROTOCOL))

    def send_durable(self, effect: Effect, control: Control) -> None:
        ack = distributed.Variable(_ack_name(self.topic, effect), client=_worker().client)
        self.send(effect)
        waited = 0.0
        while True:
            try:
                answer = ack.get(timeout=_ACK_POLL_S)
                break
            except TimeoutError:
                waited += _ACK_POLL_S
                if control.abort.is_set():
                    raise EffectRefused(
                        "the run was stopped before the coordinator saved it"
                    ) from None
                if waited >= ACK_WAIT_S:
                    raise EffectRefused(
                        f"the coordinator did not confirm it within {ACK_WAIT_S:g}s"
                    ) from None
        with contextlib.suppress(Exception):  # a name left behind costs the scheduler bytes
            ack.delete()
        if answer:
            raise EffectRefused(str(answer))


def _ack_name(topic: str, effect: Effect) -> str:
    return f"{topic}/ack/{effect.ack_id}"


class DaskChannel:
    """The coordinator's end, on ``client``: one per drive, a topic and flags of its own."""

    def __init__(self, client: distributed.Client) -> None:
        self._client = client
        self._topic = f"flowrun-effects-{uuid.uuid4().hex}"
        self._sink = DaskSink(self._topic)
        self._control = Control(
            stop=DaskFlag(f"{self._topic}/stop", client),
            abort=DaskFlag(f"{self._topic}/abort", client, or_cancelled=True),
            over_budget=DaskFlag(f"{self._topic}/over_budget", client),
        )
        self._open = False
        self._lock = threading.Lock()

    @property
    def sink(self) -> DaskSink:
        return self._sink

    @property
    def control(self) -> Control:
        return self._control

    def open(self, deliver: Callable[[Effect], None]) -> None:
        def arrived(event: tuple[float, Any]) -> None:
            try:
                effect = pickle.loads(event[1])
            except Exception:  # a worker with another flowrun: its tasks fail for it
                _log.exception("flowrun: an effect from a Dask worker could not be read")
                return
            deliver(effect)

        self._client.subscribe_topic(self._topic, arrived)
        self._open = True

    def ack(self, effect: Effect, error: str | None = None) -> None:
        """Release the worker waiting for ``effect`` (call it from a coordinator thread,
        never from ``deliver``: it waits for the scheduler)."""
        ack = distributed.Variable(_ack_name(self._topic, effect), client=self._client)
        with contextlib.suppress(Exception):  # the scheduler gone: the worker gives up waiting
            ack.set(error or "")

    def close(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        with contextlib.suppress(Exception):
            self._client.unsubscribe_topic(self._topic)
        for flag in (self._control.stop, self._control.abort, self._control.over_budget):
            if isinstance(flag, DaskFlag):
                with contextlib.suppress(Exception):
                    flag.clear()
        with contextlib.suppress(Exception):  # the scheduler keeps each topic's last events
            self._client.run_on_scheduler(_forget_topic, self._topic)


def _forget_topic(topic: str, dask_scheduler: Any = None) -> None:
    """On the scheduler: drop what it kept of ``topic`` (a long-lived one keeps every topic)."""
    broker = getattr(dask_scheduler, "_broker", None)
    if broker is not None:
        broker.truncate(topic)
