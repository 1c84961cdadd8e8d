"""The event stream: outbox rows reach sinks at least once, in order, across kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowrun.engine import Engine, JsonlSink, SQLiteStore, load_workflow
from flowrun.engine.store.base import Event

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

# A 40-step loop, each step a short sleep, so a kill -9 lands mid-run.
LOOP = """
name: loop
state:
  n: {default: 0, reducer: add}
  seen: {default: [], reducer: append}
nodes:
  tick:
    python: lib:tick
    routes:
      - when: "state.n < 40"
        to: tick
      - to: END
"""
LIB = """
import time

def tick(state, ctx):
    time.sleep(0.02)
    return {"n": 1, "seen": state["n"]}
"""

FIELDS = {"event_id", "ts", "run_id", "step", "node", "type", "attempt", "duration", "error"}


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_file_after_kill_9_and_resume_holds_every_event_in_order(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    write("loop.yaml", LOOP)
    events = tmp_path / "events.jsonl"
    p = subprocess.Popen(
        [FLOWRUN, "run", "loop.yaml", "--db", "f.db", "--events", str(events), "--run-id", "r9"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 60  # hang guard
    while not events.exists() or events.read_text().count("\n") < 25:
        assert p.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < end
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = read_jsonl(events)
    assert before[-1]["type"] != "run_succeeded"

    r = flowrun("resume", "r9", "--db", "f.db", "--events", str(events), cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    lines = read_jsonl(events)
    assert lines[: len(before)] == before  # appended, never rewritten
    stored = json.loads(
        flowrun("show", "r9", "--db", "f.db", "--events", "--json", cwd=tmp_path).stdout
    )["events"]
    seqs = [int(e["event_id"].split(":")[1]) for e in lines]
    # in order, no gaps: each line repeats an event already seen or is the very next one
    high = 0
    for s in seqs:
        assert s <= high + 1, f"gap before event {s} (had up to {high})"
        high = max(high, s)
    assert high == len(stored), "the file is missing the run's last events"
    # duplicates (delivered before the crash, not yet marked) are the same event, same id
    first: dict[str, dict[str, Any]] = {}
    for e in lines:
        assert set(e) >= FIELDS
        assert e["run_id"] == "r9"
        if e["event_id"] in first:
            assert e == first[e["event_id"]]
        first.setdefault(e["event_id"], e)
    assert list(first.values()) == stored  # exactly the committed stream, once each
    types = [e["type"] for e in stored]
    assert types[0] == "run_started" and types[-1] == "run_succeeded"
    assert "run_resumed" in types
    assert types.count("task_succeeded") == 40  # tick runs until n reaches 40


def test_show_events_lists_the_stream(write: Write, tmp_path: Path) -> None:
    write(
        "lib.py",
        """
        def once(state, ctx):
            if ctx.attempt == 1:
                raise RuntimeError("first try fails")
            return {"n": 1}
        """,
    )
    write(
        "wf.yaml",
        """
        name: retry
        state: {n: {default: 0}}
        nodes:
          once:
            python: lib:once
            retry: {max_attempts: 2, backoff: 1ms}
        """,
    )
    assert flowrun("run", "wf.yaml", "--db", "f.db", "--run-id", "s1", cwd=tmp_path).returncode == 0
    j = flowrun("show", "s1", "--db", "f.db", "--events", "--json", cwd=tmp_path)
    assert j.returncode == 0
    evs = json.loads(j.stdout)["events"]
    assert [e["type"] for e in evs] == [
        "run_started",
        "task_retried",
        "task_succeeded",
        "step_committed",
        "run_succeeded",
    ]
    assert evs[1]["node"] == "once" and evs[1]["attempt"] == 1
    assert evs[1]["error"] == "lib.py:3 in once: RuntimeError: first try fails"
    assert evs[2]["attempt"] == 2 and evs[2]["duration"] >= 0
    human = flowrun("show", "s1", "--db", "f.db", "--events", cwd=tmp_path)
    assert human.returncode == 0
    assert "s1:2  step=0  task_retried" in human.stdout
    assert "RuntimeError: first try fails" in human.stdout
    # without --events the list is not shown
    assert "events" not in json.loads(
        flowrun("show", "s1", "--db", "f.db", "--json", cwd=tmp_path).stdout
    )


def test_jsonl_sink_appends_and_repairs_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    path.write_text('{"event_id":"r:1"}\n{"event_id":"r:2","ts":')  # killed mid-write
    sink = JsonlSink(path)
    sink.emit(Event("r", 3, 1.5, 0, "a", "task_succeeded", 1, 0.25, None, {"index": 0}))
    sink.close()
    lines = path.read_text().splitlines()
    assert lines[0] == '{"event_id":"r:1"}'
    assert lines[1] == '{"event_id":"r:2","ts":'  # kept as it was, on its own line
    last = json.loads(lines[2])
    assert last == {
        "event_id": "r:3",
        "ts": 1.5,
        "run_id": "r",
        "step": 0,
        "node": "a",
        "type": "task_succeeded",
        "attempt": 1,
        "duration": 0.25,
        "error": None,
        "data": {"index": 0},
    }


def test_events_option_on_an_unwritable_path_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    write("lib.py", LIB)
    write("loop.yaml", LOOP)
    r = flowrun("run", "loop.yaml", "--db", "f.db", "--events", "no/dir/e.jsonl", cwd=tmp_path)
    assert r.returncode == 2
    assert "--events no/dir/e.jsonl" in r.stderr and "Traceback" not in r.stderr


def event_ids(path: Path) -> list[str]:
    return [e["event_id"] for e in read_jsonl(path)]


def stored_event_ids(run_id: str, cwd: Path) -> list[str]:
    show = flowrun("show", run_id, "--db", "f.db", "--events", "--json", cwd=cwd)
    return [e["event_id"] for e in json.loads(show.stdout)["events"]]


def test_a_full_disk_events_file_keeps_the_outcome_and_leaves_events_pending(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    write("loop.yaml", LOOP)
    r = flowrun("run", "loop.yaml", "--db", "f.db", "--events", "/dev/full", "--json", cwd=tmp_path)
    assert "internal error" not in r.stderr
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    assert "cannot write events to /dev/full: No space left on device" in r.stderr
    show = flowrun("show", run_id, "--db", "f.db", "--json", cwd=tmp_path)
    assert json.loads(show.stdout)["status"] == "succeeded"
    ev = tmp_path / "ev.jsonl"
    r = flowrun("resume", run_id, "--db", "f.db", "--events", str(ev), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert event_ids(ev) == stored_event_ids(run_id, tmp_path)  # every event, in order
    assert read_jsonl(ev)[-1]["type"] == "run_succeeded"


GATE = "name: gate\nnodes:\n  a: {shell: 'test -f ok', next: b}\n  b: {shell: 'true'}\n"


def test_a_resume_without_events_leaves_them_for_the_next_events_file(
    write: Write, tmp_path: Path
) -> None:
    write("wf.yaml", GATE)
    ev = tmp_path / "ev.jsonl"
    r = flowrun("run", "wf.yaml", "--db", "f.db", "--events", str(ev), "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    (tmp_path / "ok").write_text("")
    assert flowrun("resume", run_id, "--db", "f.db", cwd=tmp_path).returncode == 0
    r = flowrun("resume", run_id, "--db", "f.db", "--events", str(ev), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert event_ids(ev) == stored_event_ids(run_id, tmp_path)  # no gap where no sink was
    assert [e["type"] for e in read_jsonl(ev)].count("run_resumed") == 1


class CountingStore(SQLiteStore):
    """A real store that counts the reads of a run's pending events."""

    pending_reads = 0

    def pending_events(self, run_id: str) -> list[Event]:
        CountingStore.pending_reads += 1
        return super().pending_events(run_id)


def test_a_drive_without_an_events_file_never_reads_the_pending_events(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    wf = load_workflow(str(write("wf.yaml", LOOP)))
    store = CountingStore(str(tmp_path / "f.db"))
    try:
        result = Engine(store).start(wf, run_id="r")
        assert result.status == "succeeded" and len(store.pending_events("r")) > 40
        CountingStore.pending_reads = 0
        Engine(store).resume(wf, "r")  # nothing to deliver to: nothing read
        assert CountingStore.pending_reads == 0
        ev = tmp_path / "ev.jsonl"
        Engine(store, sinks=[JsonlSink(ev)]).resume(wf, "r")  # an events file gets them all
        assert CountingStore.pending_reads == 1
        assert event_ids(ev) == [e.event_id for e in store.events("r")]
    finally:
        store.close()
