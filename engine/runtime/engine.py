"""The superstep engine: dispatch a step's tasks, merge in tree order, commit atomically.

The engine is the coordinator. It owns the state, talks to the store from one
thread, and hands tasks to any ``concurrent.futures.Executor`` (a thread pool by
default). Task payloads and results are JSON-able, so a distributed executor can
take the pool's place (SPEC §9).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
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
from ..nodes.base import RunScope
from ..observer import Observer
from ..output import DEFAULT_LIMIT
from ..records import Task
from ..report import display_status
from ..secrets import run_masker
from ..spec.model import Workflow
from ..store.base import Event, StepCommit, Store, TaskResult
from ..store.leases import stale_after
from . import frontier as fr
from .ordering import idempotency_key, state_digest, step_digest, task_label, value_digest
from .orphans import ProcLog, take_over
from .reducers import AppendLog, ReduceError, reduce
from .task import Attempt, StepGate, TaskOutcome, run_task
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
        self.stop = stop or threading.Event()
        self.after_task = after_task
        self.stop_reason: str | None = None
        # the run being driven (set by _drive; read by signal handlers and hooks)
        self.run_id = ""
        self._elapsed: Callable[[], float] = lambda: 0.0
        self._failure_events: list[Event] = []
        self.token = 0
        self.step = 0
        self.scope = RunScope(Path("."), "")
        self._gate: StepGate | None = None  # the current step's

    def running_tasks(self) -> int:
        """How many tasks are running right now (any thread may ask)."""
        gate = self._gate
        return 0 if gate is None else gate.running()

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

    # the loop -------------------------------------------------------------------
    def _drive(
        self, wf: Workflow, run_id: str, *, resumed: bool, force: bool, continuing: bool = False
    ) -> RunResult:
        store = self.store
        # read here, not in the thread: a bad FLOWRUN_LEASE_STALE_S is the caller's error
        beat_every = stale_after() / HEARTBEAT_PER_WINDOW
        # a forced-out owner, and commands a dead owner left running, die first
        token = take_over(store, run_id, force=force)
        t_start = time.perf_counter()
        self._elapsed = lambda: prior_duration + time.perf_counter() - t_start
        rec = store.get_run(run_id)
        found = None
        if continuing:  # the lease is ours: a `running` run's owner was gone
            found = display_status(rec.status, live=False)
            self.observer.run_found(run_id, found, rec.step)
        prior_duration = rec.duration_s
        masker = run_masker(wf, store=store)  # the secrets of this drive's environment
        outbox = Outbox(store, run_id, self.sinks, masker)
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(run_id, token, beat_stop, beat_every),
            name="flowrun-heartbeat",
            daemon=True,
        )
        scope = RunScope(wf.base_dir, run_id, stop=self.stop, grace_s=self.settings.grace_s)
        scope.settings.update(self.settings.extra)
        scope.output_limit = self.settings.output_limit
        scope.masker = masker
        self.scope = scope
        max_cost = self.settings.max_cost_usd  # given now: it is the run's budget from now on
        if max_cost is not None:
            store.set_max_cost(run_id, token, max_cost)
        else:  # a plain resume keeps the budget the run was given, else the workflow's
            max_cost = rec.max_cost_usd if rec.max_cost_usd is not None else wf.config.max_cost_usd
        self.ledger = Ledger(
            store, run_id, self.settings.prices, max_cost, self.observer, scope.over_budget
        )
        scope.usage_listener = self.ledger.record  # ledger rows are written as replies arrive
        scope.proc_log = ProcLog(store, run_id, token)  # commands in flight, for a takeover
        self.run_id = run_id
        self.token = token
        self.workflow = wf
        self.outbox = outbox
        own_executor = self.executor is None
        max_conc = self.settings.max_concurrency or wf.config.max_concurrency
        executor = self.executor or ThreadPoolExecutor(
            max_workers=max_conc, thread_name_prefix="flowrun-task"
        )
        try:
            beat.start()  # inside the try: whatever fails, the finally stops it and the lease goes
            outbox.deliver_pending()
            cp = store.load_latest(run_id)
            state = cp.state
            if cp.status == "succeeded":
                return RunResult(
                    run_id,
                    "succeeded",
                    cp.step,
                    state,
                    prior_duration,
                    digest=rec.state_digest,
                    found=found,
                )
            step = cp.step
            frontier = cp.frontier
            pending_nodes = [e["node"] for e in [*frontier["entries"], *frontier.get("held", [])]]
            missing = sorted({n for n in pending_nodes if n not in wf.nodes})
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
            # held as stored (dicts with sorted keys), like the keys loaded from the store
            added = {
                k: json.loads(dumps(v)) for k, v in wf.initial_state().items() if k not in state
            }
            if added:  # resume --workflow with new state keys: they start at their defaults
                store.add_state_keys(run_id, token, added)
                state.update(added)
            resumed = resumed and outbox.seq > 0  # a fork's first drive is its start
            started = [
                outbox.make(
                    "run_resumed" if resumed else "run_started",
                    step=step,
                    data={"workflow": wf.name},
                )
            ]
            store.set_status(run_id, token, "running", events=started)
            outbox.deliver(started)
            self.observer.run_started(run_id, wf.name, step, resumed)
            texts = {k: dumps(v) for k, v in state.items()}
            digests = {k: value_digest(t) for k, t in texts.items()}
            log = AppendLog()  # append/extend keys stored as what each step added
            max_steps = self.settings.max_steps or wf.config.max_steps
            status, error = "succeeded", None
            while frontier["entries"]:
                self.step = step
                self._budget_warnings()
                self.ledger.check()  # over budget: fail before dispatching anything new
                if step >= max_steps:
                    raise RunFailed(
                        f"the run reached max_steps ({max_steps}) without ending",
                        hint="raise config.max_steps, or check routes for a loop without exit",
                    )
                step_t0 = time.perf_counter()
                try:
                    tasks = fr.expand(wf, frontier["entries"], state, run_id, step)
                except fr.RouteError as exc:
                    raise RunFailed(str(exc)) from None
                self.observer.step_started(step, tasks)
                self.step = step
                outcomes, unsaved = self._run_step(
                    wf, executor, tasks, state, step, max_conc, saved if step == cp.step else {}
                )
                try:
                    new_state, changed, appended, grew = self._merge(
                        wf, outcomes, state, texts, log, step
                    )
                    nxt = self._advance(wf, tasks, frontier, new_state, step)
                except RunFailed:  # the step is not committed: keep what finished for resume
                    store.save_task_results(run_id, token, unsaved)
                    raise
                for k in changed:
                    texts[k] = changed[k]
                    digests[k] = grew.get(k) or value_digest(changed[k])
                for k in appended:  # its text is not kept: only a snapshot compares it
                    digests[k] = grew[k]
                sdig = state_digest(digests)
                keys = [t.key for t in tasks]
                events = self._task_events(outbox, step, outcomes)
                done = not nxt["entries"]
                events.append(
                    outbox.make(
                        "step_committed",
                        step=step,
                        duration=time.perf_counter() - step_t0,
                        data={"tasks": len(tasks)},
                    )
                )
                if done:
                    events.append(outbox.make("run_succeeded", step=step))
                store.save_step(
                    run_id,
                    token,
                    StepCommit(
                        step=step,
                        idempotency_key=idempotency_key(run_id, step, keys),
                        digest=step_digest(step, keys, sdig),
                        changed=changed,
                        appended=appended,
                        frontier=nxt,
                        tasks=[{"key": t.key, "node": t.node, "index": t.index} for t in tasks],
                        events=events,
                        status="succeeded" if done else "running",
                        state_digest=sdig,
                        # the commit's events and state hold all of a successful result
                        # but what it printed: only results with output need a row
                        results=[r for r in unsaved if r.stdout or r.stderr or r.outputs],
                        duration_s=prior_duration + time.perf_counter() - t_start,
                    ),
                )
                outbox.deliver(events)
                self.observer.step_committed(step, time.perf_counter() - step_t0)
                state, frontier, step = new_state, nxt, step + 1
            self.observer.run_finished(status, error)
            return RunResult(
                run_id,
                status,
                step,
                state,
                prior_duration + time.perf_counter() - t_start,
                digest=store.get_run(run_id).state_digest,
                found=found,
            )
        except Interrupted as exc:
            self._finish(run_id, token, "interrupted", exc.message, outbox)
            raise
        except RunFailed as exc:
            self._finish(run_id, token, "failed", exc.message, outbox)
            raise
        except FlowrunError as exc:  # the store failed or the lease was lost: nothing to write
            self.observer.run_finished("failed", exc.message)
            raise
        finally:
            beat_stop.set()
            if own_executor:
                executor.shutdown(wait=False, cancel_futures=True)
            try:
                outbox.flush()
                store.release_lease(run_id, token)
            except FlowrunError:
                pass
            for s in self.sinks:
                s.close()

    def _budget_warnings(self, *, commit: bool = True) -> list[Event]:
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

    def _finish(self, run_id: str, token: int, status: str, error: str, outbox: Outbox) -> None:
        error = outbox.masker.text(error)
        warned = self._budget_warnings(commit=False)  # reached by the failing step's calls
        ev = [*self._failure_events, *warned, outbox.make(f"run_{status}", error=error)]
        self._failure_events = []
        self.store.set_status(
            run_id, token, status, error=error, events=ev, duration_s=self._elapsed()
        )
        outbox.deliver(ev)
        self.observer.run_finished(status, error)

    def _advance(
        self,
        wf: Workflow,
        tasks: list[Task],
        frontier: dict[str, Any],
        state: dict[str, Any],
        step: int,
    ) -> dict[str, Any]:
        try:
            nxt = fr.advance(wf, tasks, frontier, state, self.run_id, step)
        except fr.RouteError as exc:
            raise RunFailed(str(exc)) from None
        if not nxt["entries"] and nxt["held"]:
            waiting = ", ".join(h["node"] for h in nxt["held"])
            raise RunFailed(
                f"join {waiting} can never run: a node it needs did not run",
                hint="check the needs: lists against the routes taken",
            )
        return nxt

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

    # one step -------------------------------------------------------------------
    def _run_step(
        self,
        wf: Workflow,
        executor: Executor,
        tasks: list[Task],
        state: dict[str, Any],
        step: int,
        max_conc: int,
        saved: dict[str, TaskResult],
    ) -> tuple[list[TaskOutcome], list[TaskResult]]:
        """Run a step's tasks (reusing ``saved`` results); return their outcomes and the
        results still to be saved (the step's last ones, which ride in its commit)."""
        store, run_id = self.store, self.run_id
        snapshot = MappingProxyType(state)
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        queue_depth = self.settings.queue_depth
        if queue_depth is None:
            queue_depth = wf.config.queue_depth
        gate = self._gate = StepGate(max_conc, queue_depth)
        pending: dict[Future[TaskOutcome], int] = {}
        failed: list[TaskOutcome] = []
        unsaved: list[TaskResult] = []
        dispatched = False
        # A lone python/set task runs on this thread: a pool hand-off would only add
        # latency (both kinds watch the stop flag, so signals still work).
        inline = (
            self.executor is None
            and len(tasks) == 1
            and wf.nodes[tasks[0].node].kind in ("python", "set")
        )

        def collect(done: set[Future[TaskOutcome]]) -> None:
            finished = []
            for f in done:
                i = pending.pop(f)
                if f.cancelled() or f.result().status == "skipped":  # budget spent, or a signal
                    self.observer.task_dropped(step, tasks[i])
                    continue  # never ran: resume runs it
                out = f.result()
                outcomes[i] = out
                finished.append(out)
                if out.status == "failed":  # an interrupted one is no failure of the step
                    failed.append(out)
            results = [self._result(step, out) for out in finished]
            # Results that finished together are saved in one transaction (a group
            # commit); only then do their tasks leave the gate's window, which bounds
            # the finished results a kill -9 can lose. The step's last results ride in
            # the step's own commit (nothing is dispatched in between).
            over = self.scope.over_budget.is_set()
            if dispatched and not pending and not failed and not self.stop.is_set() and not over:
                unsaved.extend(results)
            else:
                store.save_task_results(run_id, self.token, results)
            gate.settled(done)
            for out in finished:
                self._finished(out)

        def save_unsaved() -> None:  # the step will not be committed: no commit carries them
            if unsaved:
                store.save_task_results(run_id, self.token, unsaved)
                unsaved.clear()

        def interrupt() -> None:
            save_unsaved()
            self._interrupt(pending, collect)

        def wait_some() -> None:
            done = gate.wait(0.2)  # a task started or finished (or time to look at stop)
            if done:
                collect(done)
            self._budget_warnings()
            if self.stop.is_set():
                interrupt()
            if self.scope.over_budget.is_set():
                for f in list(pending):
                    f.cancel()  # tasks still queued never start once the budget is spent

        for i, t in enumerate(tasks):
            r = saved.get(t.key)
            if r is not None:
                outcomes[i] = TaskOutcome(
                    t,
                    "ok",
                    r.delta or {},
                    [Attempt(r.attempts, r.started_at, r.duration_s, None, None)],
                    r.started_at,
                    r.duration_s,
                    reused=True,
                )
                self.observer.task_finished(step, t, "ok", r.duration_s, r.attempts, None, True)
                continue
            if self.stop.is_set():
                interrupt()
            if self.scope.over_budget.is_set():
                break  # no new task once the cost ledger passed the budget
            if gate.full():
                self.observer.backpressure()
                while gate.full():
                    wait_some()
                if self.scope.over_budget.is_set():
                    break  # the budget ran out while we waited for room
            done = gate.wait(0)  # EAGER
            if done:
                collect(done)
            self.observer.task_queued(step, t)
            f = gate.submit(
                None if inline else executor,
                run_task,
                *(wf, t, snapshot, step, self.scope, self.observer),
            )
            pending[f] = i
        dispatched = True
        while pending:
            wait_some()
        if self.stop.is_set():
            interrupt()
        if self.scope.over_budget.is_set():
            save_unsaved()
            raise self.ledger.exceeded()  # finished results are kept for the resume
        if failed:
            # the failed step is not committed, so its task events go with the failure
            self._failure_events = self._task_events(self.outbox, step, failed)
            culprit = min(failed, key=lambda o: tasks.index(o.task))
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise RunFailed(
                f"node {task_label(culprit.task)!r} failed after"
                f" {len(culprit.attempts)} attempt(s): {culprit.error}{more}",
                hint="fix the cause, then `flowrun resume` retries this step"
                + (f" (`flowrun show {run_id}` has its traceback)" if culprit.trace else ""),
            )
        return [o for o in outcomes if o is not None], unsaved

    def _interrupt(
        self,
        pending: dict[Future[TaskOutcome], int],
        collect: Callable[[set[Future[TaskOutcome]]], None],
    ) -> None:
        """Stop dispatching; give running tasks a grace period, then kill them."""
        self.scope.stop.set()
        for f in list(pending):
            f.cancel()  # tasks still queued never start (run_task skips any it picks up)
        deadline = time.monotonic() + self.settings.grace_s
        # a second signal sets abort: stop waiting for the grace period at once
        while pending and time.monotonic() < deadline and not self.scope.abort.is_set():
            done, _ = wait(list(pending), timeout=0.1, return_when=FIRST_COMPLETED)
            collect(done)
        if pending:
            self.scope.abort.set()
            self.scope.kill_all()
            done, _ = wait(list(pending), timeout=2.0)
            collect(done)
        raise Interrupted(
            f"interrupted by {self.stop_reason or 'a signal'}; finished tasks were saved",
            hint=f"continue with `flowrun resume {self.run_id}`",
        )

    def _result(self, step: int, out: TaskOutcome) -> TaskResult:
        t = out.task
        return TaskResult(
            step=step,
            order_key=t.key,
            node=t.node,
            index=t.index,
            status=out.status,
            delta=out.delta,
            attempts=len(out.attempts),
            started_at=out.started_at,
            duration_s=out.duration,
            error=out.error,
            stdout=out.stdout,
            stderr=out.stderr,
            outputs=tuple(out.outputs),
            traceback=None if out.trace is None else out.trace.text,
            error_file=None if out.trace is None else out.trace.file,
            error_line=None if out.trace is None else out.trace.line,
        )

    def _finished(self, out: TaskOutcome) -> None:
        # observer.task_finished was called by run_task on the worker thread
        if self.after_task is not None:
            self.after_task(self, out)

    def _task_events(self, outbox: Outbox, step: int, outcomes: list[TaskOutcome]) -> list[Event]:
        events = []
        for o in outcomes:
            node = o.task.node
            for a in o.attempts[:-1]:  # the last attempt was not retried
                if a.error is not None:
                    events.append(
                        outbox.make(
                            "task_retried",
                            step=step,
                            node=node,
                            attempt=a.attempt,
                            duration=a.duration,
                            error=a.error,
                            ts=a.started_at,
                            data={"index": o.task.index},
                        )
                    )
            events.append(
                outbox.make(
                    "task_succeeded" if o.status == "ok" else "task_failed",
                    step=step,
                    node=node,
                    attempt=o.attempts[-1].attempt if o.attempts else 1,
                    duration=o.duration,
                    error=o.error,
                    ts=o.started_at + o.duration,
                    data={"index": o.task.index, "key": o.task.key},
                )
            )
        return events

    def _merge(
        self,
        wf: Workflow,
        outcomes: list[TaskOutcome],
        state: dict[str, Any],
        texts: dict[str, str],
        log: AppendLog,
        step: int,
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, str], dict[str, str]]:
        """Merge the step's deltas in task order.

        Returns the new state, the JSON of the keys stored whole, the JSON of the
        items each append/extend key stored as a delta gained, and the digests of
        those delta keys.
        """
        policy = self.settings.conflict_policy or wf.config.conflict_policy
        new_state = dict(state)
        owned: set[str] = set()
        writer: dict[str, Task] = {}  # replace key -> the task that wrote it
        touched: list[str] = []
        grown: dict[str, int] = {}  # append/extend key -> its length before this step
        for o in outcomes:
            for k, v in (o.delta or {}).items():
                reducer = wf.state[k].reducer
                if reducer == "replace":
                    if k in writer:
                        nodes = (writer[k].node, o.task.node)
                        self.observer.merge_conflict(k, nodes)
                        if policy == "fail":
                            a, b = task_label(writer[k]), task_label(o.task)
                            raise RunFailed(
                                f"merge conflict on state key {k!r}: written by {a!r}"
                                f" and {b!r} in step {step}",
                                hint="give the key a reducer (append, merge, …) or set"
                                " config.conflict_policy: last_writer_wins",
                            )
                    writer[k] = o.task
                if reducer in ("append", "extend") and k not in grown:
                    before = new_state[k]
                    grown[k] = len(before) if isinstance(before, list) else -1
                try:
                    new_state[k] = reduce(reducer, new_state[k], v, k, owned=k in owned)
                except ReduceError as exc:
                    raise RunFailed(f"node {o.task.node!r}: {exc}") from None
                if reducer in ("append", "extend", "merge"):
                    owned.add(k)
                if k not in touched:
                    touched.append(k)
        changed, appended, digests = {}, {}, {}
        extended: dict[str, tuple[list[Any], list[Any]]] = {}
        for k in touched:
            start = grown.get(k, -1)
            if start >= 0 and not log.snapshot_due(k):
                if len(new_state[k]) == start:
                    continue  # extended by nothing
                items = dumps(new_state[k][start:])
                if "{" in items:  # hold dicts as stored (sorted keys), as below
                    new_state[k][start:] = json.loads(items)
                appended[k] = items
                digests[k] = log.delta(k, items, was_empty=start == 0)
                extended[k] = (state[k], new_state[k])  # the same items, then the new ones
                continue
            text = dumps(new_state[k])
            if "{" in text:  # hold dicts as stored (sorted keys), so a resume sees the same
                new_state[k] = json.loads(text)
            if start >= 0:
                digests[k] = log.snapshot(k, text)
            if text != texts[k]:
                changed[k] = text
        self.scope.grown = extended  # read-only views freeze only the new items
        return new_state, changed, appended, digests
