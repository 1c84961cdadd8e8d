"""``python: module:function`` nodes, called as ``fn(state, ctx)``.

The workflow file's folder is importable (and wins over a same-named module another
workflow in this process loaded from its own folder). ``state`` is read-only at every
level: the top is a ``MappingProxyType`` and nested lists and dicts are frozen
copies, so a task can never change the snapshot its step-mates read. The call runs
on a daemon thread so a node past its timeout can be abandoned (``ctx.cancelled``
is set) without keeping the process alive at exit: a thread of its own, handed the
call, or, on a thread that says how its task carries on elsewhere (the ``threads``
executor's and the coordinator's, see :func:`carry_on_with`), that thread itself,
watched by a watchdog that abandons the thread and carries the task on. What the
call prints through ``sys.stdout``/``sys.stderr`` is the task's output
(``engine/output.py``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn

from ..output import capturing
from ..spec.model import Node
from .base import Abandoned, Context, RunScope, TaskError, TaskTimeout
from .tracebacks import trace

_path_lock = threading.Lock()
_owner: dict[str, str] = {}  # top-level module name -> the folder it was imported for


def _readonly(*_: Any, **__: Any) -> NoReturn:
    raise TypeError("state is read-only in a python node: return a delta instead")


class FrozenDict(dict[str, Any]):
    """A dict that refuses changes; copies of it (``dict(x)``, ``x.copy()``) are plain."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    """A list that refuses changes; copies of it (``list(x)``, slices) are plain."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _readonly
    append = extend = insert = pop = remove = clear = sort = reverse = _readonly

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(v, memo) for v in self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-like value (scalars are returned as they are)."""
    if isinstance(value, FrozenDict | FrozenList):
        return value
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return FrozenList(freeze(v) for v in value)
    return value


class _Views:
    """Per run: the frozen view of the last snapshot, and frozen values by key.

    A step's tasks share one snapshot and unchanged keys keep their objects from
    step to step, so freezing costs what changed, not the size of the state.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.snapshot: Mapping[str, Any] | None = None
        self.view: Mapping[str, Any] = MappingProxyType({})
        self.values: dict[str, tuple[Any, Any]] = {}

    def of(
        self, state: Mapping[str, Any], grown: dict[str, tuple[list[Any], list[Any]]]
    ) -> Mapping[str, Any]:
        with self.lock:
            if state is self.snapshot:
                return self.view
            frozen: dict[str, Any] = {}
            values: dict[str, tuple[Any, Any]] = {}
            for k, v in state.items():
                seen = self.values.get(k)
                if seen is None or seen[0] is not v:
                    grew = grown.get(k)
                    if seen is not None and grew and grew[0] is seen[0] and grew[1] is v:
                        seen = (v, _extended(seen[1], v[len(seen[0]) :]))
                    else:
                        seen = (v, freeze(v))
                values[k] = seen
                frozen[k] = seen[1]
            self.snapshot, self.view, self.values = state, MappingProxyType(frozen), values
            return self.view


def _extended(frozen: FrozenList, items: list[Any]) -> FrozenList:
    """``frozen`` followed by ``items`` frozen: a list that grew costs its new items."""
    out = FrozenList(frozen)
    list.extend(out, map(freeze, items))
    return out


_views: weakref.WeakKeyDictionary[RunScope, _Views] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def state_view(state: Mapping[str, Any], scope: RunScope) -> Mapping[str, Any]:
    with _views_lock:
        views = _views.get(scope)
        if views is None:
            views = _views[scope] = _Views()
    return views.of(state, scope.grown)


def _is_local(module: Any, base_dir: str) -> bool:
    file = getattr(module, "__file__", None)
    if file is None:  # a namespace package: look at where it was found
        paths = list(getattr(module, "__path__", []))
        return any(Path(p).resolve().is_relative_to(Path(base_dir).resolve()) for p in paths)
    return Path(file).resolve().is_relative_to(Path(base_dir).resolve())


