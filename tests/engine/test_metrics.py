"""SPEC §7: the per-run Prometheus registry, the exporter's lifetime, push and textfile output.

The end-to-end tests run the installed ``flowrun`` with ``--metrics-port 0`` and
scrape it over real HTTP on 127.0.0.1. Workers block on a gate file the test
creates, so "while it runs" is a state the test waits for, not a sleep.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flowrun.engine.metrics import BUCKETS, Exporter, ExportOptions, RunMetrics
from flowrun.engine.records import Task
from flowrun.engine.spec import load_workflow
from prometheus_client.parser import text_string_to_metric_families

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

# name in the exposition -> (type, label names), straight from SPEC §7's table
SPEC_SERIES: dict[str, tuple[str, set[str]]] = {
    "flowrun_inflight_nodes": ("gauge", set()),
    "flowrun_queue_depth": ("gauge", set()),
    "flowrun_step_latency_seconds": ("histogram", {"node", "status"}),
    "flowrun_retries_total": ("counter", {"node", "reason"}),
    "flowrun_merge_conflicts_total": ("counter", set()),
    "flowrun_backpressure_events_total": ("counter", set()),
    "flowrun_llm_tokens_total": ("counter", {"model", "direction"}),
    "flowrun_llm_cost_usd_total": ("counter", {"model"}),
    "flowrun_node_executions_total": ("counter", {"node", "status"}),
    "flowrun_run_info": ("gauge", {"run_id", "workflow"}),
}

LIB = """
import time
from pathlib import Path

GATE = Path(__file__).parent / "gate"

def flaky(state, ctx):
    if ctx.attempt == 1:
        raise RuntimeError("transient glitch")
    return {"who": "flaky"}

def twin(state, ctx):
    ctx.record_llm_usage("gpt-4o-mini", 1000, 200)  # a python node that called an LLM itself
    return {"who": "twin"}

def work(state, ctx):
    deadline = time.monotonic() + 60
    while not GATE.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(0.01)
    return ctx.item * 10

def boom(state, ctx):
    raise ValueError("broken on purpose")
"""

# flaky and twin both write `who` in step 0 (one merge conflict, kept by
# last_writer_wins); flaky fails once; then 8 gated tasks meet 2 workers and a
# queue of 2, so the dispatcher has to wait.
FANOUT = """
name: fanout
state:
  who:   {default: null}
  items: {default: [1, 2, 3, 4, 5, 6, 7, 8]}
  out:   {default: [], reducer: append}
config:
  max_concurrency: 2
  queue_depth: 2
  conflict_policy: last_writer_wins
start: [flaky, twin]
nodes:
  flaky:
    python: lib:flaky
    retry: {max_attempts: 2, backoff: 10ms}
    next: work
  twin:
    python: lib:twin
    next: work
  work:
    foreach: "{{ state.items }}"
    python: lib:work
    save: out
"""

TINY = """
name: tiny
state:
  who: {default: null}
nodes:
  only:
    python: lib:twin
