"""Persistence: the Store protocols, the SQL stores, and ``open_store`` (stores by URL)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from .base import Checkpoint, Event, RunHistory, RunRecord, StepCommit, Store, TaskResult
    from .open import open_store
    from .sqlite import SQLiteStore
else:  # lazy: the records and the protocols without sqlite3 and the SQL stores
    __getattr__ = attributes(
        __name__,
        {
            "Checkpoint": ".base",
            "Event": ".base",
            "RunHistory": ".base",
            "RunRecord": ".base",
            "StepCommit": ".base",
            "Store": ".base",
            "TaskResult": ".base",
            "open_store": ".open",
            "SQLiteStore": ".sqlite",
        },
    )

__all__ = [
    "Checkpoint",
    "Event",
    "RunHistory",
    "RunRecord",
    "SQLiteStore",
    "StepCommit",
    "Store",
    "TaskResult",
    "open_store",
]
