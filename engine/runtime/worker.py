"""The worker's side of a task: ``run_spec(spec) -> TaskReport``, attempts and backoff.

``run_spec`` is a module-level function of one picklable argument, so any
``concurrent.futures.Executor`` can run it. It never raises: a failure is a report.
It compiles the workflow from its text once per worker process and digest (or finds
it installed: :func:`install`), keeps one :class:`RunScope` per drive, and sends
what must reach the coordinator while it runs on the spec's effects sink. Every
text in a report, and every retry's error, is masked by the run's secrets here, the
one door text leaves a task by.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any, cast

from ..nodes import python
from ..nodes.base import Context, RunScope, TaskError
from ..nodes.registry import Printed, kind_of, to_delta
from ..nodes.tracebacks import Trace
from ..output import Capture
from ..records import LLMUsage
from ..secrets import Masker
from ..spec.model import Workflow
from ..store.base import TaskOutput
from ..store.leases import HOST, me, start_time
from . import pool
from .effects import (
    Effect,
    EffectNotSent,
    EffectRefused,
    OutputLines,
    ProcEnded,
    ProcStarted,
    TaskRetried,
    TaskStarted,
    UsageReported,
)
from .messages import Attempt, TaskReport, TaskSpec, WorkflowRef

MAX_DRIVES = 16  # drives whose scopes a worker keeps (a pool outlives none of them)

_lock = threading.Lock()
_prefix = os.urandom(8).hex()  # this process's, for its execution ids
_executions = itertools.count()
_workflows: dict[tuple[str, str], Workflow] = {}
_scopes: OrderedDict[str, RunScope] = OrderedDict()


def _new_prefix() -> None:
    """In a forked child: its execution ids must not repeat the parent's."""
    global _prefix, _executions
    _prefix, _executions = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_new_prefix)


def execution_id() -> str:
    """A new execution's id: 32 hex digits, unique across processes (a random prefix per
    process and a count in it; a system call per id was a tenth of a lone task's cost)."""
    return f"{_prefix}{next(_executions):016x}"


def install(workflow: Workflow) -> WorkflowRef:
    """Make ``workflow`` known to this process's workers; return how specs name it."""
    ref = WorkflowRef(workflow.digest, workflow.path)
    with _lock:
        _workflows[ref.digest, ref.path] = workflow
    return ref


def installed(ref: WorkflowRef) -> Workflow:
    """The workflow ``ref`` names, compiled from its text if this worker has not yet."""
    return _workflow(ref)


def _workflow(ref: WorkflowRef) -> Workflow:
    wf = _workflows.get((ref.digest, ref.path))  # a dict read needs no lock
    if wf is not None:
        return wf
    if ref.text is None:
        raise TaskError(
            f"the workflow {ref.path} (digest {ref.digest[:12]}) is not installed on this worker",
            retryable=False,
            reason="worker",
        )
    from ..spec import load_workflow

    wf = load_workflow(ref.path, text=ref.text)
    with _lock:
        _workflows[ref.digest, ref.path] = wf
    return wf


def _scope(spec: TaskSpec, wf: Workflow) -> RunScope:
    scope = _scopes.get(spec.drive)  # a dict read needs no lock
    if scope is not None:
        scope.grown = spec.grown
        return scope
    with _lock:
        scope = _scopes.get(spec.drive)
        if scope is None:
            ctl, s = spec.control, spec.settings
            scope = RunScope(
                wf.base_dir,
                spec.run_id,
                stop=ctl.stop,
                abort=ctl.abort,
                over_budget=ctl.over_budget,
                grace_s=s.grace_s,
            )
            scope.settings.update(s.extra)
            scope.output_limit = s.output_limit
            scope.masker = Masker(s.secrets)
            _scopes[spec.drive] = scope
            while len(_scopes) > MAX_DRIVES:
                _scopes.popitem(last=False)
        scope.grown = spec.grown
    return scope


def forget(drive: str) -> None:
    """The drive is over: drop its scope (threads; a process pool ends with its drive)."""
    with _lock:
        _scopes.pop(drive, None)


