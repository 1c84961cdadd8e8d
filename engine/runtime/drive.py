"""One drive of a run: the per-run state the coordinator keeps while it drives it.

An :class:`Engine` may drive several runs one after another; everything that
belongs to one drive (its lease token, ledger, effects channel, the current step's
window, what the last merge grew) lives here, not on the engine.
"""

from __future__ import annotations

import logging
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
from .channels import DriveSink
from .effects import Channel, Control, Effect, EffectSink
from .executors import Backend
from .messages import TaskReport, TaskSettings, WorkflowRef
from .window import Window

if TYPE_CHECKING:
    from .engine import Engine

_log = logging.getLogger("flowrun")


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
        # what tasks send on: in this process, a thread a task left running still has its
        # paid calls billed once the drive ended (``channels.DriveSink``)
        self.late = DriveSink(self.channel.sink, self.applier.apply) if backend.local else None
        self.sink: EffectSink = self.channel.sink if self.late is None else self.late
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

    def apply(self, effect: Effect) -> str | None:
        """Apply an effect that arrived (on the coordinator's thread, or the thread of a
        task it runs inline); acknowledge a durable one."""
        error = self.applier.apply(effect)
        if effect.DURABLE:
            self.channel.ack(effect, error)
        return error

    def close(self) -> None:
        """The drive is over: apply the effects still queued (what a call a task abandoned
        sent after the last step took its arrivals, a paid call above all), then close
        the channel; what such a call sends later is applied by its own thread
        (``channels.DriveSink``)."""
        from . import worker

        try:
            self._drain()
        finally:
            if self.late is not None:
                self.late.end()
            self.channel.close()
            worker.forget(self.drive_id)

    def _drain(self) -> None:
        while True:
            try:
                item = self.arrivals.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, Effect):
                continue  # a future: its report came (or will never matter) once the step ended
            try:
                self.apply(item)
            except Exception as exc:  # an observer hook failed: the run's outcome stands
                _log.warning(
                    "flowrun: warning: run %s: an effect that arrived as the run ended"
                    " could not be applied: %s: %s",
                    self.run_id,
                    type(exc).__name__,
                    exc,
                )