def _claim(top: str, base_dir: str) -> None:
    """Make ``top`` resolve from ``base_dir``, forgetting a same-named foreign import."""
    if sys.path[:1] != [base_dir]:
        with contextlib.suppress(ValueError):
            sys.path.remove(base_dir)
        sys.path.insert(0, base_dir)
    owner = _owner.get(top)
    if owner == base_dir:
        return
    loaded = sys.modules.get(top)
    base = Path(base_dir)
    here = (base / f"{top}.py").exists() or (base / top).is_dir()
    # only a module another workflow's folder supplied is forgotten, never a library's
    if loaded is not None and here and owner is not None and _is_local(loaded, owner):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
    _owner[top] = base_dir


# (module name, folder) -> the module imported for it, reused while nothing moved it:
# it is still sys.modules' own, its top-level name still this folder's, the folder still
# first on sys.path (what _claim and the import would find again, for less)
_resolved: dict[tuple[str, str], Any] = {}


def resolve(target: str, base_dir: str) -> Callable[..., Any]:
    module_name, _, fn_name = target.partition(":")
    module = _resolved.get((module_name, base_dir))
    if (
        module is None
        or sys.modules.get(module_name) is not module
        or _owner.get(module_name.partition(".")[0]) != base_dir
        or sys.path[:1] != [base_dir]
    ):
        with _path_lock:
            _claim(module_name.partition(".")[0], base_dir)
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise _failure(
                    exc, base_dir, f"cannot import {module_name!r}: ", retryable=False
                ) from None
            _resolved[module_name, base_dir] = module
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise TaskError(f"{module_name!r} has no function {fn_name!r}", retryable=False)
    return fn  # type: ignore[no-any-return]


