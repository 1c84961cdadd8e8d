"""The run database a command opens: where it is, whether it may be made, how it is opened.

Apart from ``running`` so that the read-only commands (``runs``, ``show``, ``logs``,
``costs``) open the store without importing the scheduler.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowrun.engine import ResumeRefused, Store, UsageError, envvars
from flowrun.engine.store import open as store_open
from flowrun.engine.store.sqlite_file import examine

from .options import DEFAULT_DB, open_sqlite


def open_store(
    db: str | None, durability: str = "normal", *, create: bool = True, readonly: bool = False
) -> Store:
    """The run database; ``create=False`` never makes one, ``readonly=True`` never writes."""
    if durability not in ("normal", "full"):
        raise UsageError(f"--durability must be normal or full, not {durability!r}")
    if not readonly:  # FLOWRUN_* seconds: a bad one is refused before anything starts
        envvars.check()
    url = db or DEFAULT_DB
    path = store_open.sqlite_path(url) if store_open.scheme_of(url) in (None, "sqlite") else None
    if path is not None and not (create or os.path.lexists(path)):
        examine(Path(path))  # a path no file can be at (under a file, say) is a usage error
        raise ResumeRefused(
            f"no flowrun database at {path}",
            hint="run a workflow here first, or point --db (or FLOWRUN_DB) at its database",
        )
    return open_sqlite(
        path or url,
        lambda: store_open.open_store(url, durability=durability, readonly=readonly),
    )
