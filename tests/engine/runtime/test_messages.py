"""What crosses to a worker and back survives pickling: a TaskSpec of every node kind,
and the TaskReports real tasks make (as httpx tests its models round trips).

Specs carry the multiprocessing channel's sink and flags (manager proxies); the sink
of a spec that went through pickle still reaches the coordinator's channel.
"""

from __future__ import annotations

import os
import pickle
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path

import pytest
from flowrun.engine import load_workflow
from flowrun.engine.records import Entry, Task
from flowrun.engine.runtime import frontier as fr
from flowrun.engine.runtime.channels import DriveSink, LocalChannel
from flowrun.engine.runtime.effects import (
    Control,
    Effect,
    EffectNotSent,
    EffectRefused,
    ProcStarted,
    TaskStarted,
    UsageReported,
)
from flowrun.engine.runtime.executors import mp_context
from flowrun.engine.runtime.messages import TaskReport, TaskSettings, TaskSpec, WorkflowRef
from flowrun.engine.runtime.mpchannel import ManagerChannel
from flowrun.engine.runtime.worker import install, run_spec
from flowrun.engine.spec.model import Workflow

from tests.support.llm_servers import OpenAIServer

Write = Callable[[str, str], Path]

KINDS_YAML = """
name: kinds
state:
  out: {default: null}
  n: {default: 2}
nodes:
  cmd:
    run: ["echo", "{{ state.n }}"]
    save: out
    next: [sh, py, boom, set, ask]
  sh:
    shell: "echo shell"
  py:
    python: kindlib:double
  boom:
    python: kindlib:boom
  set:
    set: {n: "{{ state.n + 1 }}"}
  ask:
    llm: {model: gpt-4o-mini, prompt: "Say hi"}
    save: out
"""

KINDLIB = """
def double(state, ctx):
    return {"n": state["n"] * 2}


def boom(state, ctx):
    raise ValueError("no luck")
"""


@pytest.fixture
def workflow(write: Write) -> Workflow:
    write("kindlib.py", KINDLIB)
    return load_workflow(str(write("kinds.yaml", KINDS_YAML)))


@pytest.fixture
def manager() -> Iterator[ManagerChannel]:
    channel = ManagerChannel(mp_context())
    try:
        yield channel
    finally:
        channel.close()


def spec_for(wf: Workflow, node: str, channel: ManagerChannel | LocalChannel) -> TaskSpec:
    entry = Entry(node, "", 0)
    (task,) = fr.expand(wf, [entry], wf.initial_state(), "r", 1)
    return TaskSpec(
        "r",
        "r/drive",
        1,
        task,
        WorkflowRef(wf.digest, wf.path, wf.source),
        wf.initial_state(),
        TaskSettings(output_limit=4096, grace_s=1.0, secrets=("s3cr3t-value",), live_output=True),
        channel.sink,
        channel.control,
    )


@pytest.mark.parametrize("node", ["cmd", "sh", "py", "boom", "set", "ask"])
def test_a_task_spec_of_every_kind_round_trips_through_pickle(
    workflow: Workflow, manager: ManagerChannel, node: str
) -> None:
    spec = spec_for(workflow, node, manager)
    back = pickle.loads(pickle.dumps(spec))
    assert workflow.nodes[node].kind in ("run", "shell", "python", "set", "llm")
    for f in fields(TaskSpec):
        if f.name not in ("effects", "control"):  # proxies: equal by what they reach
            assert getattr(back, f.name) == getattr(spec, f.name), f.name
    assert back.control.stop.is_set() is False
    manager.control.stop.set()  # the coordinator's flag, seen through the copy
    assert back.control.stop.is_set() is True
    got: queue.SimpleQueue[Effect] = queue.SimpleQueue()
    manager.open(got.put)
    sent = TaskStarted(1, spec.task.key, 1, "here", os.getpid())
    back.effects.send(sent)
    assert got.get(timeout=10) == sent


