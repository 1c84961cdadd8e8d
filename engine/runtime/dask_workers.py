"""The workflow on every Dask worker, once: a worker plugin that compiles it from its text.

``Client.register_plugin`` runs the plugin's ``setup`` on every worker of the
scheduler and on every worker that joins later, so the text travels once per
worker, not in every task. It also makes the workflow's folder the worker's
working directory when the folder is there (Python nodes open relative paths
from it, as on the coordinator). Specs then name the workflow by digest alone.

Imported only where ``distributed`` is installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from . import worker as flowrun_worker
from .messages import WorkflowRef

__all__ = ["WorkflowPlugin", "dask_setup", "plugin_name"]


def plugin_name(ref: WorkflowRef) -> str:
    return f"flowrun-workflow-{ref.digest[:16]}"


class WorkflowPlugin(WorkerPlugin):
    """Compile ``ref`` (which carries its text) on each worker as it starts or joins."""

    def __init__(self, ref: WorkflowRef) -> None:
        self.ref = ref

    def setup(self, worker: Any) -> None:  # Dask passes the worker by this name
        base = flowrun_worker.installed(self.ref).base_dir  # compiled from its text, kept
        with contextlib.suppress(OSError):  # not there: commands say so, with their cwd
            os.chdir(base)


def dask_setup(worker: Any) -> None:
    """A preload of the worker processes of a run's own LocalCluster: they ignore SIGINT.

    A terminal's Ctrl-C reaches the whole process group, the cluster's worker
    processes too; the coordinator alone handles it and stops tasks through the
    stop and abort flags. Dask runs a preload on the worker's event loop, in its
    process's main thread, where a signal handler can be set.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
