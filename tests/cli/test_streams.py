"""Reports on stdout, progress on stderr, and a reader that goes away never changes a run.

Every test runs the installed ``flowrun`` command; the pipelines are real shell
pipelines into ``head``, so the broken pipes are real ones.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

# ten steps; each prints 200 lines to stdout and sleeps a little, so the reader of a
# pipeline is long gone before the run's later writes
CHATTY_WF = """
name: chatty
state:
  n: {default: 0}
start: tick
nodes:
  tick:
    python: chatty:tick
    routes:
      - when: "state.n < 10"
        to: tick
      - to: END
"""
CHATTY_PY = """
import time

def tick(state, ctx):
    for i in range(200):
        print(f"tick {state['n']} line {i}")
    time.sleep(0.03)
    return {"n": state["n"] + 1}
"""


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # the timeout only turns a hang into a failure; nothing here is timed
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def pipeline(command: str, cwd: Path) -> tuple[int, str]:
    """Run ``command`` in bash; return flowrun's own exit code (the pipeline's first) and
    what the pipeline's reader printed."""
    p = subprocess.run(
        ["bash", "-c", f"{command}; exit ${{PIPESTATUS[0]}}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return p.returncode, p.stdout


def assert_ran_to_the_end(tmp_path: Path, run_id: str) -> None:
    show = flowrun("show", run_id, "--db", "f.db", "--json", cwd=tmp_path)
    assert show.returncode == 0, show.stdout + show.stderr
    detail = json.loads(show.stdout)
    assert detail["status"] == "succeeded" and detail["steps"] == 10
    assert detail["state"] == {"n": 10}
    assert detail["nodes"]["tick"]["ok"] == 10 and detail["nodes"]["tick"]["failed"] == 0


def test_a_reader_that_leaves_stdout_early_never_changes_the_run(
    write: Write, tmp_path: Path
) -> None:
    write("wf.yaml", CHATTY_WF)
    write("chatty.py", CHATTY_PY)
    code, first = pipeline(
        f"{shlex.quote(FLOWRUN)} run wf.yaml --db f.db --run-id out 2>err.txt | head -1",
        tmp_path,
    )
    assert code == 0
    assert first == ""  # node output goes to stderr: stdout holds only --json
    err = (tmp_path / "err.txt").read_text()
    assert "run out succeeded after 10 step(s)" in err
    assert "tick 9 line 199" in err
    assert "Exception ignored" not in err and "BrokenPipe" not in err
    assert_ran_to_the_end(tmp_path, "out")


def test_a_reader_that_leaves_stderr_early_never_changes_the_run(
    write: Write, tmp_path: Path
) -> None:
    write("wf.yaml", CHATTY_WF)
    write("chatty.py", CHATTY_PY)
    code, first = pipeline(
        f"{shlex.quote(FLOWRUN)} run wf.yaml --db f.db --run-id err 2>&1 | head -1", tmp_path
    )
    assert code == 0
    assert first == "run err (chatty) started\n"
    assert_ran_to_the_end(tmp_path, "err")


def test_json_result_into_a_closed_pipe_keeps_the_runs_exit_code(
    write: Write, tmp_path: Path
) -> None:
    write("wf.yaml", CHATTY_WF)
    write("chatty.py", CHATTY_PY)
    code, _ = pipeline(
        f"{shlex.quote(FLOWRUN)} run wf.yaml --db f.db --run-id js --json 2>err.txt | head -n 0",
        tmp_path,
    )
    assert code == 0
    err = (tmp_path / "err.txt").read_text()
    assert "internal error" not in err and "Exception ignored" not in err
    assert_ran_to_the_end(tmp_path, "js")


BIG_WF = """
name: big
state:
  items: {default: []}
nodes:
  fill:
    set: {items: "{{ range(30000) | list }}"}
"""


def test_a_report_bigger_than_the_pipe_into_head_exits_0_without_complaint(
    write: Write, tmp_path: Path
) -> None:
    write("big.yaml", BIG_WF)
    assert flowrun("run", "big.yaml", "--db", "f.db", "--run-id", "b", cwd=tmp_path).returncode == 0
    show = f"{shlex.quote(FLOWRUN)} show b --full --db f.db"  # 30,000 lines of state
    code, first = pipeline(f"{show} 2>err.txt | head -1", tmp_path)
    assert (code, first) == (0, "run       b\n")
    assert (tmp_path / "err.txt").read_text() == ""
    code, first = pipeline(f"{show} 2>&1 | head -1", tmp_path)
    assert (code, first) == (0, "run       b\n")


OK_WF = """
name: ok
state:
  x: {default: 0}
  big: {default: ""}
nodes:
  a:
    python: spend:work
    save: x
    next: b
  b:
    set: {big: "{{ 'y' * 5000 }}"}
"""
SPEND = """
def work(state, ctx):
    ctx.record_llm_usage("test-model", 1_000_000, 0)  # $1.00 at the test price
    return 1
"""
PRICING = "test-model: {input: 1.0, output: 0}\n"


def test_each_report_is_on_stdout_and_stderr_holds_none(write: Write, tmp_path: Path) -> None:
    write("wf.yaml", OK_WF)
    write("spend.py", SPEND)
    write("prices.yaml", PRICING)
    ran = flowrun(
        "run", "wf.yaml", "--db", "f.db", "--run-id", "r1", "--pricing", "prices.yaml", cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""  # without --json a run's progress and summary are on stderr
    assert "run r1 succeeded" in ran.stderr
    reports = {
        "runs": "r1",
        "show r1": "status    succeeded",
        "costs r1": "LLM costs of run r1",
        "validate wf.yaml": "wf.yaml: ok (ok: 2 nodes, 2 state keys)",
        "graph wf.yaml": "flowchart TD",
        "prune --dry-run": "dry run: would delete 0 runs",
    }
    for args, text in reports.items():
        db = [] if "wf.yaml" in args else ["--db", "f.db"]
        p = flowrun(*args.split(), *db, cwd=tmp_path)
        assert p.returncode == 0, (args, p.stderr)
        assert text in p.stdout, (args, p.stdout)
        assert p.stderr == "", (args, p.stderr)
    runs = json.loads(flowrun("runs", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    assert isinstance(runs, list) and [r["run_id"] for r in runs] == ["r1"]


def test_show_prints_times_costs_durations_that_add_up_and_cuts_big_values(
    write: Write, tmp_path: Path
) -> None:
    write("wf.yaml", OK_WF)
    write("spend.py", SPEND)
    write("prices.yaml", PRICING)
    ran = flowrun(
        "run", "wf.yaml", "--db", "f.db", "--run-id", "r1", "--pricing", "prices.yaml", cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    detail = json.loads(flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    assert detail["costs"]["total_usd"] == 1.0 and detail["costs"]["calls"] == 1
    steps = [s["duration_s"] for s in detail["step_log"]]
    assert len(steps) == 2 and all(s > 0 for s in steps)
    assert round(sum(steps), 6) == detail["steps_duration_s"] <= detail["duration_s"]
    assert detail["state"]["big"] == "y" * 5000  # --json always holds everything

    text = flowrun("show", "r1", "--db", "f.db", cwd=tmp_path).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    when = time.strftime("%Y-%m-%d", time.localtime(detail["created_at"]))
    assert lines["started"].split()[1] == when and lines["finished"].split()[1] == when
    assert lines["duration"].startswith("duration  ") and "2 committed step(s)" in text
    assert lines["costs"] == "costs     $1.0000 in 1 LLM call(s), 1,000,000 tokens in, 0 out"
    assert lines["big"].endswith("… (5,002 characters; --full shows all)")
    assert len(lines["big"]) < 300
    full = flowrun("show", "r1", "--db", "f.db", "--full", cwd=tmp_path).stdout
    assert f'"big": "{"y" * 5000}"' in full


FLAKY_WF = """
name: flaky
state:
  n: {default: 0}
nodes:
  once:
    python: flaky:work
    retry: {max_attempts: 2, backoff: 10ms}
"""
FLAKY_PY = """
def work(state, ctx):
    if ctx.attempt == 1:
        raise RuntimeError("first try fails")
    return {"n": 1}
"""


def test_show_lists_each_failed_attempt_with_its_own_duration(write: Write, tmp_path: Path) -> None:
    write("wf.yaml", FLAKY_WF)
    write("flaky.py", FLAKY_PY)
    assert flowrun("run", "wf.yaml", "--db", "f.db", cwd=tmp_path).returncode == 0
    detail = json.loads(flowrun("show", "latest", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    (retry,) = detail["nodes"]["once"]["retries"]
    assert (
        retry["attempt"] == 1
        and retry["error"] == "flaky.py:3 in work: RuntimeError: first try fails"
    )
    assert 0 <= retry["duration_s"] <= detail["nodes"]["once"]["duration_s"]
    text = flowrun("show", "latest", "--db", "f.db", cwd=tmp_path).stdout
    assert "step 0: attempt 1 failed after " in text and ": RuntimeError: first try fails" in text


SLOW_WF = """
name: slow
state:
  done: {default: false}
nodes:
  wait:
    run: [sleep, "60"]
    output: none
    next: finish
  finish:
    set: {done: true}
"""
FAIL_WF = """
name: broken
state:
  x: {default: 0}
nodes:
  boom:
    run: [sh, -c, "echo the disk is full >&2; exit 3"]
"""


def test_runs_has_a_header_aligns_long_ids_and_tells_a_crashed_run_from_a_live_one(
    write: Write, tmp_path: Path
) -> None:
    write("slow.yaml", SLOW_WF)
    write("fail.yaml", FAIL_WF)
    long_id = "ci-job-" + "7" * 40
    assert (
        flowrun("run", "fail.yaml", "--db", "f.db", "--run-id", long_id, cwd=tmp_path).returncode
        == 1
    )
    proc = subprocess.Popen(
        [FLOWRUN, "run", "slow.yaml", "--db", "f.db", "--run-id", "live"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:  # until the run holds its lease and its command runs
            rows = json.loads(flowrun("runs", "--db", "f.db", "--json", cwd=tmp_path).stdout)
            if any(r["run_id"] == "live" and r["live"] for r in rows):
                break
            assert proc.poll() is None, "the slow run ended early"
            time.sleep(0.05)
        live = flowrun("runs", "--db", "f.db", cwd=tmp_path).stdout.splitlines()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9: the run is left `running`
        proc.wait()
    head = live[0].split()
    assert head == ["run", "status", "workflow", "steps", "started", "duration", "error"]
    column = {name: live[0].index(name) for name in head}
    rows = {line.split()[0]: line for line in live[1:]}
    assert set(rows) == {"live", long_id}
    for line in rows.values():  # every cell starts under its header, whatever the id's length
        assert line[column["status"] - 2 : column["status"]] == "  "
        assert line[column["workflow"] - 2 : column["workflow"]] == "  "
    assert rows["live"][column["status"] :].split()[0] == "running"
    assert rows[long_id][column["status"] :].split()[0] == "failed"
    assert rows[long_id][column["error"] :].startswith(
        "node 'boom' failed after 1 attempt(s): command failed (exit code 3)"
    )
    assert rows["live"][column["error"] :] == ""

    after = flowrun("runs", "--db", "f.db", cwd=tmp_path).stdout.splitlines()
    crashed = next(line for line in after if line.startswith("live "))
    assert crashed[column["status"] :].split()[0] == "crashed"
    rows_json = json.loads(flowrun("runs", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    gone = next(r for r in rows_json if r["run_id"] == "live")
    assert gone["status"] == "running" and gone["live"] is False  # the stored status stays
    show = flowrun("show", "live", "--db", "f.db", cwd=tmp_path)
    assert "status    crashed" in show.stdout and "flowrun resume live" in show.stdout


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    p = flowrun("--version", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == f"flowrun {version('flowrun')}\n"


def test_top_level_help_shows_every_commands_first_docstring_line_whole(tmp_path: Path) -> None:
    from flowrun.cli.app import app

    env = {**os.environ, "COLUMNS": "80"}
    p = subprocess.run(
        [FLOWRUN, "--help"], cwd=tmp_path, capture_output=True, text=True, env=env, check=True
    )
    commands = [c for c in app.registered_commands if c.callback is not None]
    assert len(commands) >= 9
    for c in commands:
        assert c.callback is not None and c.callback.__doc__
        first = c.callback.__doc__.strip().splitlines()[0]
        name = c.name or c.callback.__name__
        assert f"  {name}" in p.stdout and first in p.stdout, (name, first)
    assert "..." not in p.stdout.split("Commands:")[1]  # Click marks a cut short help so
