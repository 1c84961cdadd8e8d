"""Persistence: the Store protocols, the SQL stores, and ``open_store`` (stores by URL)."""

from __future__ import annotations

from .base import Checkpoint, Event, RunHistory, RunRecord, StepCommit, Store, TaskResult
from .open import open_store
from .sqlite import SQLiteStore

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
