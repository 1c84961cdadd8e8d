"""Persistence: the Store protocol and its SQLite implementation."""

from __future__ import annotations

from .base import Checkpoint, Event, RunRecord, StepCommit, Store, TaskResult
from .sqlite import SQLiteStore

__all__ = ["Checkpoint", "Event", "RunRecord", "SQLiteStore", "StepCommit", "Store", "TaskResult"]
