"""One task, start to finish: attempts, backoff with seeded jitter, the delta it yields.

``run_task`` never raises: it returns a :class:`TaskOutcome` so the coordinator
can save it and carry on with the step. Everything in an outcome (error, output
tails, the delta) and every retry's error is masked by the run's secrets masker
here, the one door text leaves a task by.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from ..jsonvalue import JSONValueError, check, dumps, where
from ..nodes.base import Context, RunScope, TaskError, execute
from ..nodes.command import CommandResult
from ..nodes.tracebacks import Trace
from ..observer import Observer
from ..output import Capture
from ..records import LLMUsage, Task
from ..spec.model import Node, Workflow
from ..store.base import TaskOutput


@dataclass(slots=True)
class Attempt:
    attempt: int
    started_at: float
    duration: float
    error: str | None
    reason: str | None


@dataclass(slots=True)
class TaskOutcome:
    task: Task
    # ok | failed | interrupted (stopped by SIGINT/SIGTERM: resume runs it again) |
    # skipped (never ran: picked up after the budget or a signal)
    status: str
    delta: dict[str, Any] | None
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float = 0.0
    duration: float = 0.0
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    usage: list[LLMUsage] = field(default_factory=list)
    reused: bool = False
    outputs: list[TaskOutput] = field(default_factory=list)  # what each attempt printed
    trace: Trace | None = None  # the last attempt's Python traceback, trimmed


def to_delta(workflow: Workflow, node: Node, raw: Any) -> dict[str, Any]:
    """The state delta a node's raw result stands for."""
    if node.save:
        delta: Any = {node.save: raw}
    elif node.kind in ("python", "set", "llm") or (
        node.kind in ("run", "shell") and node.output == "json"
    ):
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise TaskError(
                f"node returned {type(raw).__name__}, not a mapping of state keys",
                retryable=False,
                reason="output",
            )
        delta = raw
    else:
        return {}
    for k in delta:
        if k not in workflow.state:
            raise TaskError(
                f"node wrote undeclared state key {k!r}", retryable=False, reason="output"
            )
    try:
        for k, v in delta.items():
            try:
                check(v)
            except JSONValueError as exc:
                exc.path = (k, *exc.path)
                raise
        normalised: dict[str, Any] = json.loads(dumps(delta, sort_keys=False, compact=False))
    except JSONValueError as exc:
        raise TaskError(
            f"state key {where(exc.path)}: {exc.problem}" + (f" ({exc.hint})" if exc.hint else ""),
            retryable=False,
            reason="output",
        ) from None
    except (TypeError, ValueError) as exc:
        raise TaskError(
            f"node result is not JSON-serialisable: {exc}", retryable=False, reason="output"
        ) from None
    return normalised


