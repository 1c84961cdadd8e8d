"""``flowrun run`` and ``flowrun resume``."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from flowrun.engine import (
    Engine,
    Fanout,
    FlowrunError,
    Interrupted,
    JsonlSink,
    Observer,
    RunFailed,
    Settings,
    Store,
    UsageError,
    Workflow,
    envvars,
    jsonvalue,
    load_workflow,
)
from flowrun.engine.errors import WorkflowError
from flowrun.engine.events import EventSink
from flowrun.engine.metrics import Exporter, ExportOptions, exporter_for
from flowrun.engine.report import run_result
from flowrun.engine.spec import file_changed

from . import console
from .costs import LLMOptions, run_costs
from .database import open_store
from .options import check_run_id, stdout_to_stderr, write_json
from .reports import CIReports

_BARE_CONSTANTS = ("NaN", "Infinity", "-Infinity")  # not JSON: bare words, kept as strings


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=JSON``; VALUE that is not JSON at all is the plain string (``--set name=alice``).

    JSON that parses but is no faithful value (``1e999``, ``[NaN]``, a lone
    surrogate, nesting past the bound) is refused rather than stored.
    """
    key, eq, raw = item.partition("=")
    if not eq or not key:
        raise UsageError(
            f"--set {item!r}: expected KEY=JSON", hint="e.g. --set limit=10 --set name='\"x\"'"
        )
    if raw.strip() not in _BARE_CONSTANTS:
        try:
            return key, jsonvalue.loads(raw)
        except jsonvalue.JSONValueError as exc:
            at = jsonvalue.where((key, *exc.path))
            raise UsageError(f"--set {at}: {exc.problem}", hint=exc.hint) from None
        except json.JSONDecodeError:
            pass  # a bare word is a string, as most users mean it
    try:
        jsonvalue.check(raw)
    except jsonvalue.JSONValueError as exc:  # bytes the terminal did not send as UTF-8
        raise UsageError(f"--set {key}: {exc.problem}", hint=exc.hint) from None
    return key, raw