"""


class Proc:
    """A ``flowrun`` subprocess whose stderr is drained by a thread (so it never blocks)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.p = subprocess.Popen(
            [FLOWRUN, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_line(self, prefix: str, hang_guard: float = 30.0) -> str:
        end = time.monotonic() + hang_guard
        with self._new:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.p.poll() is not None and not self._t.is_alive():
                    raise AssertionError(f"no {prefix!r} line; stderr:\n" + "\n".join(self.lines))
                if time.monotonic() > end:
                    raise AssertionError(f"hung waiting for {prefix!r}:\n" + "\n".join(self.lines))
                self._new.wait(0.1)

    def finish(self) -> tuple[int, str, str]:
        out, _ = self.p.communicate(timeout=60)
        self._t.join(timeout=10)
        return self.p.returncode, out, "\n".join(self.lines)


def scrape(url: str) -> dict[str, Any]:
    """{family name: family} from one HTTP scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return families(text)


def families(text: str) -> dict[str, Any]:
    out = {}
    for f in text_string_to_metric_families(text):
        # the parser drops a counter's _total from the family name; SPEC names keep it
        out[f.name + "_total" if f.type == "counter" else f.name] = f
    return out


def value(fams: dict[str, Any], sample: str, **labels: str) -> float:
    """The sum of the samples called ``sample`` whose labels include ``labels``."""
    hits = [
        s.value
        for fam in fams.values()
        for s in fam.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert hits, f"no sample {sample}{labels}"
    return float(sum(hits))


def assert_spec_series(fams: dict[str, Any]) -> None:
    for name, (kind, labels) in SPEC_SERIES.items():
        assert name in fams, f"{name} missing"
        assert fams[name].type == kind, f"{name} is {fams[name].type}, SPEC says {kind}"
        for s in fams[name].samples:
            if s.name.endswith("_created"):
                continue
            got = set(s.labels) - {"le"}
            assert got == labels, f"{s.name} labels {got}, SPEC says {labels}"


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def metrics_url(proc: Proc) -> str:
    line = proc.wait_line("metrics: ")
    url = line.split(" ", 1)[1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    return url


@pytest.fixture
def fanout(write: Write, tmp_path: Path) -> Path:
    write("lib.py", LIB)
    write("tiny.yaml", TINY)
    return write("fanout.yaml", FANOUT)


def test_scrape_during_fanout_sees_inflight_backpressure_retries_and_every_series(
    fanout: Path, tmp_path: Path
) -> None:
    prom = tmp_path / "final.prom"
    proc = Proc(
        ["run", str(fanout), "--db", "f.db", "--metrics-port", "0", "--metrics-file", str(prom)],
        tmp_path,
    )
    url = metrics_url(proc)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    end = time.monotonic() + 30  # a hang guard, not a timing assertion
    while True:
        fams = scrape(url)
        if (
            "flowrun_inflight_nodes" in fams
            and value(fams, "flowrun_inflight_nodes") > 0
            and value(fams, "flowrun_queue_depth") > 0
            and value(fams, "flowrun_backpressure_events_total") >= 1
        ):
            break
        assert time.monotonic() < end, "never saw the fan-out blocked on its gate"
        time.sleep(0.02)
    # the gated fan-out: 2 workers busy, 2 waiting in the queue, the dispatcher waiting
    assert value(fams, "flowrun_inflight_nodes") == 2
    assert value(fams, "flowrun_queue_depth") == 2
    assert value(fams, "flowrun_retries_total", node="flaky", reason="error") == 1
    assert value(fams, "flowrun_merge_conflicts_total") == 1
    assert value(fams, "flowrun_node_executions_total", node="flaky", status="ok") == 1
    assert value(fams, "flowrun_node_executions_total", node="work", status="ok") == 0
    assert value(fams, "flowrun_llm_tokens_total", model="gpt-4o-mini", direction="in") == 1000
    assert value(fams, "flowrun_llm_tokens_total", model="gpt-4o-mini", direction="out") == 200
    assert value(fams, "flowrun_llm_cost_usd_total", model="gpt-4o-mini") > 0
    rid = proc.lines[0].split()[1]
    assert value(fams, "flowrun_run_info", run_id=rid, workflow="fanout") == 1
    assert_spec_series(fams)
    # run ids live only in flowrun_run_info
    for name, fam in fams.items():
        if name != "flowrun_run_info":
            assert all(rid not in json.dumps(s.labels) for s in fam.samples), name

    (tmp_path / "gate").touch()
    code, _, err = proc.finish()
    assert code == 0, err
    assert port_closed(port), "the exporter outlived the command"

    final = families(prom.read_text())
    assert_spec_series(final)
    assert value(final, "flowrun_node_executions_total", node="work", status="ok") == 8
    assert value(final, "flowrun_inflight_nodes") == 0
    assert value(final, "flowrun_queue_depth") == 0
    assert value(final, "flowrun_backpressure_events_total") >= 1
    assert value(final, "flowrun_step_latency_seconds_count", node="work", status="ok") == 8
    assert value(final, "flowrun_events_total", type="task_succeeded") == 10


def test_interrupted_run_closes_the_port_and_exits_130(fanout: Path, tmp_path: Path) -> None:
    proc = Proc(["run", str(fanout), "--db", "f.db", "--metrics-port", "0"], tmp_path)
    url = metrics_url(proc)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    end = time.monotonic() + 30
    while value(fams := scrape(url), "flowrun_inflight_nodes") == 0:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert fams
    proc.p.send_signal(signal.SIGINT)
    time.sleep(0.1)
    (tmp_path / "gate").touch()  # let the running tasks finish within the grace period
    code, _, err = proc.finish()
    assert code == 130, err
    assert "Traceback" not in err
    assert port_closed(port)


def test_failed_run_still_writes_the_file_and_closes_the_port(write: Write, tmp_path: Path) -> None:
    write("lib.py", LIB)
    wf = write(
        "fail.yaml",
        """
        name: fails
        state: {}
        nodes:
          bad:
            python: lib:boom
            retry: {max_attempts: 3, backoff: 1ms}
        """,
    )
    prom = tmp_path / "out" / "m.prom"
    prom.parent.mkdir()
    prom.write_text("old contents\n")
    proc = Proc(
        ["run", str(wf), "--db", "f.db", "--metrics-port", "0", "--metrics-file", str(prom)],
        tmp_path,
    )
    port = int(metrics_url(proc).rsplit(":", 1)[1].split("/")[0])
    code, _, err = proc.finish()
    assert code == 1, err
    assert port_closed(port)
    fams = families(prom.read_text())
    assert value(fams, "flowrun_node_executions_total", node="bad", status="failed") == 1
    assert value(fams, "flowrun_retries_total", node="bad", reason="error") == 2
    assert value(fams, "flowrun_step_latency_seconds_count", node="bad", status="failed") == 1
    assert os.listdir(prom.parent) == ["m.prom"], "the temporary file was left behind"
    assert oct(prom.stat().st_mode & 0o777) == oct(0o644)


def test_linger_keeps_final_values_up_until_ctrl_c(fanout: Path, tmp_path: Path) -> None:
    proc = Proc(
        ["run", "tiny.yaml", "--db", "f.db", "--metrics-port", "0", "--metrics-linger", "60"],
        tmp_path,
    )
    url = metrics_url(proc)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proc.wait_line("metrics stay up at ")
    fams = scrape(url)
    assert value(fams, "flowrun_node_executions_total", node="only", status="ok") == 1
    assert value(fams, "flowrun_events_total", type="run_succeeded") == 1
    proc.p.send_signal(signal.SIGINT)
    code, _, err = proc.finish()
    assert code == 0, err  # the run's outcome, not 130: Ctrl-C only ended the linger
    assert port_closed(port)


FAILS = """
name: fails
state: {}
nodes:
  bad:
    python: lib:boom
"""


@pytest.mark.parametrize(
    ("linger", "sig", "workflow", "run_code"),
    [
        ("60", signal.SIGTERM, "tiny.yaml", 0),
        ("inf", signal.SIGTERM, "fails.yaml", 1),
        ("inf", signal.SIGINT, "tiny.yaml", 0),
    ],
)
def test_a_signal_while_lingering_ends_the_linger_and_exits_with_the_runs_code(
    fanout: Path,
    write: Write,
    tmp_path: Path,
    linger: str,
    sig: signal.Signals,
    workflow: str,
    run_code: int,
) -> None:
    write("fails.yaml", FAILS)
    args = ["run", workflow, "--db", "f.db", "--metrics-port", "0", "--metrics-linger", linger]
    proc = Proc(args, tmp_path)
    port = int(metrics_url(proc).rsplit(":", 1)[1].split("/")[0])
    line = proc.wait_line("metrics stay up at ")
    assert ("until Ctrl-C or SIGTERM" in line) == (linger == "inf"), line
    assert not port_closed(port)  # still serving: lingering, not exited
    proc.p.send_signal(sig)
    code, _, err = proc.finish()
    assert code == run_code, err  # the run's outcome, not 143/130: the signal ended the linger
    assert "Traceback" not in err and "internal error" not in err
    assert port_closed(port)


@pytest.mark.parametrize(
    ("linger", "needle"),
    [
        ("-1", "--metrics-linger -1: must be a number of seconds ≥ 0"),
        ("nan", "--metrics-linger nan: must be a number of seconds ≥ 0"),
        ("1e10", "--metrics-linger 1e+10: more than the maximum of 86400 seconds"),
    ],
)
@pytest.mark.parametrize("command", ["run", "resume"])
def test_bad_metrics_linger_is_a_usage_error_before_anything_runs(
    fanout: Path, tmp_path: Path, linger: str, needle: str, command: str
) -> None:
    target = "tiny.yaml" if command == "run" else "latest"
    args = [command, target, "--db", "f.db", "--metrics-port", "0", "--metrics-linger", linger]
    p = subprocess.run(
        [FLOWRUN, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "f.db").exists()  # refused before the database was opened


def test_busy_port_bad_addr_and_bad_options_are_usage_errors_before_the_run(
    fanout: Path, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        p = subprocess.run(
            [FLOWRUN, "run", "tiny.yaml", "--db", "f.db", "--metrics-port", str(taken)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 2
    assert f"--metrics-port {taken}: cannot listen on 127.0.0.1" in p.stderr
    assert "hint:" in p.stderr and "Traceback" not in p.stderr
    for args, needle in [
        (["--metrics-push", "ftp://example.test"], "--metrics-push ftp://example.test"),
        (["--metrics-file", "no/such/dir/m.prom"], "does not exist"),
        (["--metrics-port", "70000"], "--metrics-port"),
        (
            ["--metrics-port", "0", "--metrics-addr", "999.1.1.1"],
            "--metrics-addr 999.1.1.1: not a local address",
        ),
    ]:
        p = subprocess.run(
            [FLOWRUN, "run", "tiny.yaml", "--db", "f.db", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr
        assert "Traceback" not in p.stderr
    # nothing ran for the refused invocations
    assert (
        "tiny"
        not in subprocess.run(
            [FLOWRUN, "runs", "--db", "f.db", "--json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        ).stdout
    )


# Pushgateway -----------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    status = 200
    requests: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST = _record

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[type[_Recorder], str]]:
    handler = type("Rec", (_Recorder,), {"requests": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield handler, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_push_sends_the_request_the_pushgateway_api_expects(
    fanout: Path, tmp_path: Path, recorder: tuple[type[_Recorder], str]
) -> None:
    handler, base = recorder
    p = subprocess.run(
        [FLOWRUN, "run", "tiny.yaml", "--db", "f.db", "--run-id", "ci-42", "--metrics-push", base],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert len(handler.requests) == 1
    method, path, headers, body = handler.requests[0]
    # PUT replaces the whole group: https://github.com/prometheus/pushgateway#put-method
    assert method == "PUT"
    assert path == "/metrics/job/flowrun/run_id/ci-42"
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = families(body.decode())
    assert_spec_series(fams)
    assert value(fams, "flowrun_run_info", run_id="ci-42", workflow="tiny") == 1
    assert value(fams, "flowrun_node_executions_total", node="only", status="ok") == 1
    assert "warning" not in p.stderr


def test_failed_push_warns_and_does_not_change_the_outcome(
    fanout: Path, tmp_path: Path, recorder: tuple[type[_Recorder], str]
) -> None:
    handler, base = recorder
    handler.status = 500
    p = subprocess.run(
        [FLOWRUN, "run", "tiny.yaml", "--db", "f.db", "--metrics-push", base, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "succeeded"
    assert "flowrun: warning: --metrics-push" in p.stderr and "500" in p.stderr
    with socket.socket() as s:  # and a gateway that is not there at all
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = subprocess.run(
        [FLOWRUN, "run", "tiny.yaml", "--db", "f.db", "--metrics-push", f"127.0.0.1:{dead}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "push failed" in p.stderr and "refused" in p.stderr
    assert "Traceback" not in p.stderr


PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


@pytest.mark.skipif(
    PUSHGATEWAY is None,
    reason="no pushgateway binary (apt-get install prometheus-pushgateway; .ci/run does)",
)
def test_round_trip_through_a_real_pushgateway(fanout: Path, tmp_path: Path) -> None:
    assert PUSHGATEWAY is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert gw.poll() is None and time.monotonic() < end, "pushgateway did not start"
            time.sleep(0.05)
        p = subprocess.run(
            [
                FLOWRUN,
                "run",
                "tiny.yaml",
                "--db",
                "f.db",
                "--run-id",
                "ci-7",
                "--metrics-push",
                base,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert "warning" not in p.stderr, p.stderr
        with urllib.request.urlopen(f"{base}/api/v1/metrics", timeout=10) as r:
            groups = json.load(r)["data"]
        assert [g["labels"] for g in groups] == [{"job": "flowrun", "run_id": "ci-7"}]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            fams = families(r.read().decode())
        assert (
            value(
                fams,
                "flowrun_node_executions_total",
                job="flowrun",
                run_id="ci-7",
                node="only",
                status="ok",
            )
            == 1
        )
        assert value(fams, "flowrun_run_info", job="flowrun", run_id="ci-7", workflow="tiny") == 1
    finally:
        gw.terminate()
        gw.wait(timeout=10)


# the registry itself ----------------------------------------------------------


def _fed_metrics(write: Write) -> RunMetrics:
    write("lib.py", LIB)  # validate reads the module the node names
    wf = write(
        "llm.yaml",
        """
        name: costed
        state: {answer: {default: null}}
        nodes:
          ask:
            python: lib:twin
        """,
    )
    m = RunMetrics(load_workflow(str(wf)))
    m.run_started("r-1", "costed", 0, False)
    task = Task("ask", "", 0, "k")
    m.task_queued(0, task)
    m.task_started(0, task)
    m.task_retried(0, task, 1, "http_429", "rate limited", 0.5)
    m.llm_usage("ask", "gpt-4o-mini", 1200, 300, 200, 0.00042)
    m.llm_usage("ask", "mystery-model", 10, 5, 0, None)
    m.task_finished(0, task, "ok", 0.004, 2, None, False)
    m.task_finished(0, Task("ask", "", 0, "j"), "ok", 9.0, 1, None, True)  # reused
    m.backpressure()
    m.merge_conflict("answer", ("ask", "ask"))
    m.run_finished("succeeded", None)
    return m


def test_every_series_has_the_spec_name_type_and_labels(write: Write) -> None:
    m = _fed_metrics(write)
    fams = families(m.exposition().decode())
    assert_spec_series(fams)
    assert value(fams, "flowrun_llm_tokens_total", model="gpt-4o-mini", direction="in") == 1200
    assert value(fams, "flowrun_llm_tokens_total", model="gpt-4o-mini", direction="out") == 300
    assert value(fams, "flowrun_llm_cost_usd_total", model="gpt-4o-mini") == pytest.approx(0.00042)
    assert value(fams, "flowrun_llm_cost_usd_total", model="mystery-model") == 0
    assert value(fams, "flowrun_retries_total", node="ask", reason="http_429") == 1
    # a result reused from before a crash is not an execution of this process
    assert value(fams, "flowrun_node_executions_total", node="ask", status="ok") == 1
    assert value(fams, "flowrun_step_latency_seconds_bucket", node="ask", le="0.005") == 1
    assert value(fams, "flowrun_inflight_nodes") == 0


def test_registry_is_per_run_not_the_global_one(write: Write) -> None:
    from prometheus_client import REGISTRY

    a, b = _fed_metrics(write), _fed_metrics(write)
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert REGISTRY.get_sample_value("flowrun_merge_conflicts_total") is None


def test_buckets_span_5ms_to_10min() -> None:
    assert BUCKETS[0] == 0.005 and BUCKETS[-1] == 600.0
    assert list(BUCKETS) == sorted(set(BUCKETS))


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool (apt-get install prometheus; .ci/run does)"
)
def test_exposition_passes_promtool_check_metrics(write: Write) -> None:
    assert PROMTOOL is not None
    p = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=_fed_metrics(write).exposition(),
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == b"" and p.stderr.strip() == b"", "promtool had lint remarks"


def test_exporter_serves_then_closes_on_stop(write: Write) -> None:
    m = _fed_metrics(write)
    ex = Exporter(ExportOptions(port=0), m, warn=print, info=print)
    url = ex.start()
    assert url is not None and ex.port is not None
    port = ex.port
    assert value(scrape(url), "flowrun_run_info", run_id="r-1") == 1
    ex.close()
    ex.close()  # idempotent
    assert port_closed(port)
