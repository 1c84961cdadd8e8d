"""The Dask effects channel on a real LocalCluster: effects up in order, acks and flags down."""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

import pytest
from flowrun.engine.records import LLMUsage
from flowrun.engine.runtime.dask_effects import DaskChannel, DaskFlag, DaskSink
from flowrun.engine.runtime.effects import (
    Control,
    Effect,
    EffectRefused,
    OutputLines,
    UsageReported,
)


def _chatty(sink: DaskSink, n: int) -> int:
    """On a worker: ``n`` output effects, in order, from the task's thread and one it starts."""
    for seq in range(1, n + 1):
        sink.send(
            OutputLines(step=1, key="k", seq=seq, attempt=1, stream="stdout", lines=(str(seq),))
        )
    box: list[BaseException] = []

    def from_thread() -> None:
        try:
            sink.send(
                OutputLines(step=1, key="k", seq=n + 1, attempt=1, stream="stderr", lines=("t",))
            )
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=from_thread)
    t.start()
    t.join()
    if box:
        raise box[0]
    return os.getpid()


def _paid(sink: DaskSink, control: Control) -> str:
    """On a worker: one durable usage effect; what send_durable did."""
    usage = LLMUsage("gpt-4o-mini", 10, 5)
    effect = UsageReported(step=2, key="k", seq=1, call=1, node="ask", index=None, usage=usage)
    try:
        sink.send_durable(effect, control)
    except EffectRefused as exc:
        return f"refused: {exc}"
    return "confirmed"


def _wait_for_flag(flag: DaskFlag, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if flag.is_set():
            return True
        time.sleep(0.01)
    return False


def _collect(channel: DaskChannel) -> queue.SimpleQueue[Effect]:
    arrived: queue.SimpleQueue[Effect] = queue.SimpleQueue()
    channel.open(arrived.put)
    return arrived


def test_effects_from_a_worker_arrive_in_the_order_sent(dask_client: Any) -> None:
    channel = DaskChannel(dask_client)
    arrived = _collect(channel)
    try:
        pid = dask_client.submit(_chatty, channel.sink, 50, pure=False).result(timeout=30)
        got = [arrived.get(timeout=10) for _ in range(51)]
    finally:
        channel.close()
    assert pid != os.getpid()  # sent from a worker process
    assert [e.seq for e in got] == list(range(1, 52))
    assert all(isinstance(e, OutputLines) for e in got)
    assert got[0].lines == ("1",) and got[-1].lines == ("t",)  # from a thread the task started


def test_a_durable_effect_waits_for_the_coordinators_ack(dask_client: Any) -> None:
    channel = DaskChannel(dask_client)
    arrived = _collect(channel)
    try:
        fut = dask_client.submit(_paid, channel.sink, channel.control, pure=False)
        effect = arrived.get(timeout=30)
        assert isinstance(effect, UsageReported) and effect.usage.tokens_in == 10
        time.sleep(0.3)
        assert not fut.done()  # held until the coordinator says it saved the row
        channel.ack(effect)
        assert fut.result(timeout=30) == "confirmed"
    finally:
        channel.close()


def test_a_refused_durable_effect_raises_on_the_worker(dask_client: Any) -> None:
    channel = DaskChannel(dask_client)
    arrived = _collect(channel)
    try:
        fut = dask_client.submit(_paid, channel.sink, channel.control, pure=False)
        channel.ack(arrived.get(timeout=30), "the run's lease is lost")
        assert fut.result(timeout=30) == "refused: the run's lease is lost"
    finally:
        channel.close()


def test_abort_releases_a_worker_waiting_for_an_ack(dask_client: Any) -> None:
    channel = DaskChannel(dask_client)
    arrived = _collect(channel)
    try:
        fut = dask_client.submit(_paid, channel.sink, channel.control, pure=False)
        arrived.get(timeout=30)  # never acknowledged
        channel.control.abort.set()
        assert fut.result(timeout=30).startswith("refused: the run was stopped")
    finally:
        channel.close()


def test_a_flag_set_by_the_coordinator_reaches_a_running_task(dask_client: Any) -> None:
    channel = DaskChannel(dask_client)
    try:
        fut = dask_client.submit(_wait_for_flag, channel.control.stop, 30.0, pure=False)
        time.sleep(0.3)
        assert not fut.done()
        assert not channel.control.abort.is_set()
        channel.control.stop.set()
        assert fut.result(timeout=30) is True
        assert channel.control.stop.is_set() and not channel.control.abort.is_set()
    finally:
        channel.close()


def test_each_drive_has_flags_of_its_own(dask_client: Any) -> None:
    first, second = DaskChannel(dask_client), DaskChannel(dask_client)
    try:
        first.control.stop.set()
        got = dask_client.submit(_wait_for_flag, second.control.stop, 0.3, pure=False)
        assert got.result(timeout=30) is False
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("flag", ["stop", "abort", "over_budget"])
def test_a_flag_pickles_as_its_name(flag: str, dask_client: Any) -> None:
    import pickle

    channel = DaskChannel(dask_client)
    try:
        original = getattr(channel.control, flag)
        copy = pickle.loads(pickle.dumps(original))
        assert isinstance(copy, DaskFlag) and copy.name == original.name
        assert len(pickle.dumps(original)) < 200  # no client, no connection inside
    finally:
        channel.close()


def _until_abandoned(sink: DaskSink, control: Control) -> None:
    """On a worker: poll ``abort`` as a command's pump does; say so on the channel when set."""
    sink.send(OutputLines(step=1, key="k", seq=1, attempt=1, stream="stdout", lines=("up",)))
    deadline = time.monotonic() + 30
    while not control.abort.is_set():
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    sink.send(OutputLines(step=1, key="k", seq=2, attempt=1, stream="stdout", lines=("abort",)))


def test_a_cancelled_task_sees_abort(dask_client: Any) -> None:
    channel = DaskChannel(dask_client)
    arrived = _collect(channel)
    try:
        fut = dask_client.submit(_until_abandoned, channel.sink, channel.control, pure=False)
        assert arrived.get(timeout=30).lines == ("up",)
        fut.cancel()
        assert arrived.get(timeout=30).lines == ("abort",)
        assert not channel.control.abort.is_set()  # the run's flag itself is not set
    finally:
        channel.close()


def test_a_task_whose_client_went_away_sees_abort(dask_cluster: Any, dask_client: Any) -> None:
    """The coordinator's client gone (closed here; killed in test_dask_runs): its work stops."""
    import distributed

    channel = DaskChannel(dask_client)  # listens on a client that stays
    arrived = _collect(channel)
    try:
        owner = distributed.Client(dask_cluster.scheduler_address, timeout=10)
        owner.submit(_until_abandoned, channel.sink, channel.control, pure=False)
        assert arrived.get(timeout=30).lines == ("up",)
        owner.close()
        assert arrived.get(timeout=30).lines == ("abort",)
    finally:
        channel.close()
