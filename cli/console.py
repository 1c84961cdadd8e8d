"""Everything a human sees on stderr. The only module that imports Rich.

On a terminal (and without ``NO_COLOR``/``CI``) progress is a Rich live view;
otherwise one plain line per event, which is what CI logs and pipes want.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

from flowrun.engine import Observer


def rich_ok() -> bool:
    return (
        sys.stderr.isatty()
        and not os.environ.get("NO_COLOR")
        and not os.environ.get("CI")
        and os.environ.get("TERM") != "dumb"
    )


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def error_line(exc: Any) -> None:
    err(f"flowrun: error: {exc.message}")
    if getattr(exc, "hint", None):
        err(f"  hint: {exc.hint}")


def _fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds / 60:.1f}m"


class PlainView(Observer):
    """One line per event; ``quiet`` keeps only errors (the summary is printed anyway)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, text: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        with self._lock:
            err(text)

    def run_started(self, run_id: str, workflow: str, step: int, resumed: bool) -> None:
        verb = f"resumed at step {step}" if resumed else "started"
        self._line(f"run {run_id} ({workflow}) {verb}", always=True)

    def task_finished(
        self,
        step: int,
        task: dict[str, Any],
        status: str,
        duration: float,
        attempts: int,
        error: str | None,
        reused: bool,
    ) -> None:
        label = task["node"] + (f"[{task['index']}]" if task.get("index") is not None else "")
        if reused:
            self._line(f"step {step}  {label}  ok (saved result reused)")
        elif status == "ok":
            tries = f", {attempts} attempts" if attempts > 1 else ""
            self._line(f"step {step}  {label}  ok  {_fmt_s(duration)}{tries}")
        else:
            self._line(
                f"step {step}  {label}  FAILED after {attempts} attempt(s): {error}", always=True
            )

    def task_retried(
        self, step: int, node: str, attempt: int, reason: str, error: str, delay: float
    ) -> None:
        self._line(
            f"step {step}  {node}  attempt {attempt} failed ({error}); retrying in {_fmt_s(delay)}"
        )

    def run_finished(self, status: str, error: str | None) -> None:
        pass


class LiveView(PlainView):
    """A Rich live table: step, tasks running/queued/done per node, retries, elapsed."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(quiet)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=True, get_renderable=self._render
        )
        self.started = time.monotonic()
        self.step = 0
        self.run_id = ""
        self.nodes: dict[str, dict[str, int]] = defaultdict(
            lambda: {"queued": 0, "running": 0, "done": 0, "failed": 0, "retries": 0}
        )

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def _line(self, text: str, *, always: bool = False) -> None:
        if always:
            self.console.print(text, markup=False, highlight=False)

    def _render(self) -> Any:
        from rich.table import Table

        with self._lock:
            rows = [(n, dict(c)) for n, c in self.nodes.items()]
        t = Table(
            title=f"run {self.run_id} · step {self.step}"
            f" · {_fmt_s(time.monotonic() - self.started)}",
            title_justify="left",
            expand=False,
        )
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
        return t

    def run_started(self, run_id: str, workflow: str, step: int, resumed: bool) -> None:
        self.run_id = run_id
        self.step = step
        super().run_started(run_id, workflow, step, resumed)

    def step_started(self, step: int, tasks: list[dict[str, Any]]) -> None:
        self.step = step

    def task_queued(self, step: int, task: dict[str, Any]) -> None:
        with self._lock:
            self.nodes[task["node"]]["queued"] += 1

    def task_started(self, step: int, task: dict[str, Any]) -> None:
        with self._lock:
            c = self.nodes[task["node"]]
            c["queued"] = max(0, c["queued"] - 1)
            c["running"] += 1

    def task_finished(
        self,
        step: int,
        task: dict[str, Any],
        status: str,
        duration: float,
        attempts: int,
        error: str | None,
        reused: bool,
    ) -> None:
        with self._lock:
            c = self.nodes[task["node"]]
            if not reused:
                c["running"] = max(0, c["running"] - 1)
            c["done" if status == "ok" else "failed"] += 1
        if status != "ok":
            super().task_finished(step, task, status, duration, attempts, error, reused)

    def task_retried(
        self, step: int, node: str, attempt: int, reason: str, error: str, delay: float
    ) -> None:
        with self._lock:
            self.nodes[node]["retries"] += 1


def progress_view(*, quiet: bool) -> PlainView:
    return LiveView(quiet) if rich_ok() and not quiet else PlainView(quiet)


def final_summary(report: dict[str, Any], *, quiet: bool) -> None:
    status = report["status"]
    line = (
        f"run {report['run_id']} {status} after {report['steps']} step(s)"
        f" in {_fmt_s(report['duration_s'])}"
    )
    err(line)
