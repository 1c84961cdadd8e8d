"""The scheduler: supersteps, ordering, reducers, retries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from ..observer import Fanout, Observer
    from .engine import Engine, RunResult, Settings, new_run_id
else:  # lazy: a progress view or the metrics exporter subclasses Observer without the scheduler
    __getattr__ = attributes(
        __name__,
        {
            "Engine": ".engine",
            "RunResult": ".engine",
            "Settings": ".engine",
            "new_run_id": ".engine",
            "Fanout": "..observer",  # the observer protocol lives on the ground floor
            "Observer": "..observer",
        },
    )

__all__ = ["Engine", "Fanout", "Observer", "RunResult", "Settings", "new_run_id"]
