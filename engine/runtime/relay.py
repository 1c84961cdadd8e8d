"""The coordinator's loop on a thread a python call may leave behind.

A lone python task (a chain's step) runs on the coordinator's own thread: handing
the call to another thread and back was half of a chain step's time
(docs/performance.md). Such a call must still be abandonable, past its timeout or
a signal's grace period, like any other. So the coordinator's loop is a generator
(``Engine._steps``) that yields the spec of each task it runs inline and is sent
the task's report, and :func:`relay` drives it on a daemon thread while the thread
that called it waits. Should the watchdog abandon a call, a new thread takes the
baton: it finishes the task from the attempt that was cut short (its retries
included) and drives the loop on. The old thread ends once its call returns, if it
ever does; the caller returns when the loop ends, on whichever thread that was.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ..nodes.base import Abandoned
from . import pool, worker
from .messages import TaskReport, TaskSpec

R = TypeVar("R")
Loop = Generator[TaskSpec, TaskReport, R]  # yields a task to run inline, is sent its report


class _Baton(Generic[R]):
    """A loop, driven by one thread at a time, and its outcome once it ends."""

    def __init__(self, loop: Loop[R]) -> None:
        self.loop = loop
        self.ended = threading.Event()
        self.value: R | None = None
        self.error: BaseException | None = None

    def run(self, rest: Callable[[], TaskReport] | None = None) -> None:
        """Drive the loop on this thread (``rest``: first finish the task a thread that
        was abandoned was running, for its report)."""
        pool.carry_on_by(self.hand_on)
        report: TaskReport | None = None
        thrown: BaseException | None = None
        try:
            if rest is not None:
                try:
                    report = rest()
                except Abandoned:
                    raise
                except BaseException as exc:  # rest reports failures: a bug
                    thrown = exc
            while True:
                loop = self.loop
                try:  # a first send(None) starts the loop
                    spec = loop.send(report) if thrown is None else loop.throw(thrown)  # type: ignore[arg-type]
                except StopIteration as stop:
                    self.value = stop.value
                    break
                except BaseException as exc:
                    self.error = exc
                    break
                try:
                    report, thrown = worker.run_spec(spec), None
                except Abandoned:
                    raise
                except BaseException as exc:  # run_spec reports failures: a bug
                    thrown = exc
        except Abandoned:
            return  # the baton is another thread's
        finally:
            pool.carry_on_by(None)
        self.ended.set()

    def hand_on(self, rest: Callable[[], Any]) -> None:
        """This thread is abandoned in the middle of a task: a new one finishes it and
        drives the loop on."""
        _thread(self.run, rest).start()


def _thread(target: Callable[..., None], *args: Any) -> threading.Thread:
    return threading.Thread(target=target, args=args, name="flowrun-coordinator", daemon=True)


def relay(loop: Loop[R], interrupt: Callable[[], None]) -> R:
    """Drive ``loop`` on a thread of its own and return its value (or raise its error).

    The calling thread only waits. A ``KeyboardInterrupt`` there (a program without
    signal handlers) calls ``interrupt()`` (the loop stops at once), waits for the loop
    to end, unless a second one comes, and is raised again.
    """
    baton = _Baton(loop)
    _thread(baton.run).start()
    try:
        baton.ended.wait()
    except KeyboardInterrupt:
        interrupt()
        with contextlib.suppress(KeyboardInterrupt):
            baton.ended.wait()
        raise
    if baton.error is not None:
        error, baton.error = baton.error, None
        raise error
    return baton.value  # type: ignore[return-value]
