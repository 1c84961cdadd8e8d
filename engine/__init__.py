"""flowrun's engine, usable as a library::

from flowrun.engine import Engine, SQLiteStore, load_workflow

wf = load_workflow("graph.yaml")
result = Engine(SQLiteStore(".flowrun/flowrun.db")).start(wf)
"""

from __future__ import annotations

from .errors import (
    BudgetExceeded,
    FlowrunError,
    Interrupted,
    LeaseLost,
    ResumeRefused,
    RunFailed,
    StepAlreadyCommitted,
    StoreError,
    UsageError,
    WorkflowError,
)
from .events import EventSink, JsonlSink
from .runtime import Engine, Fanout, Observer, RunResult, Settings, new_run_id
from .spec import Workflow, load_workflow
from .store import SQLiteStore, Store

__all__ = [
    "BudgetExceeded",
    "Engine",
    "EventSink",
    "Fanout",
    "FlowrunError",
    "Interrupted",
    "JsonlSink",
    "LeaseLost",
    "Observer",
    "ResumeRefused",
    "RunFailed",
    "RunResult",
    "SQLiteStore",
    "Settings",
    "StepAlreadyCommitted",
    "Store",
    "StoreError",
    "UsageError",
    "Workflow",
    "WorkflowError",
    "load_workflow",
    "new_run_id",
]
