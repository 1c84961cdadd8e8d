"""A big step's tasks, merge, events and task list, held lazily: the same as all at once.

``runtime/tasks.py`` makes a step's tasks on demand past a threshold, ``StepMerge``
merges reports as they arrive, ``StepLog`` keeps what the step's events need and
``dumps_list`` writes the task list without a list of dicts. Each is pinned here
against the eager way the engine worked before: the same tasks, the same merged
state, the same events and the same JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import load_workflow
from flowrun.engine.events import Outbox
from flowrun.engine.jsonvalue import dumps, dumps_list
from flowrun.engine.observer import Fanout, Observer
from flowrun.engine.records import Entry, Task
from flowrun.engine.runtime import frontier as fr
from flowrun.engine.runtime.merge import StepMerge, task_events
from flowrun.engine.runtime.messages import Attempt, TaskReport
from flowrun.engine.runtime.reducers import AppendLog
from flowrun.engine.runtime.tasks import StepKeys, StepTasks, step_tasks
from flowrun.engine.spec.model import Workflow
from flowrun.engine.store.sqlite import SQLiteStore
from hypothesis import given, settings
from hypothesis import strategies as st

WF = """
name: lazy
state:
  items: {default: []}
  pairs: {default: {}}
  out: {default: [], reducer: append}
  more: {default: [], reducer: extend}
  seen: {default: {}, reducer: merge}
  total: {default: 0, reducer: add}
  last: {default: null}
config: {conflict_policy: last_writer_wins}
start: [each, pairs, fixed, plain]
nodes:
  each:
    foreach: "{{ state.items }}"
    python: mod:f
    next: [done]
  pairs:
    foreach: "{{ state.pairs }}"
    python: mod:f
    next: [done]
  fixed:
    foreach: [1, 2, 3]
    python: mod:f
    next: [done]
  plain:
    python: mod:f
    next: [done]
  done:
    python: mod:f