def kill_all_local() -> None:
    """Kill the process groups of every command running in this process."""
    with _lock:
        scopes = list(_scopes.values())
    for scope in scopes:
        scope.kill_all()


def kill_local(drive: str) -> None:
    """Kill the process groups of the drive's commands running in this process."""
    with _lock:
        scope = _scopes.get(drive)
    if scope is not None:
        scope.kill_all()


class Emitter:
    """One execution's effects: numbered, marked with the execution's id, sent on the
    drive's sink (the ``ctx.effects`` of its attempts). Durable ones return once the
    coordinator applied them.

    ``count`` is what the report tells the coordinator to wait for: the effects the
    channel took. One it did not take (closed, its queue gone) is not counted, so the
    coordinator never waits for an effect that cannot come; one that is not durable is
    then dropped (a live line is not worth failing the task for)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        # a re-run of the task (its worker died) is another execution
        self.execution = execution_id()
        self.pid = os.getpid()
        self.seq = 0  # numbers handed out
        self.count = 0  # effects the channel took
        self.calls = 0
        self.usage: list[UsageReported] = []
        self._lock = threading.Lock()

    def _seq(self) -> int:
        with self._lock:
            self.seq += 1
            return self.seq

    def _sent(self) -> None:
        with self._lock:
            self.count += 1

    def send(self, effect: Effect) -> None:
        """Send an effect that is not durable; a closed channel's is dropped, uncounted."""
        try:
            self.spec.effects.send(effect)
        except EffectNotSent:
            return
        self._sent()

    def durable(self, effect: Effect) -> None:
        try:
            self.spec.effects.send_durable(effect, self.spec.control)
        except EffectNotSent as exc:  # the coordinator never saw it
            raise TaskError(str(exc), retryable=False, reason="store") from None
        except EffectRefused as exc:  # it arrived; the coordinator could not apply it
            self._sent()
            raise TaskError(str(exc), retryable=False, reason="store") from None
        self._sent()

    def report(
        self,
        status: str,
        delta: dict[str, Any] | None,
        attempts: tuple[Attempt, ...],
        started_at: float,
        duration: float,
        error: str | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
        outputs: tuple[TaskOutput, ...] = (),
        trace: Trace | None = None,
    ) -> TaskReport:
        """The execution's report, with what every report carries: its effects count
        (the effects sent so far: a report is made last), usage and worker."""
        with self._lock:
            count, usage = self.count, tuple(self.usage)
        return TaskReport(
            self.spec.task,
            status,
            delta,
            attempts,
            started_at,
            duration,
            error,
            stdout,
            stderr,
            usage,
            outputs,
            trace,
            count,
            HOST,
            self.pid,
            execution=self.execution,
        )

    def started(self) -> None:
        s = self.spec
        self.send(
            TaskStarted(s.step, s.task.key, self._seq(), HOST, self.pid, execution=self.execution)
        )

    def retried(self, attempt: int, reason: str, error: str, delay: float) -> None:
        s = self.spec
        effect = TaskRetried(
            s.step, s.task.key, self._seq(), attempt, reason, error, delay, execution=self.execution
        )
        self.send(effect)

    def lines(self, attempt: int) -> Callable[[str, list[str]], None]:
        s = self.spec

        def on_lines(stream: str, lines: list[str]) -> None:
            seq = self._seq()
            effect = OutputLines(
                s.step, s.task.key, seq, attempt, stream, tuple(lines), execution=self.execution
            )
            self.send(effect)

        return on_lines

    # TaskEffects, for the attempts' contexts
    def usage_of(self, ctx: Context, usage: LLMUsage) -> UsageReported:
        """The effect of a billed call; the report carries it too, sent or not."""
        with self._lock:
            self.seq += 1
            self.calls += 1
            effect = UsageReported(
                ctx.step,
                self.spec.task.key,
                self.seq,
                self.calls,
                ctx.node,
                ctx.index,
                usage,
                execution=self.execution,
            )
            self.usage.append(effect)
        return effect

    def proc_started(self, ctx: Context, pid: int) -> str | None:
        started = start_time(pid)
        here = me()
        if started is None or here.start is None:
            return None  # no /proc: a takeover could not tell this process from another
        proc_id = f"{here.host}:{pid}:{started}"
        s = self.spec
        effect = ProcStarted(
            s.step,
            s.task.key,
            self._seq(),
            proc_id,
            ctx.node,
            here.host,
            here.pidns,
            here.boot,
            pid,
            pid,  # started with start_new_session: it leads its group
            started,
            time.time(),
            execution=self.execution,
        )
        self.durable(effect)
        return proc_id

    def proc_ended(self, ctx: Context, proc_id: str) -> None:
        s = self.spec
        self.send(ProcEnded(s.step, s.task.key, self._seq(), proc_id, execution=self.execution))


