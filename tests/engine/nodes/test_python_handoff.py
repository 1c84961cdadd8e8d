"""The python node's call hand-off (``_Caller``), its cached import, its lazy
``ctx.cancelled``, and the ids of task executions."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine.nodes import python as py
from flowrun.engine.nodes.base import Context, RunScope, TaskError, TaskTimeout
from flowrun.engine.runtime import worker
from flowrun.engine.spec.model import Node

Write = Callable[[str, str], Path]


def wait_done(done: threading.Lock, seconds: float = 30) -> None:
    assert done.acquire(timeout=seconds)


def test_many_concurrent_callers_beyond_the_pipes_and_the_idle_set_get_their_own_result() -> None:
    n = py._Caller.MAX_IDLE + 36
    gate = threading.Barrier(n)
    boxes: list[tuple[int, dict[str, Any], threading.Lock]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        def fn() -> int:
            time.sleep(0.01)  # all busy at once: more callers than are kept idle
            return i * 3

        gate.wait()
        box, done = py._Caller.call(fn)
        with lock:
            boxes.append((i, box, done))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(boxes) == n
    for i, box, done in boxes:
        wait_done(done)
        assert box == {"value": i * 3}
    assert len(py._Caller.idle) <= py._Caller.MAX_IDLE  # the rest ended
    assert py._Caller.piped <= py._Caller.PIPES  # those beyond the pipes handed off by lock
    assert sum(c.pipe is None for c in py._Caller.idle) >= len(py._Caller.idle) - py._Caller.PIPES


def test_a_caller_is_reused_and_an_exception_comes_back_in_the_box() -> None:
    box, done = py._Caller.call(lambda: 1)
    wait_done(done)
    assert box == {"value": 1}

    def boom() -> None:
        raise KeyError("nope")

    box, done = py._Caller.call(boom)
    wait_done(done)
    assert isinstance(box["error"], KeyError)
    box, done = py._Caller.call(lambda: "after")  # the caller that raised is fine
    wait_done(done)
    assert box == {"value": "after"}


def _ctx(tmp_path: Path) -> Context:
    return Context("r", 0, "n", 1, None, None, RunScope(tmp_path, "r"))


def test_a_call_past_its_timeout_is_abandoned_and_its_caller_comes_back(
    write: Write, tmp_path: Path
) -> None:
    write(
        "handoff_slow.py",
        """
        import threading
        release = threading.Event()

        def slow(state, ctx):
            release.wait(20)
            return {"x": 1}
        """,
    )
    ctx = _ctx(tmp_path)
    node = Node(name="n", kind="python", body="handoff_slow:slow")
    with pytest.raises(TaskTimeout, match=r"timed out after 0\.2s"):
        py.run_python(node, {}, ctx, 0.2)
    assert ctx.cancelled.is_set()
    import handoff_slow  # type: ignore[import-not-found]

    idle = len(py._Caller.idle)
    handoff_slow.release.set()  # the abandoned call returns: its caller rejoins the idle set
    deadline = time.monotonic() + 10
    while len(py._Caller.idle) <= idle and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(py._Caller.idle) > idle or idle == py._Caller.MAX_IDLE


def test_a_node_exception_is_a_task_error_with_its_line(write: Write, tmp_path: Path) -> None:
    write("handoff_raise.py", "def bad(state, ctx):\n    raise ValueError('no good')\n")
    node = Node(name="n", kind="python", body="handoff_raise:bad")
    with pytest.raises(TaskError, match=r"handoff_raise.py:2 in bad: ValueError: no good"):
        py.run_python(node, {}, _ctx(tmp_path), 5)


def test_resolve_reuses_the_module_until_it_is_replaced(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    write("handoff_mod.py", "def f(state, ctx):\n    return 1\n")
    base = str(tmp_path)
    fn = py.resolve("handoff_mod:f", base)
    assert fn is py.resolve("handoff_mod:f", base)
    module = sys.modules["handoff_mod"]
    module.f = lambda state, ctx: 2  # type: ignore[attr-defined]  # a function swapped in
    assert py.resolve("handoff_mod:f", base)({}, None) == 2
    write("handoff_mod.py", "def f(state, ctx):\n    return 3\n")
    del sys.modules["handoff_mod"]  # forgotten: imported again, as before the cache
    assert py.resolve("handoff_mod:f", base)({}, None) == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "handoff_mod.py").write_text("def f(state, ctx):\n    return 4\n")
    assert py.resolve("handoff_mod:f", str(other))({}, None) == 4  # another folder's claim
    assert py.resolve("handoff_mod:f", base)({}, None) == 3  # and back
    sys.path.insert(0, str(other))  # something else first on sys.path: claimed again
    assert py.resolve("handoff_mod:f", base)({}, None) == 3
    assert sys.path[0] == base
    del sys.modules["handoff_mod"]


def test_ctx_cancelled_is_made_once_even_when_asked_at_once(tmp_path: Path) -> None:
    for _ in range(20):
        ctx = _ctx(tmp_path)
        seen: list[threading.Event] = []
        gate = threading.Barrier(8)

        def ask(ctx: Context = ctx, seen: list[threading.Event] = seen, gate: Any = gate) -> None:
            gate.wait()
            seen.append(ctx.cancelled)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(e) for e in seen}) == 1
        assert isinstance(ctx.cancelled, threading.Event) and not ctx.cancelled.is_set()


def in_forked_child(says: Callable[[], str]) -> str:
    """What ``says()`` returns in a child forked from this process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, says().encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    said = os.read(r, 64).decode()
    os.close(r)
    return said


def test_a_forked_child_has_its_own_callers_and_execution_ids() -> None:
    _, done = py._Caller.call(lambda: None)  # an idle caller, with its pipe, in the parent
    wait_done(done)
    ids = [worker.execution_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)

    def child_says() -> str:  # a prefix of its own
        callers = f"{len(py._Caller.idle)}{py._Caller.piped}"  # the parent's: forgotten
        box, done = py._Caller.call(lambda: 7)  # a caller of its own, which runs it
        ran = "ran" if done.acquire(timeout=10) and box == {"value": 7} else "hung"
        return worker.execution_id() + callers + ran

    said = in_forked_child(child_says)
    child, callers = said[:32], said[32:]
    assert callers == "00ran" and py._Caller.idle
    assert len(child) == 32 and child[:16] != ids[0][:16]
    assert child not in ids


def test_a_forked_child_closes_the_pipes_of_callers_busy_in_the_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a new caller, with a pipe of its own, whatever earlier tests left idle
    monkeypatch.setattr(py._Caller, "idle", [])
    monkeypatch.setattr(py._Caller, "PIPES", py._Caller.piped + 1)
    release = threading.Event()
    started = threading.Event()

    def busy() -> None:
        started.set()
        release.wait(10)

    _, done = py._Caller.call(busy)
    assert started.wait(10)
    busy_pipes = list(py._Caller.pipes)
    assert busy_pipes  # the busy caller's, and those of callers idle before the test

    def child_says() -> str:
        open_fds = 0
        for fd in (fd for pipe in busy_pipes for fd in pipe):
            try:
                os.fstat(fd)
                open_fds += 1
            except OSError:
                pass
        return f"{open_fds} {len(py._Caller.pipes)}"

    said = in_forked_child(child_says)
    release.set()
    wait_done(done)
    assert said == "0 0"