def test_a_durable_effect_through_a_pickled_sink_returns_once_acknowledged(
    workflow: Workflow, manager: ManagerChannel
) -> None:
    back = pickle.loads(pickle.dumps(spec_for(workflow, "ask", manager)))
    arrived: queue.SimpleQueue[Effect] = queue.SimpleQueue()
    manager.open(arrived.put)
    from flowrun.engine.records import LLMUsage

    usage = UsageReported(1, back.task.key, 1, 1, "ask", None, LLMUsage("gpt-4o-mini", 3, 4))
    sender = threading.Thread(target=back.effects.send_durable, args=(usage, back.control))
    sender.start()
    assert arrived.get(timeout=10) == usage
    assert sender.is_alive()  # waiting for the coordinator
    manager.ack(usage)
    sender.join(timeout=10)
    assert not sender.is_alive()


def reports(wf: Workflow, tmp_path: Path) -> dict[str, TaskReport]:
    """Each node of ``wf`` run once in this process, as a worker runs it."""
    install(wf)
    channel = LocalChannel()
    channel.open(lambda e: channel.ack(e) if e.DURABLE else None)
    out = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for node in wf.nodes:
            spec = spec_for(wf, node, channel)
            out[node] = run_spec(replace(spec, workflow=WorkflowRef(wf.digest, wf.path)))
    finally:
        os.chdir(cwd)
    return out