class _Effects:
    """``ctx.effects``: the TaskEffects protocol over an :class:`Emitter`."""

    __slots__ = ("emitter",)

    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter

    def usage(self, ctx: Context, usage: LLMUsage) -> None:
        self.emitter.durable(self.emitter.usage_of(ctx, usage))

    def proc_started(self, ctx: Context, pid: int) -> str | None:
        return self.emitter.proc_started(ctx, pid)

    def proc_ended(self, ctx: Context, proc_id: str) -> None:
        self.emitter.proc_ended(ctx, proc_id)


def run_spec(spec: TaskSpec) -> TaskReport:
    """Run every attempt of ``spec.task`` here; never raises.

    A task a worker picks up after the run's budget is spent or a signal arrived does
    not run: it comes back ``skipped``, which the coordinator treats like a future it
    cancelled (not finished, no result saved, run again by ``resume``). The
    coordinator stops dispatching then, but tasks already queued on the executor
    would otherwise start before it gets to cancel them.

    On a thread of the ``threads`` executor's pool, a python call runs on this thread
    itself; should it be abandoned, the task carries on on a new thread of the pool,
    from the attempt that raised (:func:`_drive`).
    """
    task, ctl = spec.task, spec.control
    if ctl.over_budget.is_set() or ctl.stop.is_set():
        return TaskReport(task, "skipped", None, started_at=time.time())
    emitter = Emitter(spec)
    t0 = time.perf_counter()
    started = time.time()
    scope: RunScope | None = None
    try:
        wf = _workflow(spec.workflow)
        scope = _scope(spec, wf)
        emitter.started()
        return _drive(spec, wf, scope, emitter, _attempts(spec, wf, scope, emitter))
    except TaskError as exc:  # the worker cannot run it (no workflow)
        error = str(exc)
    except Exception as exc:  # a bug, not a node failure: still the task's
        error = _internal(spec, scope, exc)
    return emitter.report("failed", None, (), started, time.perf_counter() - t0, error)


def _internal(spec: TaskSpec, scope: RunScope | None, exc: Exception) -> str:
    masker = scope.masker if scope is not None else Masker(spec.settings.secrets)
    return masker.text(f"internal error: {type(exc).__name__}: {exc}")


Attempts = Generator[Context, Any, TaskReport]  # yields each attempt's call, is sent its result


def _drive(
    spec: TaskSpec,
    wf: Workflow,
    scope: RunScope,
    emitter: Emitter,
    steps: Attempts,
    thrown: TaskError | None = None,
) -> TaskReport:
    """Make the calls ``steps`` asks for until it gives the report (``thrown``: the
    error the call it waits on raised, as a thread taking the task over sees it)."""
    node = wf.nodes[spec.task.node]
    kind = kind_of(node)
    carry_on = pool.carry_on_here()
    if carry_on is not None:

        def take_over(error: TaskError) -> None:
            def rest() -> TaskReport:
                try:
                    return _drive(spec, wf, scope, emitter, steps, error)
                except Exception as exc:
                    return emitter.report(
                        "failed", None, (), time.time(), 0.0, _internal(spec, scope, exc)
                    )

            carry_on(rest)

        python.carry_on_with(take_over)
    try:
        ctx = next(steps) if thrown is None else steps.throw(thrown)
        while True:
            try:
                raw = kind.run(node, spec.state, ctx, node.timeout)
            except Exception as exc:
                ctx = steps.throw(exc)
            else:
                ctx = steps.send(raw)
    except StopIteration as done:
        return cast(TaskReport, done.value)
    finally:
        if carry_on is not None:
            python.carry_on_with(None)