"""


@pytest.fixture(scope="module")
def wf(tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    d = tmp_path_factory.mktemp("lazy")
    (d / "mod.py").write_text("def f(state, ctx):\n    return None\n")
    (d / "lazy.yaml").write_text(WF)
    return load_workflow(str(d / "lazy.yaml"))


json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
nodes = st.sampled_from(["each", "pairs", "fixed", "plain"])
entries = st.lists(
    st.tuples(nodes, st.text("0123456789abcdef", max_size=8), st.integers(0, 3)),
    max_size=4,
    unique_by=lambda e: e[0],
).map(lambda es: [Entry(*e) for e in es])


@settings(max_examples=150, deadline=None)
@given(
    entries=entries,
    items=st.lists(json_value, max_size=30),
    pairs=st.dictionaries(st.text(max_size=3), json_value, max_size=5),
)
def test_lazy_tasks_are_the_tasks_eager_expansion_gives(
    wf: Workflow, entries: list[Entry], items: list[Any], pairs: dict[str, Any]
) -> None:
    state = {**wf.initial_state(), "items": items, "pairs": pairs}
    eager = fr.expand(wf, entries, state, "r", 3)
    lazy = step_tasks(wf, entries, state, "r", 3, lazy_above=-1)
    assert isinstance(lazy, StepTasks)
    assert len(lazy) == len(eager)
    assert list(lazy) == eager
    assert [lazy[i] for i in range(len(lazy))] == eager
    assert [lazy[-i] for i in range(1, len(lazy) + 1)] == [
        eager[-i] for i in range(1, len(eager) + 1)
    ]
    assert lazy[1:-1:2] == eager[1:-1:2]
    with pytest.raises(IndexError):
        lazy[len(eager)]
    assert Observer.node_counts(lazy) == Observer.node_counts(eager)
    assert Fanout(Observer()).node_counts(lazy) == Observer.node_counts(eager)
    assert step_tasks(wf, entries, state, "r", 3) == eager  # a small step: a list
    assert list(StepKeys(lazy)) == [{"key": t.key, "node": t.node, "index": t.index} for t in eager]
    assert list(StepKeys(lazy).keys()) == [t.key for t in eager]


def report(task: Task, delta: dict[str, Any], attempts: int = 1, at: float = 100.0) -> TaskReport:
    tries = tuple(
        Attempt(n, at + n, 0.5, None if n == attempts else f"boom {n}", None)
        for n in range(1, attempts + 1)
    )
    return TaskReport(task, "ok", delta, tries, at, 0.25 * (task.index or 0), None)


def deltas(i: int) -> dict[str, Any]:
    return [
        {"out": i},
        {"more": [i, {"b": i, "a": -i}]},
        {"seen": {f"k{i % 3}": i}},
        {"total": i, "last": i},
        {},
    ][i % 5]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), data=st.data())
def test_a_merge_of_reports_as_they_arrive_is_the_merge_in_task_order(
    wf: Workflow, n: int, data: st.DataObject
) -> None:
    state = {**wf.initial_state(), "items": list(range(n))}
    tasks = step_tasks(wf, [Entry("each", "", 0)], state, "r", 1, lazy_above=-1)
    reports = [report(t, deltas(i), attempts=1 + i % 3) for i, t in enumerate(tasks)]
    order = data.draw(st.permutations(range(len(reports))))
    texts = {k: dumps(v) for k, v in state.items()}

    def merged(arrival: list[int]) -> tuple[Any, ...]:
        conflicts: list[Any] = []
        m = StepMerge(
            wf,
            tasks,
            state,
            texts,
            AppendLog(),
            1,
            "last_writer_wins",
            lambda *c: conflicts.append(c),
        )
        for i in arrival:
            m.arrived(i, reports[i])
        r = m.result()
        return r.state, r.changed, r.appended, r.digests, conflicts, m.log

    in_order = merged(list(range(len(reports))))
    arrived = merged(list(order))
    assert arrived[:5] == in_order[:5]
    # the step's events, made from the log, are those made from every report at once
    store = SQLiteStore(f"/tmp/flowrun-steplog-{time.monotonic_ns()}.db")
    try:
        store.create_run(
            "r",
            workflow_name=wf.name,
            workflow_path=wf.path,
            workflow_text=wf.source,
            workflow_digest=wf.digest,
            state=state,
            frontier=fr.initial(wf),
            inputs={},
        )
        outbox = Outbox(store, "r", [])
        eager = task_events(outbox, 1, reports)
        outbox.seq = 0
        events = arrived[5].events(outbox, 1)
        assert len(events) == len(eager) and outbox.seq == len(eager)
        assert list(events) == eager == list(events)  # made again, the same
        if eager:
            assert events[-1] == eager[-1] and events[len(eager) // 2] == eager[len(eager) // 2]
    finally:
        store.close()
        Path(store.path).unlink(missing_ok=True)


def test_a_merge_conflict_is_raised_once_the_step_ends_not_as_it_happens(wf: Workflow) -> None:
    state = {**wf.initial_state(), "items": [1, 2, 3]}
    tasks = step_tasks(wf, [Entry("each", "", 0)], state, "r", 1, lazy_above=-1)
    texts = {k: dumps(v) for k, v in state.items()}
    m = StepMerge(wf, tasks, state, texts, AppendLog(), 1, "fail", lambda *c: None)
    for i, t in enumerate(tasks):
        m.arrived(i, report(t, {"last": i}))  # the second write of a replace key conflicts
    with pytest.raises(Exception, match="merge conflict on state key 'last'"):
        m.result()


@settings(max_examples=100, deadline=None)
@given(values=st.lists(json_value, max_size=40), chunk=st.integers(1, 7))
def test_dumps_list_writes_what_dumps_of_the_list_writes(values: list[Any], chunk: int) -> None:
    text = dumps_list(iter(values), chunk=chunk)
    assert text == dumps(values)
    assert json.loads(text) == values
