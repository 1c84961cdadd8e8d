"""One step's dispatch: submit its tasks as specs, apply what arrives, collect reports.

Everything here runs on the coordinator's thread, but for the effects of a task it
runs inline: the thread that sends one applies it while the coordinator's waits in
the task (``channels.InlineSink``). Arrivals (effects from the drive's channel,
futures as they complete) come through one queue, in the order they arrived; the
step's window (``runtime/window.py``) is counted from them. A report is applied only
after every effect its task sent before it, then handed to the step's merge
(``merge.StepMerge``), which merges in task order: nothing is held per task but what
is in flight or waits for an earlier task's report.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import Interrupted, RunFailed
from ..nodes.registry import kind_of
from ..records import Task
from ..store.base import TaskResult
from . import worker
from .channels import InlineSink
from .effects import Effect
from .merge import StepMerge, task_events
from .messages import Attempt, TaskReport, TaskSpec
from .pool import Job, wait_jobs
from .window import Window

if TYPE_CHECKING:
    from .drive import Drive

_log = logging.getLogger("flowrun")
EFFECTS_WAIT_S = 5.0  # how long a report waits for effects its task sent before it
ABANDON_WAIT_S = 5.0  # how long a leaving coordinator waits for killed work to end
POLL_S = 0.2  # how often the coordinator looks at the stop flags while it waits
T = TypeVar("T")


class Ran:
    """A task that ran inline, done as it is made: what the step reads of a future
    (a ``concurrent.futures.Future`` is a condition variable and a lock or two for a
    result that is already there)."""

    __slots__ = ("report",)

    def __init__(self, report: TaskReport) -> None:
        self.report = report

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return None

    def result(self) -> TaskReport:
        return self.report


# yields the spec of each task to run inline, is sent its report
Inline = Generator[TaskSpec, TaskReport, T]
# a task's outcome to come (or already there, inline)
Done = Future[TaskReport] | Job[TaskSpec, TaskReport] | Ran
Arrival = Effect | Done


class StepDispatch:
    """Runs one step's tasks (reusing ``saved`` results) on the drive's executor, handing
    each outcome to ``merge``."""

    def __init__(
        self,
        d: Drive,
        tasks: Sequence[Task],
        state: dict[str, Any],
        step: int,
        saved: dict[str, TaskResult],
        merge: StepMerge,
    ) -> None:
        self.d = d
        self.tasks = tasks
        self.state = state
        self.step = step
        self.saved = saved
        self.merge = merge
        self.window = d.window = Window(d.max_concurrency, d.queue_depth, d.backend.bounded)
        d.applier.begin_step(step, self.window)
        self.pending: dict[Done, tuple[int, Task]] = {}
        self.failed: list[tuple[int, TaskReport]] = []  # position in the step, report
        self.unsaved: list[TaskReport] = []  # finished, their results not saved yet
        self.backlog: deque[Arrival] = deque()  # taken off the queue, not yet dealt with
        self.held: list[Done] = []  # futures passed while awaiting effects
        self.dispatched = False
        # A lone python/set task runs on this thread: a pool hand-off would only add
        # latency (both kinds watch the stop flag, so signals still work).
        self.inline = (
            d.backend.local
            and d.own_executor
            and len(tasks) == 1
            and kind_of(d.wf.nodes[tasks[0].node]).inline
        )
        self.grown = d.grown if d.backend.local else {}

    # the step ------------------------------------------------------------------
    def run(self) -> Inline[list[TaskReport]]:
        """Run the step; return the outcomes whose results are still to be saved (the step's
        last ones, which ride in its commit: :func:`task_result` makes them). A task it
        runs inline is yielded, to be run by the coordinator's thread (``runtime/relay.py``),
        and sent back as its report."""
        try:
            return (yield from self._run())
        except BaseException:
            if self.pending:  # the coordinator is leaving (a store error, a bug)
                self.abandon()
            raise

    def _run(self) -> Inline[list[TaskReport]]:
        d, obs = self.d, self.d.observer
        for i, t in enumerate(self.tasks):
            r = self.saved.get(t.key)
            if r is not None:
                self.merge.arrived(i, reused(t, r))
                obs.task_finished(self.step, t, "ok", r.duration_s, r.attempts, None, True)
                continue
            if d.stopping():
                self.interrupt()
            if d.over_budget():
                break  # no new task once the cost ledger passed the budget
            if self.window.full():
                obs.backpressure()
                while self.window.full():
                    self.wait_some()
                if d.over_budget():
                    break  # the budget ran out while we waited for room
            self.take(0)  # eager: what arrived meanwhile
            obs.task_queued(self.step, t)
            yield from self.submit(i, t)
        self.dispatched = True
        while self.pending:
            self.wait_some()
        if d.stopping():
            self.interrupt()
        if d.over_budget():
            self.save_unsaved()
            raise d.ledger.exceeded()  # finished results are kept for the resume
        if self.failed:
            # the failed step is not committed, so its task events go with the failure
            d.failure_events = task_events(d.outbox, self.step, [o for _, o in self.failed])
            _, culprit = min(self.failed, key=lambda failed: failed[0])
            more = f" (and {len(self.failed) - 1} more)" if len(self.failed) > 1 else ""
            raise RunFailed(
                f"node {culprit.task.label!r} failed after"
                f" {len(culprit.attempts)} attempt(s): {culprit.error}{more}",
                hint="fix the cause, then `flowrun resume` retries this step"
                + (f" (`flowrun show {d.run_id}` has its traceback)" if culprit.trace else ""),
            )
        return self.unsaved

    def submit(self, i: int, t: Task) -> Inline[None]:
        d = self.d
        # the same data path inline, its effects applied as they are sent while it runs
        inline = InlineSink(self.apply, d.sink) if self.inline else None
        spec = TaskSpec(
            d.run_id,
            d.drive_id,
            self.step,
            t,
            d.ref,
            self.state,
            d.task_settings,
            d.sink if inline is None else inline,
            d.channel.control,
            self.grown,
        )
        self.window.submit()
        d.applier.track(t)
        if inline is not None:
            try:
                ran = Ran((yield spec))  # worker.run_spec(spec), by the coordinator's thread
            finally:  # what a call it abandoned sends from now on comes through the channel
                inline.close()
            self.pending[ran] = (i, t)
            d.arrivals.put(ran)
            return
        start = d.backend.start
        try:
            if start is not None:
                # its callback may run before start returns: only this thread reads the
                # arrivals, after it has put the job in pending
                job = start(spec, d.arrivals.put)
                self.pending[job] = (i, t)
                return
            future = d.backend.executor.submit(worker.run_spec, spec)
        except BaseException:
            self.window.unsubmit()
            d.applier.untrack(t.key)
            raise
        self.pending[future] = (i, t)
        future.add_done_callback(d.arrivals.put)

    # arrivals ------------------------------------------------------------------
    def apply(self, effect: Effect) -> str | None:
        return self.d.apply(effect)

    def take(self, timeout: float) -> None:
        """Deal with what arrived (waiting up to ``timeout`` for something), in arrival
        order (a task that ended before another started is heard of first), then commit
        the results of the tasks that ended, together (a group commit)."""
        arrivals, backlog = self.d.arrivals, self.backlog
        done, self.held = self.held, []
        try:
            if timeout > 0 and not done and not backlog:
                backlog.append(arrivals.get(timeout=timeout))
        except queue.Empty:
            pass
        while not arrivals.empty():  # only this thread takes: what is there stays there
            backlog.append(arrivals.get_nowait())
        ended: list[TaskReport] = []
        settled: list[str] = []
        for f in done:
            self.finish(f, ended, settled)
        while backlog:
            item = backlog.popleft()
            if not isinstance(item, Effect):
                self.finish(item, ended, settled)
            else:
                self.apply(item)
        if ended or settled:
            self.commit(ended, settled)

    def await_effects(self, report: TaskReport) -> None:
        """Apply every effect ``report``'s task sent before it (they may still be on their
        way, or behind it in the backlog: effects and futures travel apart on worker
        processes)."""
        applier, backlog = self.d.applier, self.backlog
        deadline = time.monotonic() + EFFECTS_WAIT_S
        while applier.missing(report) > 0:
            if backlog:
                item = backlog.popleft()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    _log.warning(
                        "flowrun: warning: %d effect(s) of task %s never arrived",
                        applier.missing(report),
                        report.task.label,
                    )
                    return
                try:
                    item = self.d.arrivals.get(timeout=min(left, POLL_S))
                except queue.Empty:
                    continue
            if not isinstance(item, Effect):
                self.held.append(item)
            else:
                self.apply(item)

    def finish(self, f: Done, ended: list[TaskReport], settled: list[str]) -> None:
        """A future is done: apply its report (after its task's effects) or drop it."""
        d, step = self.d, self.step
        i, t = self.pending.pop(f)
        self.window.complete(t.key)
        out = None if f.cancelled() else self.report_of(f, t)
        if out is None or out.status == "skipped":  # budget spent, or a signal
            d.applier.untrack(t.key)
            d.observer.task_dropped(step, t)
            settled.append(t.key)
            return  # never ran: resume runs it
        self.await_effects(out)
        d.applier.finish(out)
        d.observer.task_finished(
            step, t, out.status, out.duration, len(out.attempts), out.error, False
        )
        self.merge.arrived(i, out)
        ended.append(out)
        if out.status == "failed":  # an interrupted one is no failure of the step
            self.failed.append((i, out))

    def commit(self, ended: list[TaskReport], settled: list[str]) -> None:
        """Save the results of tasks that ended together in one transaction (a group
        commit); only then do they leave the window, which bounds the finished results
        a kill -9 can lose. The step's last results ride in the step's own commit
        (nothing is dispatched in between)."""
        d = self.d
        if (
            self.dispatched
            and not self.pending
            and not self.failed
            and not d.stopping()
            and not d.over_budget()
        ):
            self.unsaved.extend(ended)
        elif ended:
            d.store.save_task_results(d.run_id, d.token, task_results(self.step, ended))
        self.window.settle([*settled, *(o.task.key for o in ended)])
        for out in ended:
            d.finished(out)

    def report_of(self, f: Done, t: Task) -> TaskReport:
        exc = f.exception()
        if exc is None:
            return f.result()
        # the executor could not run it (a worker process died, a value did not pickle)
        error = self.d.masker.text(f"internal error: {type(exc).__name__}: {exc}")
        return TaskReport(t, "failed", None, (), time.time(), 0.0, error)

    # waiting, stopping -----------------------------------------------------------
    def wait_some(self) -> None:
        d = self.d
        self.take(POLL_S)  # something arrived (or time to look at the flags)
        d.budget_warnings()
        if d.stopping():
            self.interrupt()
        if d.over_budget():
            d.channel.control.over_budget.set()
            for f in list(self.pending):
                f.cancel()  # tasks still queued never start once the budget is spent

    def save_unsaved(self) -> None:  # the step will not be committed: no commit carries them
        if self.unsaved:
            results = task_results(self.step, self.unsaved)
            self.d.store.save_task_results(self.d.run_id, self.d.token, results)
            self.unsaved.clear()

    def interrupt(self) -> None:
        """Stop dispatching; give running tasks a grace period, then kill them."""
        d = self.d
        self.save_unsaved()
        control = d.channel.control
        control.stop.set()
        for f in list(self.pending):
            f.cancel()  # tasks still queued never start (run_spec skips any it picks up)
        deadline = time.monotonic() + d.settings.grace_s
        # a second signal sets abort: stop waiting for the grace period at once
        while self.pending and time.monotonic() < deadline and not d.abort.is_set():
            self.take(0.1)
        if self.pending:
            d.abort.set()
            control.abort.set()
            worker.kill_local(d.drive_id)
            end = time.monotonic() + 2.0
            while self.pending and time.monotonic() < end:
                self.take(0.1)
        raise Interrupted(
            f"interrupted by {d.stop_reason() or 'a signal'}; finished tasks were saved",
            hint=f"continue with `flowrun resume {d.run_id}`",
        )

    def abandon(self) -> None:
        """Kill the step's running work and wait a little for it, applying nothing more."""
        d, control = self.d, self.d.channel.control
        for flag in (control.stop, control.abort, d.abort):
            flag.set()
        for f in list(self.pending):
            f.cancel()
        worker.kill_local(d.drive_id)
        t0 = time.monotonic()
        wait([f for f in self.pending if isinstance(f, Future)], timeout=ABANDON_WAIT_S)
        left = ABANDON_WAIT_S - (time.monotonic() - t0)
        wait_jobs([f for f in self.pending if isinstance(f, Job)], timeout=max(0.0, left))


def reused(t: Task, r: TaskResult) -> TaskReport:
    """The outcome of a task whose result was saved before the run stopped."""
    attempt = Attempt(r.attempts, r.started_at, r.duration_s, None, None)
    return TaskReport(t, "ok", r.delta or {}, (attempt,), r.started_at, r.duration_s, reused=True)


def task_results(step: int, reports: list[TaskReport]) -> list[TaskResult]:
    return [task_result(step, out) for out in reports]


def task_result(step: int, out: TaskReport) -> TaskResult:
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