def parse_inputs(sets: list[str], input_file: str | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if input_file:
        try:
            data = jsonvalue.loads(Path(input_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"--input {input_file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"--input {input_file}: not UTF-8 text (bad byte at offset {exc.start})",
                hint="save the file as UTF-8",
            ) from None
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"--input {input_file}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}"
            ) from None
        except jsonvalue.JSONValueError as exc:
            at = f" at {jsonvalue.where(exc.path)}" if exc.path else ""
            raise UsageError(f"--input {input_file}{at}: {exc.problem}", hint=exc.hint) from None
        if not isinstance(data, dict):
            raise UsageError(f"--input {input_file}: must hold a JSON object of state keys")
        inputs.update(data)
    for item in sets:
        key, value = parse_set(item)
        inputs[key] = value
    return inputs


class _Signals:
    """SIGINT/SIGTERM: stop dispatching; a second signal stops waiting for the grace period.

    Each signal is announced at once on stderr, by a thread of its own: the handler
    runs between two bytecodes of the main thread, which may hold the locks that
    counting running tasks and printing take, so it only hands the news over.
    """

    def __init__(self, engine: Engine, view: console.PlainView) -> None:
        self.engine = engine
        self.view = view
        self.count = 0
        self.grace = engine.settings.grace_s  # as it was when the first signal came
        self.previous: dict[int, Any] = {}
        self.news: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # put() is reentrant
        self.herald: threading.Thread | None = None

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
            self.herald = threading.Thread(target=self._announce, name="flowrun-signals")
            self.herald.daemon = True
            self.herald.start()
        return self

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.engine.stop_reason = signal.Signals(signum).name
        if self.count == 1:
            self.grace = self.engine.settings.grace_s
        self.engine.stop.set()
        if self.count > 1:
            self.engine.settings.grace_s = 0.0
            self.engine.abort.set()
        self.news.put(self.engine.stop_reason)

    def _announce(self) -> None:
        first = True
        while (name := self.news.get()) is not None:
            k = self.engine.running_tasks()
            tasks = f"{k} running task{'' if k == 1 else 's'}"
            if not first:
                self.view.notice(f"stopping now: abandoning {tasks}")
                continue
            first = False
            again = "Ctrl-C again" if name == "SIGINT" else f"{name} again"
            if k:
                self.view.notice(
                    f"stopping: waiting up to {self.grace:g}s for {tasks} ({again} to stop now)"
                )
            else:
                self.view.notice(f"stopping: no task is running ({again} to stop now)")

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        if self.herald is not None:
            self.news.put(None)
            self.herald.join(timeout=1.0)


@contextlib.contextmanager
def _signals_call(fn: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``fn`` instead of ending the process."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: fn())
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


@dataclass(frozen=True, slots=True)
class Shown:
    """How a run that ``run``, ``resume`` and ``fork`` drive is shown and reported."""

    json_out: bool = False
    quiet: bool = False
    verbose: bool = False
    events: str | None = None
    max_concurrency: int | None = None
    metrics: ExportOptions = field(default_factory=ExportOptions)
    output_limit: int | None = None
    reports: CIReports | None = None
    executor: str = "threads"  # --executor, checked by check_kind


def _execute(store: Store, go: Any, run_id_hint: str | None, wf: Workflow, shown: Shown) -> None:
    if shown.quiet and shown.verbose:
        raise UsageError("--quiet and --verbose: pick one")
    view = console.progress_view(quiet=shown.quiet, verbose=shown.verbose)
    reports = shown.reports
    exporter = exporter_for(shown.metrics, wf, warn=console.warn, info=console.err)
    if exporter is not None:
        view.metrics_url = exporter.start()  # before the first step; raises UsageError (exit 2)
    try:
        _drive(
            store,
            shown.json_out,
            shown.quiet,
            shown.events,
            shown.max_concurrency,
            go,
            run_id_hint,
            view,
            exporter,
            shown.output_limit,
            None if reports is None else lambda run_id: reports.write(store, run_id, wf),
            shown.executor,
        )
    finally:
        if exporter is not None:
            # final file/push, linger, then the port is closed; a signal only ends the
            # linger, so the exit code stays the run's
            with _signals_call(exporter.end_linger):
                exporter.close()


def _drive(
    store: Store,
    json_out: bool,
    quiet: bool,
    events: str | None,
    max_concurrency: int | None,
    go: Any,
    run_id_hint: str | None,
    view: console.PlainView,
    exporter: Exporter | None,
    output_limit: int | None,
    ended: Callable[[str], None] | None = None,
    executor: str = "threads",
) -> None:
    sinks: list[EventSink] = []
    if events:
        try:
            sinks.append(JsonlSink(events))
        except OSError as exc:
            raise UsageError(f"--events {events}: {exc.strerror}") from None
    observer: Observer = view
    if exporter is not None:
        observer = Fanout(view, exporter.metrics)
        sinks.append(exporter.metrics)
    settings = Settings(
        max_concurrency=max_concurrency, grace_s=envvars.grace_s(), executor=executor
    )
    if output_limit is not None:
        settings.output_limit = output_limit
    engine = Engine(
        store,
        settings=settings,
        observer=observer,
        sinks=sinks,
    )
    error: FlowrunError | None = None
    run_id = run_id_hint
    found = None
    with _Signals(engine, view), stdout_to_stderr(True), view:  # stdout holds only --json
        try:
            result = go(engine)
            run_id, found = result.run_id, result.found
        except (RunFailed, Interrupted) as exc:
            error = exc
            run_id = engine.run_id or run_id
    if run_id is None:
        raise error or RunFailed("the run did not start")
    for sink in sinks:
        if isinstance(sink, JsonlSink) and sink.error is not None:
            console.warn(
                f"cannot write events to {sink.path}: {sink.error.strerror or sink.error};"
                f" the rest stay pending: `flowrun resume {run_id} --events FILE` delivers them"
            )
    if ended is not None:
        ended(run_id)  # --junit, the job summary: written however the run ended
    report = run_result(store, run_id)
    report["costs"] = run_costs(store, run_id)
    console.final_summary(report, quiet=quiet, ran=found != "succeeded")
    if report["costs"]["calls"]:
        console.cost_table(report["costs"])
    if json_out:
        write_json(report)
    if error is not None:
        if not json_out:
            raise error
        console.error_line(error)
        sys.exit(error.exit_code)


def do_run(
    *,
    file: str,
    sets: list[str],
    input_file: str | None,
    run_id: str | None,
    db: str | None,
    durability: str,
    shown: Shown,
    llm: LLMOptions | None = None,
    if_exists: str = "fail",
) -> None:
    check_run_id(run_id)
    if if_exists not in ("continue", "fail"):
        raise UsageError(f"--if-exists must be continue or fail, not {if_exists!r}")
    wf = load_workflow(file)
    llm = (llm or LLMOptions()).prepare()
    inputs = parse_inputs(sets, input_file)
    for k in inputs:
        if k not in wf.state:
            raise UsageError(
                f"--set/--input: {k!r} is not a declared state key",
                hint=f"declared: {', '.join(wf.state) or '(none)'}",
            )
    store = open_store(db, durability)

    def go(engine: Engine) -> Any:
        llm.apply(engine.settings)
        return engine.start(wf, run_id=run_id, inputs=inputs, if_exists=if_exists)

    _execute(store, go, run_id, wf, shown)


def stored_workflow(store: Store, run_id: str) -> Workflow:
    """The workflow a run was started with, as stored in the database."""
    path, text = store.workflow_text(run_id)
    try:
        return load_workflow(path, text=text)
    except WorkflowError as exc:
        raise WorkflowError(
            f"stored workflow of run {run_id} no longer validates: {exc.message}",
            hint="pass --workflow FILE",
        ) from None


def _shown_path(path: str) -> str:
    """``path`` as the user would type it here: relative to the working folder if inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def do_resume(
    *,
    ref: str,
    workflow: str | None,
    force: bool,
    db: str | None,
    durability: str,
    shown: Shown,
    llm: LLMOptions | None = None,
) -> None:
    llm = (llm or LLMOptions()).prepare()
    store = open_store(db, durability, create=False)
    run_id = store.resolve_run_id(ref)
    if workflow:
        wf = load_workflow(workflow)
    else:
        wf = stored_workflow(store, run_id)
        if file_changed(wf):
            here = _shown_path(wf.path)
            console.err(
                f"note: {here} changed since this run started; resuming with the stored"
                f" version (use --workflow {here} to resume with the new one)"
            )

    def go(engine: Engine) -> Any:
        llm.apply(engine.settings)
        return engine.resume(wf, run_id, force=force)

    _execute(store, go, run_id, wf, shown)
