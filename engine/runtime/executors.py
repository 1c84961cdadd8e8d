"""Where tasks run: ``make_executor(kind, max_workers, workflow) -> Backend``.

A :class:`Backend` bundles what the coordinator needs of an executor choice: the
``concurrent.futures.Executor``; whether tasks run in this process (``local``: specs
pass by reference, a lone python/set task may run inline, the state's views are
cached across steps); ``install(workflow)``, the executor-specific step that makes
the workflow known to its workers and returns how specs name it (threads: the
compiled object; processes: the pool initializer compiled it from its text; a
Dask backend would ``client.run`` or scatter it); ``channel(control)``, a fresh
effects channel per drive (``runtime/effects.py``); and ``close()``.

Kinds: ``threads`` (default; a :class:`~.pool.TaskPool`, whose ``start`` runs a task
without a ``Future``) and ``processes`` (a
``ProcessPoolExecutor`` of ``spawn``-ed workers: never ``fork`` from a process whose
threads are running; not ``forkserver`` either, whose server outlives a coordinator
killed with kill -9). Worker processes, and the manager server of the effects
channel, end themselves once the coordinator is gone (:func:`watch_coordinator`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..spec.model import Workflow
from ..store.leases import running_as, start_time
from . import worker
from .channels import LocalChannel
from .dask_cluster import check_address, is_dask_target, open_dask
from .effects import Channel, Control
from .messages import TaskReport, TaskSpec, WorkflowRef
from .pool import Job, TaskPool

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from .mpchannel import Inherited, ManagerChannel

EXECUTORS = ("threads", "processes", "dask", "tcp://HOST:PORT")
PARENT_POLL_S = 0.5  # how often a worker process looks whether its coordinator is gone


@dataclass(frozen=True, slots=True)
class Backend:
    executor: Executor
    local: bool  # tasks run in this process: specs by reference, inline tasks, cached views
    install: Callable[[Workflow], WorkflowRef]  # make the workflow known to the workers
    channel: Callable[[Control | None], Channel]  # a drive's channel (local: these flags)
    close: Callable[[], None]
    # it runs at most max_workers tasks at once (else the window hands it no more)
    bounded: bool = True
    # runs a spec without a Future, calling back with its job once done (threads)
    start: (
        Callable[
            [TaskSpec, Callable[[Job[TaskSpec, TaskReport]], object]], Job[TaskSpec, TaskReport]
        ]
        | None
    ) = None


def check_kind(kind: str) -> str:
    """Refuse an executor kind :func:`make_executor` does not know (before a run starts)."""
    if kind.startswith("tcp://"):
        check_address(kind)
    elif kind not in EXECUTORS:
        raise UsageError(f"unknown executor {kind!r}", hint=f"one of: {', '.join(EXECUTORS)}")
    return kind


def make_executor(kind: str, max_workers: int, workflow: Workflow) -> Backend:
    """The backend of executor ``kind`` with ``max_workers`` workers, for ``workflow``'s run."""
    check_kind(kind)
    if is_dask_target(kind):
        return _dask(kind, max_workers)
    if kind == "threads":
        pool = TaskPool(max_workers, thread_name_prefix="flowrun-task")

        def start(
            spec: TaskSpec, done: Callable[[Job[TaskSpec, TaskReport]], object]
        ) -> Job[TaskSpec, TaskReport]:
            return pool.start(worker.run_spec, spec, done)

        return Backend(pool, True, worker.install, LocalChannel, lambda: _shut(pool), start=start)
    if kind == "processes":
        from concurrent.futures import ProcessPoolExecutor

        from .mpchannel import Inherited

        ctx = mp_context()
        shipped = WorkflowRef(workflow.digest, workflow.path, workflow.source)
        effects = Inherited(f"effects-{uuid.uuid4().hex}", ctx.SimpleQueue())
        procs = ProcessPoolExecutor(
            max_workers=max_workers,
            mp_context=ctx,
            initializer=start_worker,
            initargs=(shipped, dict(os.environ), coordinator(), {effects.name: effects.get()}),
        )

        def install(wf: Workflow) -> WorkflowRef:
            if (wf.digest, wf.path) == (shipped.digest, shipped.path):
                return WorkflowRef(wf.digest, wf.path)  # the initializer compiled it
            return WorkflowRef(wf.digest, wf.path, wf.source)

        def close() -> None:
            _shut(procs)
            effects.forget()

        return Backend(procs, False, install, lambda control: _manager(ctx, effects), close)
    raise UsageError(f"unknown executor {kind!r}", hint=f"one of: {', '.join(EXECUTORS)}")


