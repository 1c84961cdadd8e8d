"""The superstep engine: a run's lifecycle (start, resume, lease, heartbeat, finish) and
its steps (dispatch, merge in tree order, commit atomically).

The engine is the coordinator. It owns the state, talks to the store from one
thread, and hands tasks to an executor as plain specs (``runtime/messages.py``): a
thread pool by default, worker processes, or any ``concurrent.futures.Executor``
(SPEC §9). A step's dispatch is ``runtime/dispatch.py``, its merge
``runtime/merge.py``; what belongs to one drive of a run is ``runtime/drive.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    FlowrunError,
    Interrupted,
    LeaseLost,
    ResumeRefused,
    RunExists,
    RunFailed,
    UsageError,
)
from ..events import EventSink, Outbox
from ..jsonvalue import JSONValueError, check, dumps, where
from ..ledger import Ledger
from ..observer import Observer
from ..output import DEFAULT_LIMIT
from ..records import Frontier, Task
from ..report import display_status
from ..secrets import run_masker
from ..spec.model import Workflow
from ..store.base import RunRecord, StepCommit, Store
from ..store.leases import stale_after
from . import frontier as fr
from .dispatch import StepDispatch, task_results
from .drive import Drive
from .executors import check_kind, for_executor, make_executor
from .merge import Merged, StepMerge, advance
from .messages import TaskOutcome, TaskReport
from .ordering import idempotency_key, state_digest, step_digest, value_digest
from .orphans import take_over
from .reducers import AppendLog
from .relay import Loop, relay
from .steplog import StepLog
from .tasks import StepKeys, step_tasks
from .workdir import workflow_dir

_log = logging.getLogger("flowrun")
HEARTBEAT_PER_WINDOW = 6  # heartbeats per staleness window (every 5 s of 30 s)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(slots=True)
class RunResult:
    run_id: str
    status: str
    steps: int
    state: dict[str, Any]
    duration_s: float
    error: str | None = None
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the status the run id already had when ``start(if_exists="continue")`` found it
    # recorded (``succeeded``: nothing was run); None: the run was started now
    found: str | None = None

    @property
    def exit_code(self) -> int:
        return {"succeeded": 0, "failed": 1, "interrupted": 130}.get(self.status, 1)

    def to_json(self) -> dict[str, Any]:
        out = {
            "run_id": self.run_id,
            "status": self.status,
            "steps": self.steps,
            "state": self.state,
            "duration_s": round(self.duration_s, 6),
            "error": self.error,
        }
        out.update(self.extra)
        return out


@dataclass
class Settings:
    max_concurrency: int | None = None
    queue_depth: int | None = None
    max_steps: int | None = None
    conflict_policy: str | None = None
    grace_s: float = 10.0
    max_cost_usd: float | None = None  # overrides config.max_cost_usd; stored with the run
    output_limit: int = DEFAULT_LIMIT  # bytes of each attempt's output kept (the last ones)
    prices: Any = None  # a costs.PriceSource; None: the built-in table
    extra: dict[str, Any] = field(default_factory=dict)
    executor: str = "threads"  # where tasks run when the engine is given no executor


class Engine:
    def __init__(
        self,
        store: Store,
        *,
        executor: Executor | None = None,
        settings: Settings | None = None,
        observer: Observer | None = None,
        sinks: list[EventSink] | None = None,
        stop: threading.Event | None = None,
        after_task: Callable[[Engine, TaskOutcome], None] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.settings = settings or Settings()
        self.observer = observer or Observer()
        self.sinks = sinks or []
        self.stop = stop or threading.Event()  # SIGINT/SIGTERM: no new task or attempt
        self.abort = threading.Event()  # a second signal: give up running work at once
        self.after_task = after_task
        self.stop_reason: str | None = None
        self.run_id = ""  # the run being driven (read by signal handlers and hooks)
        self._drive_of: Drive | None = None

    def running_tasks(self) -> int:
        """How many tasks are running right now (any thread may ask)."""
        d = self._drive_of
        return 0 if d is None else d.window.running()

    # public API ---------------------------------------------------------------
    def start(
        self,
        workflow: Workflow,
        *,
        run_id: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        if_exists: str = "fail",
    ) -> RunResult:
        """Start a run of ``workflow``; an id that is already recorded raises ``RunExists``.

        ``if_exists="continue"`` makes a start by id idempotent (a retried CI job): a
        run of the same workflow name that succeeded is reported and nothing runs; one
        that failed, was interrupted or crashed is continued as :meth:`resume` would,
        with ``workflow`` (it may hold a fix). ``inputs`` must then be the stored ones
        or empty. A live owner, or a run of another workflow, is ``ResumeRefused``.
        """
        if if_exists not in ("fail", "continue"):
            raise UsageError(f"if_exists must be fail or continue, not {if_exists!r}")
        if self.executor is None:
            check_kind(self.settings.executor)  # before the run is recorded
        run_id = run_id or new_run_id()
        masker = run_masker(workflow, store=self.store)  # a secret input is not stored either
        masked: dict[str, Any] = {}
        state = workflow.initial_state()
        for k, v in (inputs or {}).items():
            if k not in workflow.state:
                raise UsageError(
                    f"input {k!r} is not a declared state key",
                    hint=f"declared: {', '.join(workflow.state) or '(none)'}",
                )
            try:
                check(v)
                state[k] = masked[k] = masker.value(json.loads(dumps(v)))
            except JSONValueError as exc:
                at = where((k, *exc.path))
                raise UsageError(f"input {at}: {exc.problem}", hint=exc.hint) from None
            except (TypeError, ValueError):
                raise UsageError(f"input {k!r} is not a JSON value") from None
        try:
            self.store.create_run(
                run_id,
                workflow_name=workflow.name,
                workflow_path=str(workflow.base_dir / Path(workflow.path).name),
                workflow_text=workflow.source,
                workflow_digest=workflow.digest,
                state=state,
                frontier=fr.initial(workflow),
                inputs=masked,
            )
        except RunExists:
            if if_exists == "fail":
                raise
            return self._continue(workflow, run_id, masked)  # compared as they were stored
        with workflow_dir(workflow.base_dir):
            return self._drive(workflow, run_id, resumed=False, force=False)

    def resume(self, workflow: Workflow, run_id: str, *, force: bool = False) -> RunResult:
        with workflow_dir(workflow.base_dir):
            return self._drive(workflow, run_id, resumed=True, force=force)

    def _continue(self, wf: Workflow, run_id: str, inputs: dict[str, Any]) -> RunResult:
        """``start`` of a recorded id: report a success, else resume it with ``wf``."""
        rec = self.store.get_run(run_id)
        if rec.workflow_name != wf.name:
            raise ResumeRefused(
                f"run id {run_id!r} belongs to workflow {rec.workflow_name!r}, not {wf.name!r}",
                hint="pick another --run-id for this workflow",
            )
        stored = self.store.inputs(run_id)
        if inputs and inputs != stored:
            diff = sorted(k for k in {*inputs, *stored} if inputs.get(k) != stored.get(k))
            raise UsageError(
                f"run {run_id} was started with other inputs"
                f" (differing: {', '.join(map(repr, diff))}); a continuation keeps its inputs",
                hint="repeat the first attempt's --set/--input exactly, or give none",
            )
        if rec.status == "succeeded":
            return RunResult(
                run_id,
                "succeeded",
                rec.step,
                self.store.load_latest(run_id).state,
                rec.duration_s,
                digest=rec.state_digest,
                found="succeeded",
            )
        with workflow_dir(wf.base_dir):
            return self._drive(wf, run_id, resumed=True, force=False, continuing=True)

    # a run's lifecycle ------------------------------------------------------------
    def _drive(
        self, wf: Workflow, run_id: str, *, resumed: bool, force: bool, continuing: bool = False
    ) -> RunResult:
        store = self.store
        # read here, not in the thread: a bad FLOWRUN_LEASE_STALE_S is the caller's error
        beat_every = stale_after() / HEARTBEAT_PER_WINDOW
        if self.executor is None:
            check_kind(self.settings.executor)
        # a forced-out owner, and commands a dead owner left running, die first
        token = take_over(store, run_id, force=force)
        self.abort.clear()  # a signal's abort was for the drive it stopped
        t_start = time.perf_counter()
        rec = store.get_run(run_id)
        found = None
        if continuing:  # the lease is ours: a `running` run's owner was gone
            found = display_status(rec.status, live=False)
            self.observer.run_found(run_id, found, rec.step)
        prior = rec.duration_s

        def elapsed() -> float:
            return prior + time.perf_counter() - t_start

        masker = run_masker(wf, store=store)  # the secrets of this drive's environment
        outbox = Outbox(store, run_id, self.sinks, masker)
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(run_id, token, beat_stop, beat_every),
            name="flowrun-heartbeat",
            daemon=True,
        )
        max_cost = self.settings.max_cost_usd  # given now: it is the run's budget from now on
        if max_cost is not None:
            store.set_max_cost(run_id, token, max_cost)
        else:  # a plain resume keeps the budget the run was given, else the workflow's
            max_cost = rec.max_cost_usd if rec.max_cost_usd is not None else wf.config.max_cost_usd
        ledger = Ledger(
            store, run_id, self.settings.prices, max_cost, self.observer, threading.Event()
        )
        self.run_id = run_id
        own = self.executor is None
        max_conc = self.settings.max_concurrency or wf.config.max_concurrency
        backend = (
            make_executor(self.settings.executor, max_conc, wf)
            if self.executor is None
            else for_executor(self.executor)
        )
        d: Drive | None = None
        try:
            beat.start()  # inside the try: whatever fails, the finally stops it and the lease goes
            d = self._drive_of = Drive(self, wf, run_id, token, outbox, ledger, backend, own)
            outbox.deliver_pending()
            result = relay(self._steps(d, rec, resumed, elapsed), self._interrupt)
            result.found = found
            return result
        except Interrupted as exc:
            assert d is not None
            self._finish(d, "interrupted", exc.message, elapsed())
            raise
        except RunFailed as exc:
            if d is None:
                raise
            self._finish(d, "failed", exc.message, elapsed())
            raise
        except FlowrunError as exc:  # the store failed or the lease was lost: nothing to write
            self.observer.run_finished("failed", exc.message)
            raise
        finally:
            beat_stop.set()
            backend.close()
            if d is not None:
                d.close()
            try:
                outbox.flush()
                store.release_lease(run_id, token)
            except FlowrunError:
                pass
            for s in self.sinks:
                s.close()

    def _steps(
        self, d: Drive, rec: RunRecord, resumed: bool, elapsed: Callable[[], float]
    ) -> Loop[RunResult]:
        """Run the run's steps from its last checkpoint until its frontier is empty (the
        coordinator's loop: it yields the tasks it runs inline, see ``runtime/relay.py``)."""
        store, wf, run_id, token, outbox = d.store, d.wf, d.run_id, d.token, d.outbox
        cp = store.load_latest(run_id)
        state = cp.state
        if cp.status == "succeeded":
            return RunResult(
                run_id, "succeeded", cp.step, state, rec.duration_s, digest=rec.state_digest
            )
        step = cp.step
        frontier = cp.frontier
        missing = sorted({n for n in frontier.nodes() if n not in wf.nodes})
        if missing:
            raise UsageError(
                f"the workflow has no node {', '.join(map(repr, missing))}, which run"
                f" {run_id} runs next (step {step})",
                hint="resume with a --workflow that keeps those nodes",
            )
        saved = {
            k: r for k, r in store.load_task_results(run_id, step).items() if r.status == "ok"
        }  # only the step a run stopped in can hold results from before
        dropped = sorted({k for r in saved.values() for k in r.delta or {}} - set(wf.state))
        if dropped:
            raise UsageError(
                f"the workflow does not declare state key {', '.join(map(repr, dropped))},"
                f" which saved results of run {run_id} write (step {step})",
                hint="resume with a --workflow that keeps those keys",
            )
        # held as stored (dicts with sorted keys), like the keys loaded from the store; only
        # the new keys' defaults are copied (a big default the run has is not)
        added = {k: json.loads(dumps(s.default)) for k, s in wf.state.items() if k not in state}
        if added:  # resume --workflow with new state keys: they start at their defaults
            store.add_state_keys(run_id, token, added)
            state.update(added)
        resumed = resumed and outbox.seq > 0  # a fork's first drive is its start
        started = [
            outbox.make(
                "run_resumed" if resumed else "run_started", step=step, data={"workflow": wf.name}
            )
        ]
        store.set_status(run_id, token, "running", events=started)
        outbox.deliver(started)
        self.observer.run_started(run_id, wf.name, step, resumed)
        texts = {k: dumps(v) for k, v in state.items()}
        digests = {k: value_digest(t) for k, t in texts.items()}
        log = AppendLog()  # append/extend keys stored as what each step added
        max_steps = self.settings.max_steps or wf.config.max_steps
        policy = self.settings.conflict_policy or wf.config.conflict_policy
        first = cp.step
        while frontier.entries:
            d.step = step
            d.budget_warnings()
            d.ledger.check()  # over budget: fail before dispatching anything new
            if step >= max_steps:
                raise RunFailed(
                    f"the run reached max_steps ({max_steps}) without ending",
                    hint="raise config.max_steps, or check routes for a loop without exit",
                )
            step_t0 = time.perf_counter()
            try:
                tasks = step_tasks(wf, frontier.entries, state, run_id, step)
            except fr.RouteError as exc:
                raise RunFailed(str(exc)) from None
            self.observer.step_started(step, tasks)
            sm = StepMerge(wf, tasks, state, texts, log, step, policy, self.observer.merge_conflict)
            dispatch = StepDispatch(d, tasks, state, step, saved if step == first else {}, sm)
            unsaved = yield from dispatch.run()
            try:
                m = sm.result()
                nxt = advance(wf, tasks, frontier, m.state, run_id, step)
            except RunFailed:  # the step is not committed: keep what finished for resume
                store.save_task_results(run_id, token, task_results(step, unsaved))
                raise
            d.grown = m.grown  # read-only views freeze only the new items
            for k in m.changed:
                texts[k] = m.changed[k]
                digests[k] = m.digests.get(k) or value_digest(m.changed[k])
            for k in m.appended:  # its text is not kept: only a snapshot compares it
                digests[k] = m.digests[k]
            sdig = state_digest(digests)
            self._commit(d, step, tasks, sm.log, unsaved, m, nxt, sdig, step_t0, elapsed)
            state, frontier, step = m.state, nxt, step + 1
        self.observer.run_finished("succeeded", None)
        return RunResult(
            run_id,
            "succeeded",
            step,
            state,
            elapsed(),
            digest=store.get_run(run_id).state_digest,
        )

    def _commit(
        self,
        d: Drive,
        step: int,
        tasks: Sequence[Task],
        log: StepLog,
        unsaved: list[TaskReport],
        m: Merged,
        nxt: Frontier,
        sdig: str,
        step_t0: float,
        elapsed: Callable[[], float],
    ) -> None:
        """Commit the step: its state, next frontier, events and last results, at once."""
        outbox, run_id = d.outbox, d.run_id
        rows = StepKeys(tasks)
        events = log.events(outbox, step)  # the tasks' events, then the step's own
        done = not nxt.entries
        events.tail.append(
            outbox.make(
                "step_committed",
                step=step,
                duration=time.perf_counter() - step_t0,
                data={"tasks": len(tasks)},
            )
        )
        if done:
            events.tail.append(outbox.make("run_succeeded", step=step))
        d.store.save_step(
            run_id,
            d.token,
            StepCommit(
                step=step,
                idempotency_key=idempotency_key(run_id, step, rows.keys()),
                digest=step_digest(step, rows.keys(), sdig),
                changed=m.changed,
                appended=m.appended,
                frontier=nxt,
                tasks=rows,
                events=events,
                status="succeeded" if done else "running",
                state_digest=sdig,
                # the commit's events and state hold all of a successful result
                # but what it printed: only results with output need a row
                results=task_results(
                    step, [o for o in unsaved if o.stdout or o.stderr or o.outputs]
                ),
                duration_s=elapsed(),
            ),
        )
        outbox.deliver(events)
        self.observer.step_committed(step, time.perf_counter() - step_t0)

    def _interrupt(self) -> Callable[[], None]:
        """A KeyboardInterrupt in the thread that waits for the loop: stop at once (as a
        second signal does); return how to undo it, for a later drive."""
        was_stopped = self.stop.is_set()
        self.stop.set()
        self.abort.set()
        return (lambda: None) if was_stopped else self.stop.clear

    def _finish(self, d: Drive, status: str, error: str, duration: float) -> None:
        outbox = d.outbox
        error = outbox.masker.text(error)
        warned = d.budget_warnings(commit=False)  # reached by the failing step's calls
        ev = [*d.failure_events, *warned, outbox.make(f"run_{status}", error=error)]
        d.failure_events = []
        self.store.set_status(
            d.run_id, d.token, status, error=error, events=ev, duration_s=duration
        )
        outbox.deliver(ev)
        self.observer.run_finished(status, error)

    def _heartbeat(self, run_id: str, token: int, stop: threading.Event, every: float) -> None:
        """Beat every ``every`` seconds until ``stop`` is set or the lease is lost.

        A beat that fails (the database locked past ``busy_timeout``, a full disk) is
        told once and tried again at the next beat: stopping for good would let the
        run look abandoned to a flowrun that can only judge it by its heartbeat.
        """
        failing = False
        while not stop.wait(every):
            try:
                if not self.store.heartbeat(run_id, token):
                    return  # taken over: the next commit's fencing check reports it
            except LeaseLost:
                return
            except Exception as exc:
                if not failing:
                    _log.warning(
                        "flowrun: warning: run %s: a heartbeat failed, trying again every"
                        " %.3gs: %s",
                        run_id,
                        every,
                        exc,
                    )
                failing = True
            else:
                failing = False
