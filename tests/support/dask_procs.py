"""A Dask cluster made with the ``dask`` command: ``dask scheduler`` and ``dask worker``s.

What a user would start by hand, on 127.0.0.1: the scheduler picks a free port
(``--port 0``) and writes its address to a scheduler file, which the workers
read. Stopped with SIGTERM (SIGKILL past a bound) when the block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DASK = str(Path(sys.executable).parent / "dask")
START_S = 60.0  # a loaded machine starts a worker process in a few seconds


@dataclass
class DaskProcs:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker_pids(self) -> set[int]:
        """The pids of the worker processes (``dask worker`` runs each under a nanny)."""
        import distributed

        with distributed.Client(self.address, timeout=10) as client:
            return set(client.run(os.getpid).values())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _quiet(folder: Path, name: str) -> dict[str, object]:
    log = (folder / f"{name}.log").open("wb")
    return {"stdout": log, "stderr": subprocess.STDOUT, "start_new_session": True}


@contextlib.contextmanager
def dask_command_cluster(folder: Path, workers: int = 2) -> Iterator[DaskProcs]:
    """``dask scheduler`` and ``workers`` × ``dask worker`` (one thread each), stopped after."""
    import distributed

    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "scheduler.json"
    argv = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    scheduler = subprocess.Popen(
        [*argv, "--scheduler-file", str(info)],
        **_quiet(folder, "scheduler"),  # type: ignore[call-overload]
    )
    procs: DaskProcs | None = None
    try:
        deadline = time.monotonic() + START_S
        while not info.exists() or not info.read_text(encoding="utf-8").strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "scheduler.log").read_text(errors="replace"))
            time.sleep(0.05)
        address = json.loads(info.read_text(encoding="utf-8"))["address"]
        procs = DaskProcs(address, scheduler)
        argv = [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
        for n in range(workers):
            procs.workers.append(
                subprocess.Popen(
                    [*argv, "--local-directory", str(folder / f"w{n}")],
                    **_quiet(folder, f"worker{n}"),  # type: ignore[call-overload]
                )
            )
        with distributed.Client(address, timeout=10) as client:
            client.wait_for_workers(workers, timeout=START_S)
        yield procs
    finally:
        for proc in [*(procs.workers if procs else []), scheduler]:
            _stop(proc)
