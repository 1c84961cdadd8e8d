"""``open_dask``: a LocalCluster of this run's own, or a scheduler already running."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest
from flowrun.engine.errors import UsageError
from flowrun.engine.runtime.dask_cluster import DaskExecutor, check_address, open_dask


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fresh() -> str:
    return uuid.uuid4().hex


def test_dask_starts_worker_processes_of_its_own_and_closes_them() -> None:
    executor = open_dask("dask", workers=2)
    try:
        assert executor.workers() == 2
        pids = {executor.submit(os.getpid).result(timeout=30) for _ in range(6)}
        assert os.getpid() not in pids  # ran in worker processes, not here
        cluster = executor.cluster
        assert cluster is not None
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
    finally:
        executor.shutdown(cancel_futures=True)
    assert cluster.status.name == "closed"
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # nobody listens there any more


def test_a_scheduler_address_is_used_and_left_running(dask_cluster: Any) -> None:
    executor = open_dask(dask_cluster.scheduler_address)
    try:
        assert executor.cluster is None
        assert executor.submit(os.getpid).result(timeout=30) != os.getpid()
    finally:
        executor.shutdown()
    again = open_dask(dask_cluster.scheduler_address)  # the scheduler still runs
    try:
        assert again.submit(int, "7").result(timeout=30) == 7
    finally:
        again.shutdown()


def test_two_equal_submissions_run_twice(dask_cluster: Any) -> None:
    """Dask gives pure calls of equal arguments one key; tasks (a retry, say) are never pure."""
    executor = open_dask(dask_cluster.scheduler_address)
    try:
        first, second = executor.submit(_fresh), executor.submit(_fresh)
        assert first.result(timeout=30) != second.result(timeout=30)
    finally:
        executor.shutdown()


def test_an_unreachable_scheduler_is_a_usage_error() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(UsageError) as info:
        open_dask(address)
    assert info.value.exit_code == 2
    assert info.value.message.startswith(f"--executor {address}: cannot reach the Dask scheduler")
    assert info.value.hint is not None and "dask scheduler" in info.value.hint


@pytest.mark.parametrize(
    "value",
    ["tcp://", "tcp://host", "tcp://host:port", "tcp://h:0", "tcp://h:70000", "tcp://h:1/x"],
)
def test_a_malformed_scheduler_address_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError) as info:
        check_address(value)
    assert info.value.hint == "write it as tcp://HOST:PORT, as `dask scheduler` prints it"


@pytest.mark.parametrize(
    "value", ["tcp://127.0.0.1:8786", "tcp://sched.example:1", "tcp://[::1]:8786"]
)
def test_a_scheduler_address_is_accepted(value: str) -> None:
    assert check_address(value) == value


def test_shutdown_twice_is_harmless(dask_cluster: Any) -> None:
    executor = open_dask(dask_cluster.scheduler_address)
    assert isinstance(executor, DaskExecutor)
    executor.shutdown()
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(os.getpid)


def _slow_double(x: int) -> int:
    import time

    time.sleep(0.3)
    return x * 2


def _fails() -> None:
    raise KeyError("from a worker")


def test_a_submitted_task_counts_as_started_and_keeps_its_result(dask_cluster: Any) -> None:
    """Dask's own executor would cancel a running task (an LLM call's result lost)."""
    executor = open_dask(dask_cluster.scheduler_address)
    try:
        future = executor.submit(_slow_double, 21)
        assert future.running()
        assert future.cancel() is False
        assert future.result(timeout=30) == 42
    finally:
        executor.shutdown()


def test_a_tasks_exception_comes_back_as_raised(dask_cluster: Any) -> None:
    executor = open_dask(dask_cluster.scheduler_address)
    try:
        with pytest.raises(KeyError, match="from a worker"):
            executor.submit(_fails).result(timeout=30)
    finally:
        executor.shutdown()
