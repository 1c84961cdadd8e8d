"""A run's working directory: the workflow file's folder, for every node kind alike.

Commands are started there (a node's ``cwd:`` is relative to it) and Python nodes
run there, so ``open("data/x.csv")`` in a node means what ``cat data/x.csv`` in a
command means, wherever flowrun was started from. The working directory belongs to
the whole process: runs in one process share it (the outermost run's folder is
restored when the last one ends), and paths given to flowrun itself must be made
absolute before a run starts.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_lock = threading.Lock()
_depth = 0
_home: str | None = None  # the directory to return to when the last run ends


@contextlib.contextmanager
def workflow_dir(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (left as it is if ``path`` cannot be entered)."""
    global _depth, _home
    with _lock:
        if _depth == 0:
            try:
                _home = os.getcwd()
            except OSError:  # started in a folder since deleted: nowhere to return to
                _home = None
        _depth += 1
        with contextlib.suppress(OSError):  # a missing folder: commands report it
            os.chdir(path)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _home is not None:
                with contextlib.suppress(OSError):
                    os.chdir(_home)
