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

import functools
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ..nodes.base import Abandoned
from . import pool, worker
from .messages import TaskReport, TaskSpec

_log = logging.getLogger("flowrun")
R = TypeVar("R")
LEAVE_WAIT_S = 5.0  # how long a second KeyboardInterrupt still waits for the loop to end
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
        report: TaskReport | None = None
        thrown: BaseException | None = None
        try:
            if rest is not None:
                report, thrown = self._inline(rest)
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
                report, thrown = self._inline(functools.partial(worker.run_spec, spec))
        except Abandoned:
            return  # the baton is another thread's
        self.ended.set()

    def _inline(self, task: Callable[[], TaskReport]) -> tuple[Any, BaseException | None]:
        """Run a task the loop yielded, on this thread, which may be abandoned meanwhile
        (only then: the loop is suspended, and never runs on two threads); its report,
        or what it raised (``run_spec`` reports failures: a bug)."""
        pool.carry_on_by(self.hand_on)
        try:
            return task(), None
        except Abandoned:
            raise
        except BaseException as exc:
            return None, exc
        finally:
            pool.carry_on_by(None)

    def hand_on(self, rest: Callable[[], Any]) -> None:
        """This thread is abandoned in the middle of a task: a new one finishes it and
        drives the loop on. No new thread (none can start): the loop ends with that error
        (its caller must not wait for a loop no thread drives)."""
        try:
            _thread(self.run, rest).start()
        except BaseException as exc:
            self.error = exc
            self.ended.set()
            raise


def _thread(target: Callable[..., None], *args: Any) -> threading.Thread:
    return threading.Thread(target=target, args=args, name="flowrun-coordinator", daemon=True)


def relay(loop: Loop[R], interrupt: Callable[[], Callable[[], None]]) -> R:
    """Drive ``loop`` on a thread of its own and return its value (or raise its error).

    The calling thread only waits. A ``KeyboardInterrupt`` there (a program without
    signal handlers) calls ``interrupt()``, which stops the loop at once and returns
    how to undo that; the loop's end is waited for (a second ``KeyboardInterrupt``:
    ``LEAVE_WAIT_S`` more at most), undone once it ended, and the interrupt raised
    again.
    """
    baton = _Baton(loop)
    _thread(baton.run).start()
    try:
        baton.ended.wait()
    except KeyboardInterrupt:
        undo = interrupt()
        try:
            baton.ended.wait()
        except KeyboardInterrupt:
            if not baton.ended.wait(LEAVE_WAIT_S):
                _log.warning(
                    "flowrun: warning: the run did not stop within %gs of a second"
                    " interrupt; leaving it",
                    LEAVE_WAIT_S,
                )
        if baton.ended.is_set():
            undo()  # the engine can drive a run again
        raise
    if baton.error is not None:
        error, baton.error = baton.error, None
        raise error
    return baton.value  # type: ignore[return-value]