def _attempts(spec: TaskSpec, wf: Workflow, scope: RunScope, emitter: Emitter) -> Attempts:
    """Every attempt of the task: yields each attempt's context for its call (made by
    :func:`_drive`), is sent what the call returned or thrown what it raised."""
    task = spec.task
    node = wf.nodes[task.node]
    started = time.time()
    t0 = time.perf_counter()
    if task.skip:
        return emitter.report("ok", {}, (Attempt(1, started, 0.0, None, None),), started, 0.0)
    kind = kind_of(node)
    policy = node.retry
    mask = scope.masker
    effects = _Effects(emitter)
    rng: random.Random | None = None  # seeded on the first retry: most tasks never need it
    attempts: list[Attempt] = []
    outputs: list[TaskOutput] = []
    attempt = 0
    while True:
        attempt += 1
        stdout = stderr = None
        ctx = Context(
            spec.run_id,
            spec.step,
            node.name,
            attempt,
            task.item,
            task.index,
            scope,
            effects=effects,
        )
        if kind.prints:
            ctx.output = _capture(spec, scope, emitter, attempt)
        a0 = time.perf_counter()
        a_start = time.time()
        try:
            raw = yield ctx  # kind.run(node, spec.state, ctx, node.timeout)
            if isinstance(raw, Printed):
                stdout, stderr, raw = mask.text(raw.stdout), mask.text(raw.stderr), raw.value
            delta = mask.value(to_delta(wf, node, raw))
            _keep_output(ctx, task.key, outputs)
            attempts.append(Attempt(attempt, a_start, time.perf_counter() - a0, None, None))
            return emitter.report(
                "ok",
                delta,
                tuple(attempts),
                started,
                time.perf_counter() - t0,
                None,
                stdout,
                stderr,
                tuple(outputs),
            )
        except Exception as caught:
            exc = (
                caught
                if isinstance(caught, TaskError)
                else TaskError(f"{type(caught).__name__}: {caught}")
            )
            _keep_output(ctx, task.key, outputs)
            if exc.stdout is not None or exc.stderr is not None:
                # else a result the delta refused
                stdout, stderr = mask.optional(exc.stdout), mask.optional(exc.stderr)
            err = mask.text(str(exc))
            attempts.append(Attempt(attempt, a_start, time.perf_counter() - a0, err, exc.reason))
            # no new attempt once the run is stopping or its budget is spent
            last = attempt >= policy.max_attempts or not exc.retryable
            stopped = scope.stop.is_set()
            interrupted = False
            if last or stopped or scope.over_budget.is_set():
                # a signal that cut the attempt short, or the retry it would have had,
                # interrupted the task; it did not fail (resume runs it again)
                interrupted = stopped and (exc.reason == "interrupted" or not last)
            else:
                if rng is None:
                    rng = random.Random(f"{spec.run_id}:{task.key}")
                delay = policy.delay(attempt, rng.random())
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                emitter.retried(attempt, exc.reason, err, delay)
                if not scope.stop.wait(delay):
                    continue
                interrupted, err = True, f"{err} (interrupted before retry)"
            return emitter.report(
                "interrupted" if interrupted else "failed",
                None,
                tuple(attempts),
                started,
                time.perf_counter() - t0,
                err,
                stdout,
                stderr,
                tuple(outputs),
                exc.trace,
            )


def _capture(spec: TaskSpec, scope: RunScope, emitter: Emitter, attempt: int) -> Capture:
    """The attempt's output capture; complete lines are sent as they end, if wanted."""
    mask = scope.masker.text if scope.masker else None
    if not spec.settings.live_output:
        return Capture(scope.output_limit, mask=mask)
    return Capture(scope.output_limit, emitter.lines(attempt), mask)


def _keep_output(ctx: Context, key: str, outputs: list[TaskOutput]) -> None:
    if ctx.output is None:
        return
    frozen = ctx.output.freeze(ctx.step, key, ctx.node, ctx.index, ctx.attempt)
    if frozen is not None:
        outputs.append(frozen)