class StepGate:
    """One step's dispatch window (SPEC §3, backpressure; README, durability).

    The coordinator hands a task to the executor only while fewer than
    ``queue_depth`` (at least one) wait to start and fewer than ``max_running +
    queue_depth`` are unsettled: queued, running, or finished with a result the
    coordinator has not committed yet (it calls :meth:`settled` once it has). So
    a kill -9 loses the results of at most ``max_running + queue_depth`` finished
    tasks, however fast tasks finish. Workers report starts and finishes here;
    finished futures are handed back through :meth:`wait`, so waiting costs O(1)
    per task however many are in flight.
    """

    def __init__(self, max_running: int, queue_depth: int) -> None:
        self.max_running = max(1, max_running)
        self.queue_depth = max(0, queue_depth)
        self._cond = threading.Condition()
        self._submitted = self._started = self._settled = 0
        self._finished = 0  # for running(): started and finished
        self._done: list[Future[TaskOutcome]] = []
        self._changed = False

    def full(self) -> bool:
        with self._cond:
            queued = self._submitted - self._started
            unsettled = self._submitted - self._settled
        return queued >= max(1, self.queue_depth) or (
            unsettled >= self.max_running + self.queue_depth
        )

    def submit(
        self, executor: Executor | None, fn: Callable[..., TaskOutcome], *args: Any
    ) -> Future[TaskOutcome]:
        """``executor.submit(fn, *args, gate=self)``, counted; no executor runs it here."""
        with self._cond:
            self._submitted += 1
        try:
            if executor is None:
                future: Future[TaskOutcome] = Future()
                future.set_result(fn(*args, gate=self))
            else:
                future = executor.submit(fn, *args, gate=self)
        except BaseException:
            with self._cond:
                self._submitted -= 1
            raise
        future.add_done_callback(self._completed)
        return future

    def wait(self, timeout: float) -> set[Future[TaskOutcome]]:
        """Wait until a task starts or finishes; return the futures done since last call."""
        with self._cond:
            if not self._done and not self._changed:
                self._cond.wait(timeout)
            done, self._done, self._changed = self._done, [], False
        return set(done)

    def running(self) -> int:
        """How many of the step's tasks are running now (started, not finished)."""
        with self._cond:
            return self._started - self._finished

    # called by run_task on the worker, after the observer heard of it
    def started(self) -> None:
        with self._cond:
            self._started += 1
            self._changed = True
            self._cond.notify_all()

    def finished(self) -> None:
        with self._cond:
            self._finished += 1
            self._changed = True
            self._cond.notify_all()

    # called by the coordinator
    def settled(self, done: Iterable[Future[TaskOutcome]]) -> None:
        """Futures from :meth:`wait` are dealt with: their results are committed."""
        n = sum(not f.cancelled() for f in done)  # a cancelled one settled as it completed
        with self._cond:
            self._settled += n

    def _completed(self, future: Future[TaskOutcome]) -> None:
        with self._cond:
            if future.cancelled():  # it never reached run_task: nothing to run or commit
                self._started += 1
                self._finished += 1
                self._settled += 1
            self._done.append(future)
            self._cond.notify_all()


def run_task(
    workflow: Workflow,
    task: Task,
    state: Mapping[str, Any],
    step: int,
    scope: RunScope,
    observer: Observer,
    gate: StepGate | None = None,
) -> TaskOutcome:
    """Run every attempt of ``task`` on the calling (worker) thread; never raises.

    The observer hears ``task_started`` and ``task_finished`` from this thread, so
    its running count never exceeds the threads actually running tasks.

    A task a worker picks up after the run's budget is spent or a signal arrived does
    not run: it comes back ``skipped``, which the coordinator treats like a future it
    cancelled (not finished, no result saved, run again by ``resume``). The
    coordinator stops dispatching then, but tasks already queued on the executor
    would otherwise start before it gets to cancel them.
    """
    if scope.over_budget.is_set() or scope.stop.is_set():
        if gate is not None:  # no longer queued, and not running either
            gate.started()
            gate.finished()
        return TaskOutcome(task, "skipped", None, started_at=time.time())
    observer.task_started(step, task)
    if gate is not None:
        gate.started()
    t0 = time.perf_counter()
    try:
        out = _attempts(workflow, task, state, step, scope, observer)
    except Exception as exc:  # a bug, not a node failure: still report it as the task's
        out = TaskOutcome(task, "failed", None, [], time.time(), time.perf_counter() - t0)
        out.error = scope.masker.text(f"internal error: {type(exc).__name__}: {exc}")
    try:
        observer.task_finished(
            step, task, out.status, out.duration, len(out.attempts), out.error, False
        )
    finally:
        if gate is not None:
            gate.finished()
    return out


