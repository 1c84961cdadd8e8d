"""Everything flowrun writes for people, and the two streams it goes to. The only Rich importer.

Reports (``runs``, ``show``, ``costs`` ...) go to stdout with :func:`out`; progress,
warnings and errors go to stderr with :func:`err`. On a terminal (and without
``NO_COLOR``/``CI``) progress is a Rich live view; otherwise one plain line per
event, which is what CI logs and pipes want.

A reader that goes away (``| head -1``, a log shipper that dies) never changes a
run: :func:`guard_streams` makes both streams drop what can no longer be written.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from flowrun.engine import Observer
from flowrun.engine.errors import WorkflowError

from . import cilog
from .cilog import MAX_ANNOTATIONS, Fold, github_error

if TYPE_CHECKING:
    from flowrun.engine.records import Task


class _Tolerant:
    """A text stream whose writes never raise: once its reader is gone, output is dropped.

    On the first failed write or flush (EPIPE, a closed descriptor, a full disk) the
    descriptor is pointed at the null device, so that nothing written later, Python's
    own flush at exit included, fails or complains ("Exception ignored ...").
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._drop()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._drop()

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def _drop(self) -> None:
        self.broken = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` tolerate a reader that went away (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Tolerant):
            setattr(sys, name, _Tolerant(stream))


def rich_ok(stream: IO[str] | None = None) -> bool:
    """Rich formatting only for a terminal (stderr unless told), and never under NO_COLOR/CI."""
    target = sys.stderr if stream is None else stream
    return (
        target is not None
        and target.isatty()
        and not os.environ.get("NO_COLOR")
        and not os.environ.get("CI")
        and os.environ.get("TERM") != "dumb"
    )


def out(line: str) -> None:
    """A line of a report, on stdout."""
    print(line, file=sys.stdout, flush=True)


def err(line: str) -> None:
    """A line for the person watching: progress, warnings, errors, on stderr.

    One write of the whole line, then the flush: ``print`` writes the text and its
    newline apart, two writes to the descriptor where stderr is unbuffered
    (``PYTHONUNBUFFERED``, as CI runners set it), and a run prints a line per step.
    """
    stream = sys.stderr
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()


def warn(line: str) -> None:
    err(f"flowrun: warning: {line}")


def error_line(exc: Any) -> None:
    err(f"flowrun: error: {exc.message}")
    if getattr(exc, "hint", None):
        err(f"  hint: {exc.hint}")


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds / 60:.1f}m"


PROGRESS_EVERY = 5.0  # seconds between a foreach node's progress lines without a terminal
IDLE_EVERY = 60.0  # ... and while none of its counts changed


def progress_every() -> float:
    """``FLOWRUN_PROGRESS_INTERVAL``: seconds between progress lines (default 5)."""
    from flowrun.engine import UsageError

    raw = os.environ.get("FLOWRUN_PROGRESS_INTERVAL")
    if raw is None:
        return PROGRESS_EVERY
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"FLOWRUN_PROGRESS_INTERVAL={raw!r} is not a number of seconds > 0")
    return value


@dataclass(slots=True)
class _NodeProgress:
    """One node's tasks in one step, as the plain view counts them."""

    step: int
    node: str
    total: int
    foreach: bool
    started: float
    done: int = 0
    failed: int = 0
    running: int = 0
    ran: int = 0  # finished in this process (not a saved result reused)
    shown_at: float = 0.0
    shown: tuple[int, int, int] = (0, 0, 0)

    def line(self, now: float) -> str:
        """``score  4,512/20,000 done, 8 running, 3 failed, 1,204 tasks/s``."""
        parts = [f"{self.done:,}/{self.total:,} done"]
        if self.running:
            parts.append(f"{self.running:,} running")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        elapsed = now - self.started
        rate = f"{self.ran / elapsed:,.0f} tasks/s" if self.ran and elapsed > 0 else ""
        text = ", ".join(parts)
        if self.done + self.failed == self.total:
            text += f" in {fmt_s(elapsed)}" + (f" ({rate})" if rate else "")
        elif rate:
            text += f", {rate}"
        return f"step {self.step}  {self.node}  {text}"


class PlainView(Observer):
    """Plain lines for a log: what failed or retried, each; progress per node, at a pace.

    A ``foreach`` node gets a progress line every :func:`progress_every` seconds
    while its counts change (every :data:`IDLE_EVERY` while they do not) and one
    when its last task ends; a node of one task, a line when it ends. ``verbose``
    adds a line for each task's start and end; ``quiet`` keeps only errors (the
    summary is printed anyway). Per task, only counters are touched unless a line
    is due. ``fold`` (GitHub Actions, GitLab CI) collects each task's output and
    prints it as one collapsed block when the task ends; ``annotate`` prints a
    GitHub error annotation for the first failed tasks.
    """

    def __init__(
        self,
        quiet: bool,
        verbose: bool = False,
        fold: Fold | None = None,
        annotate: bool = False,
    ) -> None:
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.fold = fold
        self.annotate = annotate
        self._lock = threading.Lock()
        self.metrics_url: str | None = None  # printed right after the run id line
        self._nodes: dict[str, _NodeProgress] = {}  # of the step running now
        self._held: dict[str, tuple[float, list[str], int]] = {}  # folded output by task key
        self._annotated = 0
        self._every = progress_every()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> PlainView:
        if not self.quiet:
            self._ticker = threading.Thread(target=self._tick, name="flowrun-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()

    def _tick(self) -> None:
        while not self._stop.wait(min(self._every, 1.0)):
            now = time.monotonic()
            with self._lock:
                due = [p.line(now) for p in self._nodes.values() if self._due(p, now)]
            for text in due:
                self._line(text)

    def _due(self, p: _NodeProgress, now: float) -> bool:
        """Whether a foreach node's progress line is due (under the lock); marks it shown."""
        if not p.foreach or p.done + p.failed == p.total:
            return False
        counts = (p.done, p.failed, p.running)
        wait = self._every if counts != p.shown else max(IDLE_EVERY, self._every)
        if now - p.shown_at < wait:
            return False
        p.shown_at, p.shown = now, counts
        return True

    def _line(self, text: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        with self._lock:
            err(text)

    def run_found(self, run_id: str, status: str, step: int) -> None:
        self._line(
            f"continuing run {run_id} ({status} at step {step}); resume semantics", always=True
        )

    def run_started(self, run_id: str, workflow: str, step: int, resumed: bool) -> None:
        verb = f"resumed at step {step}" if resumed else "started"
        self._line(f"run {run_id} ({workflow}) {verb}", always=True)
        if self.metrics_url:
            self._line(f"metrics: {self.metrics_url}", always=True)

    def step_started(self, step: int, tasks: Sequence[Task]) -> None:
        if self.quiet:  # quiet shows no counts: none are kept
            return
        now = time.monotonic()
        with self._lock:
            self._nodes = {
                n: _NodeProgress(step, n, total, each, now, shown_at=now)
                for n, (total, each) in self.node_counts(tasks).items()
            }

    def _progress(self, step: int, node: str) -> _NodeProgress:
        p = self._nodes.get(node)
        if p is None or p.step != step:  # a library caller that never said the step began
            p = self._nodes[node] = _NodeProgress(step, node, 0, False, time.monotonic())
        return p

    def task_started(self, step: int, task: Task) -> None:
        if self.quiet:
            return
        with self._lock:
            self._progress(step, task.node).running += 1
        if self.verbose:
            self._line(f"step {step}  {_label(task)}  started")

    def task_finished(
        self,
        step: int,
        task: Task,
        status: str,
        duration: float,
        attempts: int,
        error: str | None,
        reused: bool,
    ) -> None:
        if self.quiet:  # only a failure's line; quiet holds no output to unfold
            if status != "ok":
                self._failed(step, task, status, attempts, error)
            return
        with self._lock:
            p = self._progress(step, task.node)
            if not reused:
                p.running = max(0, p.running - 1)
                p.ran += 1
            if status == "ok":
                p.done += 1
            elif status != "interrupted":  # an interrupted task is run again by resume
                p.failed += 1
            ended = p.done + p.failed >= p.total
            last = p.line(time.monotonic()) if ended and p.foreach else None
        if self.fold is not None:
            self._unfold(step, task)
        if status != "ok":
            self._failed(step, task, status, attempts, error)
        elif self.verbose or not p.foreach:
            self._line(f"step {step}  {_label(task)}  {_ok(duration, attempts, reused)}")
        if last is not None:
            self._line(last)

    def _failed(self, step: int, task: Task, status: str, attempts: int, error: str | None) -> None:
        label = _label(task)
        how = "interrupted" if status == "interrupted" else "FAILED"
        self._line(f"step {step}  {label}  {how} after {attempts} attempt(s): {error}", always=True)
        if not self.annotate or status == "interrupted":
            return
        with self._lock:
            self._annotated += 1
            if self._annotated > MAX_ANNOTATIONS:
                return
        self._line(github_error(str(error), title=f"flowrun: node {label} failed"), always=True)

    def task_retried(
        self,
        step: int,
        task: Task,
        attempt: int,
        reason: str,
        error: str,
        delay: float,
    ) -> None:
        self._line(
            f"step {step}  {_label(task)}  attempt {attempt} failed ({error});"
            f" retrying in {fmt_s(delay)}"
        )

    def task_output(
        self, step: int, task: Task, attempt: int, stream: str, lines: list[str]
    ) -> None:
        """What a task prints, as it prints it: ``label | line`` (``--quiet`` hides it).

        Folded (in CI), a task's lines are held until it ends, at most
        :data:`FOLD_HOLD` of them: past that, what is held is printed as a block.
        """
        if self.quiet:
            return
        text = output_lines(_label(task), lines)
        if self.fold is None:
            self._output(text)
            return
        key = task.key
        with self._lock:
            started, held, size = self._held.get(key) or (time.time(), [], 0)
            held.append(text)
            size += len(text)
            full = size >= FOLD_HOLD
            self._held[key] = (time.time(), [], 0) if full else (started, held, size)
        if full:
            header = f"step {step}  {_label(task)}  output (continued below)"
            self._output(self.fold.block(_label(task), header, "".join(held), started))

    def _unfold(self, step: int, task: Task) -> None:
        with self._lock:
            entry = self._held.pop(task.key, None)
        if entry is not None and self.fold is not None:
            started, held, _ = entry
            if held:
                header = f"step {step}  {_label(task)}  output"
                self._output(self.fold.block(_label(task), header, "".join(held), started))

    def wants_output(self) -> bool:
        return not self.quiet

    def _output(self, text: str) -> None:
        with self._lock:
            sys.stderr.write(text)
            sys.stderr.flush()

    def budget_warning(self, level: float, spent_usd: float, max_cost_usd: float) -> None:
        self._line(
            f"warning: LLM spend {money(spent_usd)} reached {level:.0%} of the budget"
            f" ({money(max_cost_usd)})",
            always=True,
        )

    def notice(self, text: str) -> None:
        """A line the person must see now, whatever ``quiet`` says (e.g. ``stopping: ...``)."""
        self._line(text, always=True)

    def run_finished(self, status: str, error: str | None) -> None:
        """Nodes cut short (a failure elsewhere, a signal, the budget) show where they got."""
        now = time.monotonic()
        with self._lock:
            cut = [
                p.line(now)
                for p in self._nodes.values()
                if p.foreach and p.done + p.failed < p.total
            ]
            self._nodes = {}
        for text in cut:
            self._line(text)


FOLD_HOLD = 1 << 20  # bytes of a task's output held for folding before a block is printed


def _ok(duration: float, attempts: int, reused: bool) -> str:
    if reused:
        return "ok (saved result reused)"
    tries = f", {attempts} attempts" if attempts > 1 else ""
    return f"ok  {fmt_s(duration)}{tries}"


def _label(task: Task) -> str:
    return str(task.node) + (f"[{task.index}]" if task.index is not None else "")


def output_lines(label: str, lines: list[str], mark: str = "|") -> str:
    """Lines a task printed, each prefixed ``label | `` (as docker compose does)."""
    return "".join(f"{label} {mark} {line}\n" for line in lines)


class LiveView(PlainView):
    """A Rich live display: step, per-node running/queued/done, retries, elapsed, spend.

    Below the table, the tasks running right now with how long each has run.
    Failures and the run id line are printed above the display and stay.
    """

    SHOW_RUNNING = 6

    def __init__(self, quiet: bool, verbose: bool = False) -> None:
        super().__init__(quiet, verbose)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.started = time.monotonic()
        self.step = 0
        self.run_id = ""
        self.workflow = ""
        self.nodes: dict[str, dict[str, int]] = defaultdict(
            lambda: {"queued": 0, "running": 0, "done": 0, "failed": 0, "retries": 0}
        )
        self.running: dict[str, tuple[str, float]] = {}  # task key -> (label, started)
        self.spend = 0.0
        self.calls = 0
        self.unpriced = 0
        # last: Live renders once on construction
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=True, get_renderable=self._render
        )

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def _line(self, text: str, *, always: bool = False) -> None:
        if always or self.verbose:
            self.console.print(text, markup=False, highlight=False)

    def _output(self, text: str) -> None:  # printed above the live display
        self.console.print(text.removesuffix("\n"), markup=False, highlight=False, soft_wrap=True)

    def _render(self) -> Any:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            rows = [(n, dict(c)) for n, c in self.nodes.items()]
            running = sorted(self.running.values(), key=lambda r: r[1])
            spend, calls, unpriced = self.spend, self.calls, self.unpriced
        money = f"${spend:.4f} in {calls} LLM call(s)" + (
            f", {unpriced} unpriced" if unpriced else ""
        )
        run = f"run {self.run_id} ({self.workflow})" if self.run_id else "starting"
        head = Text(f"{run} · step {self.step} · {fmt_s(now - self.started)} · spend {money}")
        t = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
        for col in ("node", "running", "queued", "done", "failed", "retries"):
            t.add_column(col, justify="left" if col == "node" else "right")
        for n, c in rows:
            t.add_row(
                n,
                str(c["running"]),
                str(c["queued"]),
                str(c["done"]),
                str(c["failed"]),
                str(c["retries"]),
            )
        shown = ", ".join(
            f"{label} {fmt_s(now - t0)}" for label, t0 in running[: self.SHOW_RUNNING]
        )
        more = len(running) - self.SHOW_RUNNING
        tail = Text(f"running now: {shown or '-'}" + (f" (+{more} more)" if more > 0 else ""))
        return Group(head, t, tail)

    def run_started(self, run_id: str, workflow: str, step: int, resumed: bool) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.step = step
        super().run_started(run_id, workflow, step, resumed)

    def step_started(self, step: int, tasks: Sequence[Task]) -> None:
        self.step = step

    def task_queued(self, step: int, task: Task) -> None:
        with self._lock:
            self.nodes[task.node]["queued"] += 1

    def task_dropped(self, step: int, task: Task) -> None:
        with self._lock:
            c = self.nodes[task.node]
            c["queued"] = max(0, c["queued"] - 1)

    def task_started(self, step: int, task: Task) -> None:
        if self.quiet:
            return
        with self._lock:
            c = self.nodes[task.node]
            c["queued"] = max(0, c["queued"] - 1)
            c["running"] += 1
            self.running[task.key] = (_label(task), time.monotonic())
        if self.verbose:
            self._line(f"step {step}  {_label(task)}  started")

    def task_finished(
        self,
        step: int,
        task: Task,
        status: str,
        duration: float,
        attempts: int,
        error: str | None,
        reused: bool,
    ) -> None:
        with self._lock:
            c = self.nodes[task.node]
            if not reused:
                c["running"] = max(0, c["running"] - 1)
                self.running.pop(task.key, None)
            c["done" if status == "ok" else "failed"] += 1
        if status != "ok":
            self._failed(step, task, status, attempts, error)
        elif self.verbose:
            self._line(f"step {step}  {_label(task)}  {_ok(duration, attempts, reused)}")

    def task_retried(
        self,
        step: int,
        task: Task,
        attempt: int,
        reason: str,
        error: str,
        delay: float,
    ) -> None:
        with self._lock:
            self.nodes[task.node]["retries"] += 1
        if self.verbose:
            super().task_retried(step, task, attempt, reason, error, delay)

    def llm_usage(
        self,
        node: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cached: int,
        cost: float | None,
    ) -> None:
        with self._lock:
            self.calls += 1
            if cost is None:
                self.unpriced += 1
            else:
                self.spend += cost

    def run_finished(self, status: str, error: str | None) -> None:
        with self._lock:  # tasks cancelled by an interrupt never finish
            self.running.clear()
            for c in self.nodes.values():
                c["running"] = c["queued"] = 0


def progress_view(*, quiet: bool, verbose: bool = False) -> PlainView:
    """The live view on a terminal; plain lines otherwise, folded for GitHub or GitLab."""
    ci = cilog.system()
    if ci is None and rich_ok() and not quiet:
        return LiveView(quiet, verbose)
    return PlainView(quiet, verbose, cilog.fold_for(ci), annotate=ci == "github")


def annotate(exc: WorkflowError) -> None:
    """Under GitHub Actions, an invalid workflow's errors as annotations at their lines."""
    if cilog.system() == "github":
        for line in cilog.workflow_error_lines(exc.errors[: cilog.MAX_ANNOTATIONS]):
            err(line)


def final_summary(report: dict[str, Any], *, quiet: bool, ran: bool = True) -> None:
    """The run's last line; ``ran=False``: a start by id found it succeeded already."""
    status = report["status"]
    line = (
        f"run {report['run_id']} {'' if ran else 'already '}{status} after"
        f" {report['steps']} step(s) in {fmt_s(report['duration_s'])}"
    )
    if not ran:
        line += "; nothing was run"
    err(line)


def money(value: float) -> str:
    from flowrun.engine.costs import usd

    return usd(value)


def cost_text(row: dict[str, Any], key: str = "cost_usd") -> str:
    """A row's (or the total's) cost: "unknown" when no call's cost is known, never $0,
    and the calls of unknown cost beside the known sum."""
    cost = row[key]
    unknown = row.get("unknown_cost_calls") or 0
    if cost is None:
        return "unknown"
    if unknown:
        return f"{money(cost)} + {unknown:,} call{'s' if unknown != 1 else ''} of unknown cost"
    return money(cost)


def cost_table(costs: dict[str, Any], *, by: str = "model", report: bool = False) -> None:
    """The cost table: Rich on a terminal, aligned plain text otherwise.

    ``report``: it is what the command was asked for (``flowrun costs``), so it goes
    to stdout; at the end of a run it goes to stderr with the rest of the progress.
    """
    stream = sys.stdout if report else sys.stderr
    line = out if report else err
    rows = costs[f"by_{by}"]
    if by == "call":  # one line per ledger row: where it was made, and what served it
        rows = [{**r, "calls": 1, "unknown_cost_calls": int(r["cost_usd"] is None)} for r in rows]
        for r in rows:
            where = f"{r['node']}[{r['index']}]" if r["index"] is not None else r["node"]
            served = r["served_model"] or "no reply"
            r["call"] = f"{r['step']}:{where}#{r['attempt']} {r['model']} → {served}"
    counts = ["calls", "tokens_in", "cached_tokens", "tokens_out"]
    head = [by, "calls", "input", "cached", "output"]
    if costs.get("reasoning_tokens"):  # of the output, shown only when a model reasoned
        counts.append("reasoning_tokens")
        head.append("reasoning")
    head.append("cost")
    body = [[str(r[by]), *(f"{r.get(k) or 0:,}" for k in counts), cost_text(r)] for r in rows]
    total = [
        "Total",
        *(f"{costs.get(k) or 0:,}" for k in counts),
        cost_text(costs, "total_usd"),
    ]
    title = f"LLM costs of run {costs['run_id']}"
    if rich_ok(stream):
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_footer=False)
        for i, col in enumerate(head):
            t.add_column(col, justify="left" if i == 0 else "right")
        for i, r in enumerate(body):
            t.add_row(*r, end_section=i == len(body) - 1)
        t.add_row(*total, style="bold")
        Console(file=stream).print(t)
    else:
        widths = [max(len(line[i]) for line in [head, *body, total]) for i in range(len(head))]

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        line(title)
        line(fmt(head))
        for r in body:
            line(fmt(r))
        line(fmt(total))
    if costs["unpriced_models"]:
        warn(
            f"no price for {', '.join(costs['unpriced_models'])}: unpriced, so their cost is"
            " unknown and left out of the total; add prices with --pricing FILE.yaml"
        )
    if costs.get("unknown_usage_calls"):
        warn(
            f"{costs['unknown_usage_calls']} call(s) ended without usage (a reply without it,"
            " or none usable: a timeout, a dropped connection, a bad body): their tokens and"
            " cost are unknown"
        )
