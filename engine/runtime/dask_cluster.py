"""Running tasks on Dask distributed: ``--executor dask`` and ``--executor tcp://HOST:PORT``.

``dask`` starts a :class:`distributed.LocalCluster` of worker processes for this
run alone (one thread each, on 127.0.0.1, no dashboard) and closes it when the
run ends; ``tcp://HOST:PORT`` connects to a scheduler that is already running and
leaves it running. Either way tasks go through ``Client.get_executor()``, the
``concurrent.futures.Executor`` Dask itself offers, wrapped so that shutting it
down also closes what was opened for it.

``distributed`` is an optional dependency (``pip install 'flowrun[dask]'``),
imported only here and only when such an executor is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import UsageError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

__all__ = ["CONNECT_TIMEOUT_S", "DaskExecutor", "is_dask_target", "open_dask"]

CONNECT_TIMEOUT_S = 5.0  # an unreachable scheduler is reported after this long
INSTALL_HINT = "pip install 'flowrun[dask]' (it brings Dask distributed)"
_ADDRESS = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(?P<port>[0-9]{1,5})")

T = TypeVar("T")


def is_dask_target(value: str) -> bool:
    """True for the ``--executor`` values that run on Dask: ``dask`` and ``tcp://…``."""
    return value == "dask" or value.startswith("tcp://")


def check_address(value: str) -> str:
    """``value`` if it is a ``tcp://HOST:PORT`` scheduler address, else a UsageError."""
    m = _ADDRESS.fullmatch(value)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise UsageError(
            f"--executor {value!r}: not a scheduler address",
            hint="write it as tcp://HOST:PORT, as `dask scheduler` prints it",
        )
    return value


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--executor dask and tcp://HOST:PORT need Dask distributed, which is not installed",
            hint=INSTALL_HINT,
        ) from None
    return distributed


class DaskExecutor(Executor):
    """Tasks on a Dask client; it owns the client (and the cluster started for it).

    A Dask client is not told when a task starts, so a submitted task counts as
    started: its future is *running* from the start and ``cancel()`` refuses, as it
    does for a process pool's running task (Dask's own executor would instead
    cancel a running task and lose its result, an LLM call's included). A task
    still queued when the run stops sees the stop flag as it starts and returns
    at once; ``shutdown(cancel_futures=True)`` cancels whatever is left.
    Submissions are never *pure*: Dask would otherwise give two submissions of
    the same function and arguments one key and run them once.
    """

    def __init__(self, client: Client, cluster: LocalCluster | None = None) -> None:
        self.client = client
        self.cluster = cluster  # None: an existing scheduler, left running
        self._pending: set[Any] = set()  # Dask futures not yet done
        self._lock = threading.Lock()
        self._closed = False

    def workers(self) -> int:
        """How many workers the scheduler has right now."""
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task = self.client.submit(fn, *args, pure=False, **kwargs)
            self._pending.add(task)
        out: Future[T] = Future()
        out.set_running_or_notify_cancel()
        task.add_done_callback(lambda done: self._relay(done, out))
        return out

    def _relay(self, task: Any, out: Future[Any]) -> None:
        """On Dask's callback thread: hand ``task``'s outcome to ``out``."""
        with self._lock:
            self._pending.discard(task)
        try:
            if task.status == "finished":
                out.set_result(task.result())
            elif task.status == "cancelled":
                out.set_exception(CancelledError(f"Dask cancelled task {task.key}"))
            else:
                exc = task.exception()
                out.set_exception(exc.with_traceback(task.traceback()))
        except BaseException as exc:  # the scheduler went away while the result was fetched
            if not out.done():
                out.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel what is left (or wait for it), then close the client and our cluster."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            left = list(self._pending)
        with contextlib.suppress(Exception):  # a scheduler already gone has nothing to cancel
            if cancel_futures or not wait:
                self.client.cancel(left)
            elif left:
                distributed_wait(left)
        with contextlib.suppress(Exception):
            self.client.close(timeout=CONNECT_TIMEOUT_S)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=CONNECT_TIMEOUT_S)


def distributed_wait(futures: list[Any]) -> None:
    import distributed

    distributed.wait(futures)


def open_dask(target: str, *, workers: int | None = None) -> DaskExecutor:
    """The executor for ``--executor dask`` (a cluster of ``workers`` processes) or ``tcp://…``.

    ``workers`` defaults to the machine's CPU count. A scheduler that cannot be
    reached within :data:`CONNECT_TIMEOUT_S` is a UsageError (exit 2), as is a
    missing ``distributed``.
    """
    if target != "dask":
        check_address(target)
    distributed = _distributed()
    if target == "dask":
        cluster = distributed.LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # its HTTP server (health, metrics) on a free loopback port, not on 8787
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
            preload=["flowrun.engine.runtime.dask_workers"],  # its workers ignore Ctrl-C
        )
        try:
            client = distributed.Client(cluster, timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            cluster.close()
            raise
        return DaskExecutor(client, cluster)
    try:
        client = distributed.Client(target, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # OSError mostly; Dask raises what the connect raised
        why = str(exc).strip() or type(exc).__name__
        raise UsageError(
            f"--executor {target}: cannot reach the Dask scheduler: {why}",
            hint="start one with `dask scheduler`, or check the address and the port",
        ) from None
    return DaskExecutor(client)