class _Caller:
    """A reusable daemon thread for python-node calls.

    Starting a thread per call costs more than many node bodies, so callers are
    kept idle between calls. A call past its timeout is abandoned by the task that
    waited for it; its caller rejoins the idle set whenever the call does return.

    The call is handed to the caller through a pipe (a byte written to it) for the
    first ``PIPES`` callers alive, through a bare lock beyond. A write releases the
    GIL before it wakes the reader, which the kernel wakes on the writer's CPU; a
    lock's release wakes a thread on another CPU that then waits for the GIL its
    waker still holds: a third of the context switches, and in process ~5-11% more
    steps/s of a chain at load ~2 (even at load 4-6; docs/performance.md). The
    result comes back through a lock, which the waiting task acquires with a timeout.
    """

    idle: ClassVar[list[_Caller]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()
    MAX_IDLE: ClassVar[int] = 64
    PIPES: ClassVar[int] = 32  # callers alive that hand off through a pipe
    piped: ClassVar[int] = 0
    pipes: ClassVar[set[tuple[int, int]]] = set()  # those callers' pipes, idle or busy

    def __init__(self) -> None:
        self.job: tuple[Callable[[], Any], dict[str, Any], threading.Lock] | None = None
        self.pipe: tuple[int, int] | None = None
        with _Caller.lock:
            if _Caller.piped < _Caller.PIPES:
                with contextlib.suppress(OSError):  # out of file descriptors: a lock
                    self.pipe = os.pipe()
                    _Caller.piped += 1
                    _Caller.pipes.add(self.pipe)
        # beyond the pipes: a bare lock as a binary semaphore, released by the other side
        self.wake = threading.Lock()
        self.wake.acquire()
        threading.Thread(target=self._loop, name="flowrun-python", daemon=True).start()

    @classmethod
    def call(cls, fn: Callable[[], Any]) -> tuple[dict[str, Any], threading.Lock]:
        """Start ``fn()`` on an idle caller; return its result box and a lock held until done."""
        with cls.lock:
            caller = cls.idle.pop() if cls.idle else None
        if caller is None:
            caller = cls()
        box: dict[str, Any] = {}
        done = threading.Lock()
        done.acquire()
        caller.job = (fn, box, done)
        if caller.pipe is not None:
            os.write(caller.pipe[1], b"\0")
        else:
            caller.wake.release()
        return box, done

    def _loop(self) -> None:
        pipe = self.pipe
        while True:
            if pipe is not None:
                os.read(pipe[0], 1)
            else:
                self.wake.acquire()
            assert self.job is not None
            fn, box, done = self.job
            self.job = None
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            with _Caller.lock:
                keep = len(_Caller.idle) < _Caller.MAX_IDLE
                if keep:
                    _Caller.idle.append(self)
                elif pipe is not None:
                    _Caller.piped -= 1
                    _Caller.pipes.discard(pipe)
            done.release()
            if not keep:
                if pipe is not None:
                    os.close(pipe[0])
                    os.close(pipe[1])
                return

    @classmethod
    def _forget(cls) -> None:
        """In a forked child: the parent's callers have no thread here, and their pipes
        are the parent's too (a busy caller's as well as an idle one's)."""
        cls.lock = threading.Lock()
        for read, write in cls.pipes:
            os.close(read)
            os.close(write)
        cls.idle = []
        cls.piped = 0
        cls.pipes = set()


os.register_at_fork(after_in_child=_Caller._forget)


class _Thread(threading.local):
    take_over: Callable[[TaskError], None] | None = None  # how its task carries on elsewhere


_thread = _Thread()


def carry_on_with(take_over: Callable[[TaskError], None] | None) -> None:
    """Let python calls run on this (daemon) thread itself: should one be abandoned,
    ``take_over(error)`` carries its task on elsewhere as if the call raised ``error``,
    and the call raises :class:`~.base.Abandoned` here once it returns. None: hand
    calls to a caller thread again."""
    _thread.take_over = take_over


_RUNNING, _RETURNED, _ABANDONED = range(3)


class _Limits:
    """When a running call must be abandoned: its deadline, and a stop's grace period
    (the same rules for a handed-off call and a watched one)."""

    __slots__ = ("ctx", "deadline", "stopped_at", "timeout")

    def __init__(self, ctx: Context, timeout: float | None) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.stopped_at: float | None = None

    def due(self, now: float) -> TaskError | None:
        """Why the call must be abandoned now, as the error its task raises; else None."""
        scope = self.ctx.scope
        if scope.stop.is_set() and self.stopped_at is None:
            self.stopped_at = now  # SIGINT/SIGTERM: the grace period starts
        grace_over = self.stopped_at is not None and now - self.stopped_at > scope.grace_s
        if scope.abort.is_set() or grace_over:
            return TaskError(
                "interrupted; the call was abandoned", retryable=False, reason="interrupted"
            )
        if self.deadline is not None and now >= self.deadline:
            return TaskTimeout(
                f"timed out after {self.timeout:g}s; the call was abandoned (ctx.cancelled set)"
            )
        return None


class _Watch(_Limits):
    """A call running on its task's own thread, as the watchdog sees it."""

    __slots__ = ("lock", "state", "take_over")

    def __init__(
        self, ctx: Context, timeout: float | None, take_over: Callable[[TaskError], None]
    ) -> None:
        super().__init__(ctx, timeout)
        self.take_over = take_over
        self.lock = threading.Lock()  # the call's return and its abandonment race for it
        self.state = _RUNNING


class _Watchdog:
    """One thread that looks at the watched calls every 50 ms (sooner for a deadline),
    and sleeps until the next call once none was made for a second (waking it takes
    a lock and an event: a call made meanwhile only joins the set). Calls are counted:
    a chain's calls begin and end between two looks, and were the watchdog to judge by
    the set alone, it would sleep for good and be woken by every call (~75 µs of a
    ~210 µs chain step)."""

    POLL_S: ClassVar[float] = 0.05

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watches: set[_Watch] = set()
        self.wake = threading.Event()
        self.next_look = float("inf")  # when the watchdog looks next
        self.added = 0  # calls watched so far (most begin and end between two looks)
        self.thread: threading.Thread | None = None

    def add(self, w: _Watch) -> None:
        with self.lock:
            self.watches.add(w)
            self.added += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="flowrun-watch", daemon=True)
                self.thread.start()
            soon = w.deadline is not None and w.deadline < self.next_look
            if soon or self.next_look == float("inf"):
                self.next_look = 0.0  # it looks at once, and plans again
                self.wake.set()

    def remove(self, w: _Watch) -> None:
        with self.lock:
            self.watches.discard(w)

    def _loop(self) -> None:
        busy = 0.0  # when a call was last watched: the watchdog sleeps for good a second on
        seen = 0  # self.added as of the last look
        while True:
            with self.lock:
                watches = list(self.watches)
                added = self.added
            now = time.monotonic()
            if watches or added != seen:
                busy, seen = now, added
            look = now + self.POLL_S if now - busy < 1.0 else float("inf")
            for w in watches:
                error = w.due(now)
                if error is not None:
                    self._abandon(w, error)
                elif w.deadline is not None:
                    look = min(look, w.deadline)
            with self.lock:
                if self.watches and look == float("inf"):
                    look = now  # one came meanwhile
                self.next_look = look
            self.wake.wait(None if look == float("inf") else max(0.0, look - time.monotonic()))
            self.wake.clear()

    def _abandon(self, w: _Watch, error: TaskError) -> None:
        with w.lock:
            if w.state != _RUNNING:
                return  # it returned meanwhile
            w.state = _ABANDONED
        self.remove(w)
        w.ctx.cancelled.set()
        try:
            w.take_over(error)
        except Exception as exc:  # no thread to carry the task on: keep watching the rest
            logging.getLogger("flowrun").warning(
                "flowrun: warning: an abandoned call's task could not carry on: %s", exc
            )

    def _forget(self) -> None:
        """In a forked child: the parent's watchdog thread is not here."""
        self.lock = threading.Lock()
        self.watches = set()
        self.wake = threading.Event()
        self.next_look = float("inf")
        self.added = 0
        self.thread = None


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._forget)


