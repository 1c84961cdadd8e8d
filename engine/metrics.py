"""Prometheus metrics for one run (SPEC §7), and the exporter that serves, pushes and writes them.

:class:`RunMetrics` is an :class:`Observer` (hooks arrive from the coordinator;
prometheus-client's metrics are thread-safe) and an event sink, on a
``CollectorRegistry`` of its own, never the process-global one. Labels stay
bounded: node names, models, statuses, retry reasons. The run id appears only in
``flowrun_run_info``.

:class:`Exporter` owns the lifetime: :meth:`Exporter.start` binds the HTTP
endpoint before the first step; :meth:`Exporter.close` writes the textfile,
pushes to a Pushgateway, lingers if asked, and shuts the endpoint down. A push or
file write that fails only warns: observability never changes a run's outcome.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import UsageError
from .nodes.registry import kind_of
from .observer import Observer
from .records import Task
from .spec.model import Workflow
from .store.base import Event

# From a 5 ms Python call to a 10-minute command (the default node timeout).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PUSH_JOB = "flowrun"
PUSH_TIMEOUT_S = 10.0
POLL_S = 0.05  # how soon the HTTP loop notices shutdown
LINGER_MAX_S = 86_400.0  # a finite --metrics-linger is at most a day; inf: until a signal


class RunMetrics(Observer):
    """Every SPEC §7 series for one run, fed by the engine's observer hooks and its events."""

    def __init__(self, workflow: Workflow | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.run_id = ""
        self.inflight = Gauge(
            "flowrun_inflight_nodes", "Tasks running on the executor right now.", registry=r
        )
        self.queued = Gauge(
            "flowrun_queue_depth",
            "Tasks handed to the executor and waiting for a free worker.",
            registry=r,
        )
        self.latency = Histogram(
            "flowrun_step_latency_seconds",
            "Wall time of one task of a node, all its attempts included.",
            ["node", "status"],
            buckets=BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "flowrun_retries_total",
            "Failed attempts that were retried, by node and failure reason.",
            ["node", "reason"],
            registry=r,
        )
        self.conflicts = Counter(
            "flowrun_merge_conflicts_total",
            "Two tasks of one step wrote the same replace key.",
            registry=r,
        )
        self.waits = Counter(
            "flowrun_backpressure_events_total",
            "Times the dispatcher waited for a slot because queue_depth was reached.",
            registry=r,
        )
        self.tokens = Counter(
            "flowrun_llm_tokens_total",
            "LLM tokens billed, by model and direction (in includes cached input).",
            ["model", "direction"],
            registry=r,
        )
        self.cost = Counter(
            "flowrun_llm_cost_usd_total",
            "LLM spend in US dollars, by model (unpriced calls add nothing).",
            ["model"],
            registry=r,
        )
        self.budget_used = Gauge(
            "flowrun_budget_used_ratio",
            "The highest budget level the run's LLM spend reached (0.5, 0.8), 0 before.",
            registry=r,
        )
        self.budget_warnings = Counter(
            "flowrun_budget_warnings_total",
            "Budget levels the run's LLM spend reached, by level.",
            ["level"],
            registry=r,
        )
        self.executions = Counter(
            "flowrun_node_executions_total",
            "Tasks of a node that finished, by outcome (ok or failed).",
            ["node", "status"],
            registry=r,
        )
        self.info = Gauge(
            "flowrun_run_info",
            "The run being executed (always 1).",
            ["run_id", "workflow"],
            registry=r,
        )
        self.events = Counter(
            "flowrun_events_total",
            "Events delivered from the run's outbox, by type.",
            ["type"],
            registry=r,
        )
        if workflow is not None:
            self.prime(workflow)

    def prime(self, workflow: Workflow) -> None:
        """Create the labelled series a workflow can produce, at 0, so a scrape sees them all."""
        for name, node in workflow.nodes.items():
            self.executions.labels(name, "ok")
            self.executions.labels(name, "failed")
            self.latency.labels(name, "ok")  # 19 samples each: failed ones appear on first use
            model = kind_of(node).model(node)
            if isinstance(model, str) and "{" not in model:
                self.tokens.labels(model, "in")
                self.tokens.labels(model, "out")
                self.cost.labels(model)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    # observer hooks -----------------------------------------------------------
    def run_started(self, run_id: str, workflow: str, step: int, resumed: bool) -> None:
        self.run_id = run_id
        self.info.labels(run_id, workflow).set(1)

    def task_queued(self, step: int, task: Task) -> None:
        self.queued.inc()

    def task_dropped(self, step: int, task: Task) -> None:
        self.queued.dec()

    def task_started(self, step: int, task: Task) -> None:
        self.queued.dec()
        self.inflight.inc()

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
        if reused:  # a result saved before a crash: nothing ran in this process
            return
        self.inflight.dec()
        self.executions.labels(task.node, status).inc()
        self.latency.labels(task.node, status).observe(duration)

    def task_retried(
        self,
        step: int,
        task: Task,
        attempt: int,
        reason: str,
        error: str,
        delay: float,
    ) -> None:
        self.retries.labels(task.node, reason or "error").inc()

    def backpressure(self) -> None:
        self.waits.inc()

    def merge_conflict(self, key: str, nodes: tuple[str, str]) -> None:
        self.conflicts.inc()

    def llm_usage(
        self,
        node: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cached: int,
        cost: float | None,
    ) -> None:
        self.tokens.labels(model, "in").inc(max(0, tokens_in or 0))
        self.tokens.labels(model, "out").inc(max(0, tokens_out or 0))
        c = self.cost.labels(model)
        if cost:
            c.inc(max(0.0, cost))

    def budget_warning(self, level: float, spent_usd: float, max_cost_usd: float) -> None:
        self.budget_used.set(level)  # the ledger reports levels in rising order
        self.budget_warnings.labels(f"{level:g}").inc()

    def run_finished(self, status: str, error: str | None) -> None:
        # tasks cancelled by an interrupt never start or finish: nothing runs or waits now
        self.inflight.set(0)
        self.queued.set(0)

    # event sink -----------------------------------------------------------------
    durable = False  # counts events, keeps none: delivery is the events file's to mark

    def emit(self, event: Event) -> None:
        self.events.labels(event.type).inc()

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What the user asked for: ``--metrics-port/-addr/-linger/-push/-file``."""

    port: int | None = None
    addr: str = "127.0.0.1"
    linger_s: float = 0.0
    push_url: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        # a plain value, checked as the options are made: every command rejects it up front
        linger = self.linger_s
        if math.isnan(linger) or linger < 0:
            raise UsageError(f"--metrics-linger {linger:g}: must be a number of seconds ≥ 0")
        if LINGER_MAX_S < linger < math.inf:
            raise UsageError(
                f"--metrics-linger {linger:g}: more than the maximum of {LINGER_MAX_S:g} seconds",
                hint="--metrics-linger inf serves until Ctrl-C or SIGTERM",
            )

    @property
    def wanted(self) -> bool:
        return self.port is not None or bool(self.push_url) or bool(self.file)

    def check(self) -> None:
        """Reject bad values before anything runs (exit 2)."""
        if self.port is not None and not 0 <= self.port <= 65535:
            raise UsageError(f"--metrics-port {self.port}: must be 0..65535 (0 picks a free one)")
        if self.push_url:
            u = urlparse(self.push_url if "://" in self.push_url else f"http://{self.push_url}")
            if u.scheme not in ("http", "https") or not u.hostname:
                raise UsageError(
                    f"--metrics-push {self.push_url}: not an http(s) URL",
                    hint="e.g. --metrics-push http://127.0.0.1:9091",
                )
        if self.file:
            parent = Path(self.file).resolve().parent
            if not parent.is_dir():
                raise UsageError(
                    f"--metrics-file {self.file}: folder {parent} does not exist",
                    hint="create it first; the file is replaced atomically at the end of the run",
                )
            if Path(self.file).is_dir():
                raise UsageError(f"--metrics-file {self.file}: is a folder, not a file")


class Exporter:
    """One run's metrics endpoint, Pushgateway push and textfile: start before, close after."""

    def __init__(
        self,
        options: ExportOptions,
        metrics: RunMetrics,
        *,
        warn: Callable[[str], None],
        info: Callable[[str], None],
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.warn = warn
        self.info = info
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._linger_over = threading.Event()

    def start(self) -> str | None:
        """Validate the options and bind the HTTP endpoint; return its URL (None: no port)."""
        self.options.check()
        port = self.options.port
        if port is None:
            return None
        addr = self.options.addr
        try:
            self._server = _bind(addr, port, self.metrics.registry)
        except socket.gaierror as exc:
            raise UsageError(
                f"--metrics-addr {addr}: not a local address ({exc.strerror or exc})",
                hint="the default is 127.0.0.1; ::1 or 0.0.0.0 also work",
            ) from None
        except OSError as exc:
            raise UsageError(
                f"--metrics-port {port}: cannot listen on {addr}: {exc.strerror or exc}",
                hint="pick another port, or 0 for a free one",
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name="flowrun-metrics",
            daemon=True,
        )
        self._thread.start()
        bound = self._server.server_port
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{bound}/metrics"
        return self.url

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Write the final values out, linger if asked, and stop serving. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.metrics.run_id:  # the run started: there are final values to hand over
                # nothing runs or waits once the command exits, even if the run ended by
                # an error that never reached run_finished (a lost lease, a store error)
                self.metrics.inflight.set(0)
                self.metrics.queued.set(0)
                if self.options.file:
                    self.write_file(self.options.file)
                if self.options.push_url:
                    self.push(self.options.push_url)
                if self._server is not None and self.options.linger_s > 0:
                    self._linger(self.options.linger_s)
        finally:
            self.stop()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def write_file(self, path: str) -> None:
        """Textfile-collector format, replaced atomically (temp file in the same folder, rename)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(self.metrics.exposition())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.warn(f"--metrics-file {path}: not written: {exc.strerror or exc}")

    def push(self, url: str) -> None:
        """PUT the registry to ``/metrics/job/flowrun/run_id/<id>`` (replaces that group)."""
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(
                url,
                job=PUSH_JOB,
                registry=self.metrics.registry,
                grouping_key={"run_id": self.metrics.run_id},
                timeout=PUSH_TIMEOUT_S,
            )
        except Exception as exc:  # any failure: warn, never fail the run
            from urllib.error import HTTPError, URLError

            cause: object = exc
            if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
                cause = exc.reason  # e.g. [Errno 111] Connection refused
            self.warn(
                f"--metrics-push {url}: push failed ({cause}); the run's outcome is unaffected"
            )

    def end_linger(self) -> None:
        """Stop lingering now (safe from a signal handler); :meth:`close` then returns."""
        self._linger_over.set()

    def _linger(self, seconds: float) -> None:
        if math.isinf(seconds):
            self.info(f"metrics stay up at {self.url} until Ctrl-C or SIGTERM")
        else:
            self.info(f"metrics stay up at {self.url} for {seconds:g}s (Ctrl-C or SIGTERM ends it)")
        end = time.monotonic() + seconds
        with contextlib.suppress(KeyboardInterrupt):  # a caller without signal handlers
            # short waits: a signal may land on another thread, and its Python handler
            # runs only once this (main) thread wakes up
            while (left := end - time.monotonic()) > 0:
                if self._linger_over.wait(min(left, POLL_S)):
                    break


def _bind(addr: str, port: int, registry: Any) -> Any:
    """A threaded WSGI server for prometheus-client's app, bound but not yet serving.

    Ours rather than ``start_http_server``: its loop polls for shutdown every 0.5 s,
    which every run would pay at exit.
    """
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    host = str(sockaddr[0])
    return make_server(host, port, make_wsgi_app(registry), Server, handler_class=Quiet)


def exporter_for(
    options: ExportOptions,
    workflow: Workflow,
    *,
    warn: Callable[[str], None],
    info: Callable[[str], None],
) -> Exporter | None:
    """An exporter for this run, or None when no metrics option was given."""
    if not options.wanted:
        return None
    return Exporter(options, RunMetrics(workflow), warn=warn, info=info)