def _dask(kind: str, max_workers: int) -> Backend:
    """A Dask backend: the workflow goes to every worker once, by a worker plugin
    (``runtime/dask_workers.py``); effects travel on Dask's events (``dask_effects.py``)."""
    dask = open_dask(kind, workers=max_workers)
    from .dask_effects import DaskChannel
    from .dask_workers import WorkflowPlugin, plugin_name

    plugins: list[str] = []

    def install(wf: Workflow) -> WorkflowRef:
        path = str(wf.base_dir / Path(wf.path).name)  # a worker's working folder is its own
        shipped = WorkflowRef(wf.digest, path, wf.source)
        name = plugin_name(shipped)
        dask.client.register_plugin(WorkflowPlugin(shipped), name=name)
        plugins.append(name)
        return WorkflowRef(wf.digest, path)

    def close() -> None:
        for name in plugins:  # a scheduler that stays up forgets the workflow
            with contextlib.suppress(Exception):
                dask.client.unregister_worker_plugin(name)
        dask.shutdown(cancel_futures=True)

    def channel(control: Control | None) -> Channel:
        return DaskChannel(dask.client)

    # a scheduler of the run's own has max_workers workers; an existing one, any number
    return Backend(dask, False, install, channel, close, bounded=kind == "dask")


def for_executor(executor: Executor) -> Backend:
    """The backend of an executor the caller made: a thread pool runs in this process;
    any other gets the workflow's text in every spec and a multiprocessing channel.
    Its size is the caller's: it is handed no more than max_concurrency tasks at once."""
    if isinstance(executor, ThreadPoolExecutor | TaskPool):
        return Backend(executor, True, worker.install, LocalChannel, lambda: None, False)

    def install(wf: Workflow) -> WorkflowRef:
        return WorkflowRef(wf.digest, wf.path, wf.source)

    ctx = mp_context()
    return Backend(executor, False, install, lambda control: _manager(ctx), lambda: None, False)


def mp_context() -> BaseContext:
    import multiprocessing  # here: a run on threads never imports it

    return multiprocessing.get_context("spawn")


def coordinator() -> tuple[int, int | None]:
    """This process, as its workers watch it: pid and start time."""
    return os.getpid(), start_time(os.getpid())


def _manager(ctx: BaseContext, effects: Inherited | None = None) -> ManagerChannel:
    from .mpchannel import ManagerChannel

    return ManagerChannel(ctx, watch_coordinator, (coordinator(),), effects)


def _shut(executor: Executor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)


def start_worker(
    ref: WorkflowRef,
    environ: dict[str, str],
    coordinator: tuple[int, int | None],
    inherited: dict[str, Any],
) -> None:
    """A worker process's initializer: ignore SIGINT (a terminal's Ctrl-C reaches the
    whole process group; the coordinator stops its workers through the stop flags),
    take the coordinator's environment as it is now and the effects queue, compile
    the workflow, work in its folder, and watch the coordinator."""
    from .mpchannel import inherit

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the initializer runs in the main thread
    inherit(inherited)
    os.environ.clear()
    os.environ.update(environ)
    base = worker.installed(ref).base_dir
    if base.is_dir():
        os.chdir(base)
    watch_coordinator(coordinator)


def watch_coordinator(coordinator: tuple[int, int | None]) -> None:
    """End this process (killing the commands it runs first) once the coordinator is gone:
    a worker of a coordinator killed with kill -9 must not go on running its tasks."""
    pid, started = coordinator

    def watch() -> None:
        while running_as(pid, started) if started is not None else _exists(pid):
            time.sleep(PARENT_POLL_S)
        worker.kill_all_local()
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="flowrun-coordinator-watch", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
