"""The threads executor's pool: jobs without a Future, each reported once, bounded threads."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
from flowrun.engine.runtime.pool import Job, TaskPool, wait_jobs


def test_a_job_runs_once_and_reports_its_value_or_its_exception() -> None:
    pool = TaskPool(2)
    done: queue.SimpleQueue[Job[Any, Any]] = queue.SimpleQueue()

    def boom(_: object) -> None:
        raise ValueError("no")

    ok = pool.start(lambda x: x * 2, 21, done.put)
    bad = pool.start(boom, None, done.put)
    seen = {done.get(timeout=10), done.get(timeout=10)}
    assert seen == {ok, bad}
    assert ok.done() and not ok.cancelled() and ok.exception() is None and ok.result() == 42
    assert isinstance(bad.exception(), ValueError)
    with pytest.raises(ValueError, match="no"):
        bad.result()
    assert not ok.cancel()  # a finished job cannot be cancelled
    pool.shutdown()
    assert done.empty()  # each callback ran once


def test_a_queued_job_cancels_once_and_never_runs_while_a_running_one_does_not_cancel() -> None:
    pool = TaskPool(1)
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []
    done: queue.SimpleQueue[Job[Any, Any]] = queue.SimpleQueue()

    def block(_: object) -> str:
        started.set()
        release.wait(10)
        return "first"

    first = pool.start(block, None, done.put)
    second = pool.start(ran.append, "second", done.put)
    assert started.wait(10)
    assert not first.cancel()  # running
    assert second.cancel() and second.cancel()  # cancelled, and still cancelled
    assert second.cancelled() and second.done()
    assert done.get(timeout=10) is second  # its callback ran at once, once
    release.set()
    assert done.get(timeout=10) is first
    pool.shutdown()
    assert ran == [] and done.empty()


def test_threads_start_as_jobs_queue_up_to_max_workers_and_idle_ones_are_reused() -> None:
    pool = TaskPool(3)
    gate = threading.Barrier(3, timeout=10)
    names: set[str] = set()

    def meet(_: object) -> None:
        names.add(threading.current_thread().name)
        gate.wait()  # three jobs at once: needs three threads

    jobs = [pool.start(meet, None, lambda j: None) for _ in range(3)]
    wait_jobs(jobs, 10)
    assert all(j.done() and j.exception() is None for j in jobs)
    for _ in range(20):  # one at a time: the idle threads take them
        wait_jobs([pool.start(lambda _: None, None, lambda j: None)], 10)
    assert len(pool._threads) == 3
    assert len(names) == 3
    pool.shutdown()
    assert not any(t.is_alive() for t in pool._threads)


def test_submit_gives_a_future_and_shutdown_cancels_what_is_queued() -> None:
    pool = TaskPool(1)
    release = threading.Event()
    first = pool.submit(release.wait, 10)
    second = pool.submit(lambda: "never")
    job = pool.start(lambda _: "never", None, lambda j: None)
    pool.shutdown(wait=False, cancel_futures=True)
    assert second.cancelled() and job.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)
    release.set()
    assert first.result(timeout=10) is True
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in pool._threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in pool._threads)
