"""The scheduler: supersteps, ordering, reducers, retries."""

from __future__ import annotations

from .engine import Engine, RunResult, Settings, new_run_id
from .observer import Fanout, Observer

__all__ = ["Engine", "Fanout", "Observer", "RunResult", "Settings", "new_run_id"]