def _attempts(
    workflow: Workflow,
    task: Task,
    state: Mapping[str, Any],
    step: int,
    scope: RunScope,
    observer: Observer,
) -> TaskOutcome:
    node = workflow.nodes[task.node]
    started = time.time()
    t0 = time.perf_counter()
    if task.skip:
        return TaskOutcome(task, "ok", {}, [Attempt(1, started, 0.0, None, None)], started, 0.0)
    policy = node.retry
    mask = scope.masker
    rng: random.Random | None = None  # seeded on the first retry: most tasks never need it
    attempts: list[Attempt] = []
    usage: list[LLMUsage] = []
    outputs: list[TaskOutput] = []
    attempt = 0
    while True:
        attempt += 1
        stdout = stderr = None
        ctx = Context(scope.run_id, step, node.name, attempt, task.item, task.index, scope)
        if node.kind in ("run", "shell", "python"):  # the kinds that can print
            ctx.output = _capture(scope, observer, step, task, attempt)
        a0 = time.perf_counter()
        a_start = time.time()
        try:
            raw = execute(node, state, ctx, node.timeout)
            if isinstance(raw, CommandResult):
                stdout, stderr, raw = mask.text(raw.stdout), mask.text(raw.stderr), raw.value
            delta = mask.value(to_delta(workflow, node, raw))
            usage.extend(ctx.usage)
            _keep_output(ctx, task, outputs)
            attempts.append(Attempt(attempt, a_start, time.perf_counter() - a0, None, None))
            return TaskOutcome(
                task,
                "ok",
                delta,
                attempts,
                started,
                time.perf_counter() - t0,
                None,
                stdout,
                stderr,
                usage,
                outputs=outputs,
            )
        except Exception as caught:
            exc = (
                caught
                if isinstance(caught, TaskError)
                else TaskError(f"{type(caught).__name__}: {caught}")
            )
            usage.extend(ctx.usage)
            _keep_output(ctx, task, outputs)
            if exc.stdout is not None or exc.stderr is not None:
                # else a result the delta refused
                stdout, stderr = mask.optional(exc.stdout), mask.optional(exc.stderr)
            err = mask.text(str(exc))
            attempts.append(Attempt(attempt, a_start, time.perf_counter() - a0, err, exc.reason))
            # no new attempt once the run is stopping or its budget is spent
            last = attempt >= policy.max_attempts or not exc.retryable
            stopped = scope.stop.is_set()
            if last or stopped or scope.over_budget.is_set():
                # a signal that cut the attempt short, or the retry it would have had,
                # interrupted the task; it did not fail (resume runs it again)
                interrupted = stopped and (exc.reason == "interrupted" or not last)
                return TaskOutcome(
                    task,
                    "interrupted" if interrupted else "failed",
                    None,
                    attempts,
                    started,
                    time.perf_counter() - t0,
                    err,
                    stdout,
                    stderr,
                    usage,
                    outputs=outputs,
                    trace=exc.trace,
                )
            if rng is None:
                rng = random.Random(f"{scope.run_id}:{task.key}")
            delay = policy.delay(attempt, rng.random())
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            observer.task_retried(step, task, attempt, exc.reason, err, delay)
            if scope.stop.wait(delay):
                return TaskOutcome(
                    task,
                    "interrupted",
                    None,
                    attempts,
                    started,
                    time.perf_counter() - t0,
                    f"{err} (interrupted before retry)",
                    stdout,
                    stderr,
                    usage,
                    outputs=outputs,
                    trace=exc.trace,
                )


def _capture(scope: RunScope, observer: Observer, step: int, task: Task, attempt: int) -> Capture:
    """The attempt's output capture; complete lines go to the observer as they end."""
    mask = scope.masker.text if scope.masker else None
    if not observer.wants_output():
        return Capture(scope.output_limit, mask=mask)

    def on_lines(stream: str, lines: list[str]) -> None:
        observer.task_output(step, task, attempt, stream, lines)

    return Capture(scope.output_limit, on_lines, mask)


def _keep_output(ctx: Context, task: Task, outputs: list[TaskOutput]) -> None:
    if ctx.output is None:
        return
    frozen = ctx.output.freeze(ctx.step, task.key, ctx.node, ctx.index, ctx.attempt)
    if frozen is not None:
        outputs.append(frozen)
