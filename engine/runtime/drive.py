"""One drive of a run: the per-run state the coordinator keeps while it drives it.

An :class:`Engine` may drive several runs one after another; everything that
belongs to one drive (its lease token, ledger, effects channel, the current step's
window, what the last merge grew) lives here, not on the engine.
"""

from __future__ import annotations

import queue
import uuid
from typing import TYPE_CHECKING, Any

from ..events import Outbox
from ..ledger import Ledger
from ..observer import Observer
from ..secrets import Masker
from ..spec.model import Workflow
from ..store.base import Event, Store
from .apply import Applier, ProcLog
from .effects import Channel, Control
from .executors import Backend
from .messages import TaskReport, TaskSettings, WorkflowRef
from .window import Window

if TYPE_CHECKING:
    from .engine import Engine


class Drive:
    def __init__(
        self,
        engine: Engine,
        wf: Workflow,
        run_id: str,
        token: int,
        outbox: Outbox,
        ledger: Ledger,
        backend: Backend,
        own_executor: bool,
    ) -> None:
        s = engine.settings
        self.engine = engine
        self.store: Store = engine.store
        self.observer: Observer = engine.observer
        self.settings = s
        self.abort = engine.abort
        self.wf = wf
        self.run_id = run_id
        self.token = token
        self.drive_id = f"{run_id}/{uuid.uuid4().hex[:12]}"
        self.outbox = outbox
        self.masker: Masker = outbox.masker
        self.ledger = ledger
        self.backend = backend
        self.own_executor = own_executor
        self.max_concurrency = s.max_concurrency or wf.config.max_concurrency
        qd = s.queue_depth
        self.queue_depth = wf.config.queue_depth if qd is None else qd
        # in this process the coordinator's own flags are the tasks' flags
        local = Control(engine.stop, engine.abort, ledger.over_budget)
        self.channel: Channel = backend.channel(local if backend.local else None)
        self.ref: WorkflowRef = backend.install(wf)
        self.task_settings = TaskSettings(
            output_limit=s.output_limit,
            grace_s=s.grace_s,
            secrets=tuple(sorted(self.masker.secrets)),
            extra=dict(s.extra),
            live_output=self.observer.wants_output(),
        )
        self.applier = Applier(
            ledger, ProcLog(self.store, run_id, token), self.observer, self.channel
        )
        self.arrivals: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.channel.open(self.arrivals.put)
        self.window = Window(1, 0)
        self.grown: dict[str, tuple[list[Any], list[Any]]] = {}
        self.failure_events: list[Event] = []
        self.step = 0

    def stopping(self) -> bool:
        return self.engine.stop.is_set()

    def over_budget(self) -> bool:
        return self.ledger.over_budget.is_set()

    def stop_reason(self) -> str | None:
        return self.engine.stop_reason

    def budget_warnings(self, *, commit: bool = True) -> list[Event]:
        """Announce the budget levels the ledger reached: events (appended now unless the
        caller commits them itself) and the observer's line."""
        warnings = self.ledger.take_warnings()
        events = [
            self.outbox.make("budget_warning", step=self.step, data=w.to_json()) for w in warnings
        ]
        if events and commit:
            self.store.append_events(self.run_id, self.token, events)
            self.outbox.deliver(events)
        for w in warnings:
            self.observer.budget_warning(w.level, w.spent_usd, w.max_cost_usd)
        return events

    def finished(self, out: TaskReport) -> None:
        hook = self.engine.after_task
        if hook is not None:
            hook(self.engine, out)

    def close(self) -> None:
        from . import worker

        self.channel.close()
        worker.forget(self.drive_id)