def test_the_reports_real_tasks_make_round_trip_through_pickle(
    workflow: Workflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OpenAIServer(api_key="sk-test-key") as o:
        monkeypatch.setenv("OPENAI_BASE_URL", o.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        got = reports(workflow, tmp_path)
    for node, report in got.items():
        back = pickle.loads(pickle.dumps(report))
        assert back == report, node
        assert back.pid == os.getpid() and back.host
    assert got["cmd"].delta == {"out": "2"} and got["cmd"].stdout == "2\n"
    assert got["set"].delta == {"n": 3}
    assert got["py"].delta == {"n": 4}
    ask = got["ask"]  # an LLM report carries its billed call
    assert ask.status == "ok" and len(ask.usage) == 1
    assert ask.usage[0].usage.model == "gpt-4o-mini" and ask.usage[0].usage.tokens_in
    assert ask.effects >= 2  # started, and the durable usage
    boom = got["boom"]  # a failed Python report carries its trimmed traceback
    assert boom.status == "failed" and "ValueError: no luck" in (boom.error or "")
    assert boom.trace is not None and "kindlib.py" in boom.trace.text
    assert pickle.loads(pickle.dumps(boom)).trace == boom.trace


def test_a_spec_for_a_workflow_the_worker_lacks_fails_with_a_cause(
    workflow: Workflow, tmp_path: Path
) -> None:
    channel = LocalChannel()
    channel.open(lambda e: None)
    spec = spec_for(workflow, "set", channel)
    unknown = replace(spec, workflow=WorkflowRef("0" * 64, str(tmp_path / "gone.yaml")))
    report = run_spec(unknown)
    assert report.status == "failed"
    assert "is not installed on this worker" in (report.error or "")
    assert Task("set", "", 0, spec.task.key) == report.task


# what a report counts: the effects the channel took ---------------------------------------
class Broken:
    """A sink whose channel is gone in a way no sink foresaw: every send raises."""

    def send(self, effect: Effect) -> None:
        raise BrokenPipeError("the coordinator's queue is gone")

    def send_durable(self, effect: Effect, control: Control) -> None:
        raise BrokenPipeError("the coordinator's queue is gone")


def test_a_report_does_not_count_an_effect_whose_send_raised(
    workflow: Workflow, tmp_path: Path
) -> None:
    install(workflow)
    spec = replace(spec_for(workflow, "set", LocalChannel()), effects=Broken())
    report = run_spec(replace(spec, workflow=WorkflowRef(workflow.digest, workflow.path)))
    assert report.status == "failed" and "BrokenPipeError" in (report.error or "")
    assert report.effects == 0  # what the coordinator waits for before it takes the report


@pytest.mark.parametrize("node", ["set", "py", "sh", "ask"])
def test_a_report_counts_exactly_the_effects_that_reached_the_coordinator(
    workflow: Workflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str
) -> None:
    channel = LocalChannel()
    got: list[Effect] = []

    def deliver(effect: Effect) -> None:  # the drive ends once its first effect arrived
        got.append(effect)
        channel.close()

    channel.open(deliver)
    install(workflow)
    spec = spec_for(workflow, node, channel)
    monkeypatch.chdir(tmp_path)
    with OpenAIServer(api_key="sk-test-key") as o:
        monkeypatch.setenv("OPENAI_BASE_URL", o.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        report = run_spec(replace(spec, workflow=WorkflowRef(workflow.digest, workflow.path)))
    assert [type(e) for e in got] == [TaskStarted]
    assert report.effects == 1  # not those sent after the channel closed
    if node in ("sh", "ask"):  # a process note or a billed call must not be dropped quietly
        assert report.status == "failed"
        assert "its effects channel is closed" in (report.error or "")
    else:
        assert report.status == "ok"
    if node == "ask":  # the report still carries the paid call, for the ledger
        assert len(report.usage) == 1


def test_a_durable_effect_is_refused_once_the_local_channel_closed_and_never_dropped_quietly() -> (
    None
):
    channel = LocalChannel()
    arrived: queue.SimpleQueue[Effect] = queue.SimpleQueue()
    channel.open(arrived.put)
    from flowrun.engine.records import LLMUsage

    usage = UsageReported(1, "0", 1, 1, "ask", None, LLMUsage("gpt-4o-mini", 3, 4))
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            channel.sink.send_durable(usage, channel.control)
        except EffectRefused as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert arrived.get(timeout=10) == usage  # it arrived; its sender waits for the ack
    channel.close()  # the drive ended before the coordinator applied it
    sender.join(timeout=10)
    assert not sender.is_alive()
    (refused,) = outcome
    assert isinstance(refused, EffectRefused) and not isinstance(refused, EffectNotSent)
    assert "ended before the coordinator applied it" in str(refused)
    later = replace(usage, seq=2)
    with pytest.raises(EffectNotSent, match="effects channel is closed"):
        channel.sink.send_durable(later, channel.control)
    with pytest.raises(EffectNotSent):
        channel.sink.send(TaskStarted(1, "0", 3, "here", os.getpid()))
    assert arrived.empty()


def test_a_drive_sink_applies_a_durable_effect_on_the_senders_thread_once_the_drive_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flowrun.engine.records import LLMUsage

    channel = LocalChannel()
    arrived: queue.SimpleQueue[Effect] = queue.SimpleQueue()
    channel.open(arrived.put)
    applied: list[tuple[Effect, str]] = []
    fail = False

    def apply(effect: Effect) -> str | None:
        if fail:
            raise RuntimeError("the store is closed")
        applied.append((effect, threading.current_thread().name))
        return None

    sink = DriveSink(channel.sink, apply)
    usage = UsageReported(1, "0", 1, 1, "ask", None, LLMUsage("gpt-4o-mini", 3, 4))
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            sink.send_durable(usage, channel.control)
        except EffectRefused as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    sender = threading.Thread(target=send, name="abandoned-call", daemon=True)
    sender.start()
    assert arrived.get(timeout=10) == usage  # queued; the coordinator never takes it
    sink.end()
    channel.close()  # releases the sender: it applies the effect itself
    sender.join(timeout=10)
    assert not sender.is_alive()
    assert outcome == [None]
    assert applied == [(usage, "abandoned-call")]
    later = replace(usage, seq=2, call=2)
    sink.send_durable(later, channel.control)  # after the end: applied here at once
    assert applied[-1] == (later, threading.current_thread().name)
    with pytest.raises(EffectNotSent):  # an observer effect is dropped
        sink.send(TaskStarted(1, "0", 3, "here", os.getpid()))
    started = ProcStarted(1, "0", 4, "here:1:2", "run", "here", None, None, 1, 1, 2, 0.0)
    with pytest.raises(EffectNotSent):  # a command nobody would note the end of is refused
        sink.send_durable(started, channel.control)
    fail = True
    with pytest.raises(EffectRefused, match="the store is closed"):
        sink.send_durable(replace(usage, seq=4, call=3), channel.control)
    assert "a paid gpt-4o-mini call of node 'ask'" in caplog.text
    assert "was lost: RuntimeError: the store is closed" in caplog.text
    assert arrived.empty()
