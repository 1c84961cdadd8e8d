"""flowrun's engine, usable as a library::

from flowrun.engine import Engine, SQLiteStore, load_workflow

wf = load_workflow("graph.yaml")
result = Engine(SQLiteStore(".flowrun/flowrun.db")).start(wf)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BudgetExceeded,
    DatabaseRefused,
    FlowrunError,
    Interrupted,
    LeaseLost,
    ResumeRefused,
    RunExists,
    RunFailed,
    StepAlreadyCommitted,
    StoreError,
    UsageError,
    WorkflowError,
)
from .lazy import attributes

# The rest loads on first use (PEP 562), so `flowrun --help` and the CLI's error
# boundary do not pay for Jinja2, the runtime and the store.
_LAZY = {
    "EventSink": ".events",
    "JsonlSink": ".events",
    "Engine": ".runtime",
    "Fanout": ".observer",
    "Observer": ".observer",
    "RunResult": ".runtime",
    "Settings": ".runtime",
    "new_run_id": ".runtime",
    "Workflow": ".spec",
    "load_workflow": ".spec",
    "RunHistory": ".store",
    "SQLiteStore": ".store",
    "Store": ".store",
    "open_store": ".store",
}

if TYPE_CHECKING:
    from .events import EventSink, JsonlSink
    from .observer import Fanout, Observer
    from .runtime import Engine, RunResult, Settings, new_run_id
    from .spec import Workflow, load_workflow
    from .store import RunHistory, SQLiteStore, Store, open_store
else:  # mypy sees the imports above, and flags any other name
    __getattr__ = attributes(__name__, _LAZY)


__all__ = [
    "BudgetExceeded",
    "DatabaseRefused",
    "Engine",
    "EventSink",
    "Fanout",
    "FlowrunError",
    "Interrupted",
    "JsonlSink",
    "LeaseLost",
    "Observer",
    "ResumeRefused",
    "RunExists",
    "RunFailed",
    "RunHistory",
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
    "open_store",
]