def _watched(
    call: Callable[[], Any],
    ctx: Context,
    timeout: float | None,
    take_over: Callable[[TaskError], None],
) -> Any:
    """``call()`` on this thread, abandoned (by the watchdog) as a handed-off call would be."""
    w = _Watch(ctx, timeout, take_over)
    _watchdog.add(w)
    error: BaseException | None = None
    try:
        value = call()
    except BaseException as exc:
        error = exc
    with w.lock:
        abandoned = w.state == _ABANDONED
        w.state = _RETURNED
    if abandoned:
        raise Abandoned  # its task went on on another thread
    _watchdog.remove(w)
    if error is not None:
        _raise(error, ctx)
    return value


def _raise(exc: BaseException, ctx: Context) -> NoReturn:
    """What the call raised, as the task's error."""
    if isinstance(exc, TaskError):
        raise exc
    raise _failure(exc, str(ctx.scope.base_dir)) from exc


def run_python(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
    fn = resolve(node.body, str(ctx.scope.base_dir))
    view = state_view(state, ctx.scope)
    ctx.item = freeze(ctx.item)
    capture = ctx.output

    def call() -> Any:
        with capturing(capture):  # on the caller thread: its prints are this task's
            return fn(view, ctx)

    take_over = _thread.take_over
    if take_over is not None:
        return _watched(call, ctx, timeout, take_over)
    limits = _Limits(ctx, timeout)
    wait = 0.05 if timeout is None else min(0.05, timeout)
    # nothing between the hand-off and the wait: the caller thread needs the GIL
    box, done = _Caller.call(call)
    while not done.acquire(timeout=wait):
        error = limits.due(time.monotonic())
        if error is not None:
            ctx.cancelled.set()
            raise error
        deadline = limits.deadline
        wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
    if "error" in box:
        _raise(box["error"], ctx)
    return box.get("value")


def _failure(
    exc: BaseException, base_dir: str, prefix: str = "", *, retryable: bool = True
) -> TaskError:
    """The node's exception as a task error: ``file:line in fn: Type: message``, with its
    trimmed traceback (the raising frame is left out of the line when none is the user's)."""
    tb = trace(exc, base_dir)
    where = tb.where
    failure = TaskError(
        f"{prefix}{where + ': ' if where else ''}{type(exc).__name__}: {exc}", retryable=retryable
    )
    failure.trace = tb
    return failure
