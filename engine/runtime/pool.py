"""The ``threads`` executor: a thread pool that runs a task without a ``Future``.

``concurrent.futures.ThreadPoolExecutor`` makes a ``Future`` per task (a condition
variable and its lock), a work item, and takes a semaphore on submit and gives it
back after each item: about eight condition-variable entries a task, ~30 µs of a
1,000-item ``foreach``'s ~100 µs per task (docs/performance.md). A step reads
four things of a task's outcome, so :meth:`TaskPool.start` hands out a
:class:`Job` that has them, and runs it on the pool's threads like any work item.
:meth:`TaskPool.submit` still gives a ``Future``, for anything that wants the
``Executor`` interface.

Threads start as tasks are queued, up to ``max_workers``. They are daemon threads,
because a python node's call runs on its task's thread here, and a call past its
timeout is abandoned, never waited for: the task carries on on a new thread that
takes the abandoned one's place in the pool (:func:`carry_on_here`), and the old
thread ends once the call returns, if it ever does. ``shutdown(wait=False,
cancel_futures=True)`` cancels what is still queued and lets the threads end after
their current task.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from typing import Any, Generic, TypeVar

from ..nodes.base import Abandoned

T = TypeVar("T")
A = TypeVar("A")

_PENDING, _RUNNING, _DONE, _CANCELLED = range(4)


class Job(Generic[A, T]):
    """``fn(arg)`` queued on a :class:`TaskPool`: what a step reads of a future
    (``cancel``, ``cancelled``, ``exception``, ``result``), and ``done``. Its
    ``callback`` is called once with the job when it is done or cancelled."""

    __slots__ = ("_arg", "_callback", "_error", "_fn", "_lock", "_state", "_value")

    def __init__(
        self,
        fn: Callable[[A], T],
        arg: A,
        callback: Callable[[Job[A, T]], object],
        lock: threading.Lock,
    ) -> None:
        self._fn = fn
        self._arg = arg
        self._callback = callback
        self._value: T | None = None
        self._error: BaseException | None = None
        self._state = _PENDING
        self._lock = lock  # the pool's: a job changes state under it

    def run(self) -> None:
        with self._lock:
            if self._state != _PENDING:
                return  # cancelled while queued
            self._state = _RUNNING
        try:
            value = self._fn(self._arg)
        except Abandoned:
            raise  # the job went on on another thread, which finishes it
        except BaseException as exc:
            self.finish(None, exc)
        else:
            self.finish(value)

    def finish(self, value: T | None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._state = _DONE
        self._callback(self)

    def cancel(self) -> bool:
        """Cancel the job if it has not started (as ``Future.cancel``)."""
        with self._lock:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
        self._callback(self)
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def done(self) -> bool:
        return self._state in (_DONE, _CANCELLED)

    def exception(self) -> BaseException | None:
        """The exception ``fn`` raised (the job is done: a step asks only then)."""
        return self._error

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


CarryOn = Callable[[Callable[[], Any]], None]


class _Here(threading.local):
    """What a pool thread is running (defaults as class attributes: reading one that
    was never set raises no AttributeError to swallow, on every task's thread), or how
    another thread's task carries on (``runtime/relay.py``'s coordinator)."""

    job: Job[Any, Any] | None = None
    pool: TaskPool | None = None
    carrier: CarryOn | None = None


_here = _Here()


def carry_on_by(carrier: CarryOn | None) -> None:
    """On a thread that is not the pool's: how a task running on it carries on
    elsewhere, as :func:`carry_on_here` gives it (None: it cannot)."""
    _here.carrier = carrier


def carry_on_here() -> CarryOn | None:
    """On a pool thread running a job: ``carry_on(rest)`` gives the job's place in the
    pool to a new thread, which finishes the job with ``rest()``'s value and then works
    on; this thread is then abandoned (its job's call raises ``Abandoned`` when it
    returns). On a thread given a carrier (:func:`carry_on_by`), that carrier; elsewhere
    None."""
    job, owner = _here.job, _here.pool
    if job is None or owner is None:
        return _here.carrier
    me = threading.current_thread()

    def carry_on(rest: Callable[[], Any]) -> None:
        owner._replace(me, job, rest)

    return carry_on


def wait_jobs(jobs: Iterable[Job[Any, Any]], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``jobs`` to be done."""
    deadline = time.monotonic() + timeout
    left = [j for j in jobs if not j.done()]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [j for j in left if not j.done()]


class TaskPool(Executor):
    """Up to ``max_workers`` threads running jobs in the order they were queued."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "flowrun-task") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[Job[Any, Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job, changed under the lock
        self._made = 0  # threads made, for their names
        self._shutdown = False

    def start(
        self, fn: Callable[[A], T], arg: A, callback: Callable[[Job[A, T]], object]
    ) -> Job[A, T]:
        """Queue ``fn(arg)``; ``callback(job)`` runs once it is done or cancelled."""
        job = Job(fn, arg, callback, self._lock)
        self._put(job)
        return job

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()

        def call(_: None) -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        def cancelled(job: Job[None, None]) -> None:
            if job.cancelled():
                future.cancel()

        self._put(Job(call, None, cancelled, self._lock))
        return future

    def _put(self, job: Job[Any, Any]) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new tasks after shutdown")
        self._queue.put(job)
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # that thread takes this job
                return
            if len(self._threads) >= self._max:
                return
            t = self._thread(self._work)
        t.start()

    def _thread(self, target: Callable[[], None]) -> threading.Thread:
        """A new thread of the pool (under the lock)."""
        self._made += 1
        t = threading.Thread(target=target, name=f"{self._prefix}_{self._made}", daemon=True)
        self._threads.append(t)
        return t

    def _replace(self, old: threading.Thread, job: Job[Any, Any], rest: Callable[[], Any]) -> None:
        """``old`` is abandoned in the middle of ``job``: a new thread finishes it."""

        def carry_on() -> None:
            _here.job, _here.pool = job, self
            try:
                value = rest()
            except Abandoned:
                return  # abandoned in turn: the next thread finishes it
            except BaseException as exc:
                job.finish(None, exc)
            else:
                job.finish(value)
            finally:
                _here.job = None
            with self._lock:
                self._idle += 1
            self._work()

        with self._lock:
            if old in self._threads:
                self._threads.remove(old)
            t = self._thread(carry_on)
        t.start()

    def _work(self) -> None:
        get, lock, here = self._queue.get, self._lock, _here
        here.pool = self
        while True:
            job = get()
            if job is None:
                self._queue.put(None)  # the next thread ends too
                return
            here.job = job
            try:
                job.run()
            except Abandoned:
                return  # a new thread has this one's place
            finally:
                here.job = None
            del job
            with lock:
                self._idle += 1  # a job queued from now on is this thread's to take

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.cancel()
        self._queue.put(None)
        if wait:
            for t in list(self._threads):
                t.join()
