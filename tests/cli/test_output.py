"""What nodes print: shown live (labelled), kept per attempt, printed by `flowrun logs`.

Everything runs the installed ``flowrun`` in a subprocess, from a folder other
than the workflow's, against a real SQLite file; the crash test uses a real kill -9.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

LIB = """
import sys, time
from pathlib import Path

def hello(state, ctx):
    print("py out", ctx.index)
    print("py err", ctx.index, file=sys.stderr)
    return None

def chatty(state, ctx):
    # eight of these at once: each line waits a little, so the threads interleave
    for i in range(20):
        print(f"task {ctx.index} line {i}")
        if i % 5 == 0:
            sys.stderr.write(f"task {ctx.index} warn {i}\\n")
        time.sleep(0.002 * (1 + ctx.index % 3))
    return None

def read_csv(state, ctx):
    with open("data/x.csv") as f:
        return f.read().rstrip("\\n")

def flaky(state, ctx):
    print("try", ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("first try fails")
    return None

def big(state, ctx):
    line = "x" * 1023
    for _ in range(2048):  # 2 MiB
        print(line)
    print("the end")

def many_lines(state, ctx):
    for i in range(1, 3_000_001):
        print(i)

def gated(state, ctx):
    print("started", ctx.index)
    if ctx.index >= 2:  # the first two finish; the others wait for the resume
        while not (Path(ctx.workflow_dir) / "resumed").exists():
            time.sleep(0.02)
    print("finished", ctx.index)
"""


def flowrun(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Where flowrun is started: not the workflow's folder."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def logs_json(cwd: Path, db: Path, *args: str) -> list[dict[str, object]]:
    p = flowrun(cwd, "logs", "latest", *args, "--db", str(db), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert isinstance(data, list)
    return data


BASIC = """
name: basic
state:
  items: {default: [0, 1]}
nodes:
  fetch:
    shell: "echo one; echo two >&2; echo three"
    next: greet
  greet:
    foreach: "{{ state.items }}"
    python: lib:hello
"""


def test_logs_prints_command_and_python_output_labelled_by_task(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/basic.yaml", BASIC)
    run = flowrun(elsewhere, "run", str(wf), "--db", str(db))
    assert run.returncode == 0, run.stderr
    p = flowrun(elsewhere, "logs", "latest", "--db", str(db))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # a command's two pipes are read as data arrives: each stream keeps its order
    assert [ln for ln in lines[:3] if " | " in ln] == ["fetch | one", "fetch | three"]
    assert [ln for ln in lines[:3] if " ! " in ln] == ["fetch ! two"]
    assert lines[3:] == [
        "greet[0] | py out 0",
        "greet[0] ! py err 0",
        "greet[1] | py out 1",
        "greet[1] ! py err 1",
    ]
    only = flowrun(elsewhere, "logs", "latest", "greet", "--index", "1", "--db", str(db))
    assert only.stdout.splitlines() == ["greet[1] | py out 1", "greet[1] ! py err 1"]
    data = logs_json(elsewhere, db, "greet", "--index", "0")
    assert data == [
        {
            "step": 1,
            "node": "greet",
            "index": 0,
            "attempt": 1,
            "cut_bytes": 0,
            "lines": [
                {"stream": "stdout", "text": "py out 0"},
                {"stream": "stderr", "text": "py err 0"},
            ],
        }
    ]


def test_live_lines_on_stderr_are_labelled_and_quiet_hides_them(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/basic.yaml", BASIC)
    shown = flowrun(elsewhere, "run", str(wf), "--db", str(db))
    assert shown.returncode == 0
    lines = shown.stderr.splitlines()
    for expected in ("fetch | one", "fetch | two", "fetch | three", "greet[1] | py out 1"):
        assert expected in lines, shown.stderr
    assert "greet[0] | py err 0" in lines
    assert shown.stdout == ""  # nothing a node printed reached flowrun's stdout
    quiet = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--quiet")
    assert quiet.returncode == 0
    assert " | " not in quiet.stderr and "py out" not in quiet.stderr, quiet.stderr
    assert quiet.stdout == ""
    # hidden, but still kept
    assert [o["index"] for o in logs_json(elsewhere, db, "greet")] == [0, 1]


def test_json_stdout_stays_one_document_when_nodes_print(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/basic.yaml", BASIC)
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)  # the whole of stdout is one JSON document
    assert report["status"] == "succeeded"
    assert "greet[0] | py out 0" in p.stderr.splitlines()
    assert "fetch | one" in p.stderr.splitlines()


def test_eight_python_tasks_printing_at_once_keep_their_output_apart(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write(
        "wf/chatty.yaml",
        """
        name: chatty
        state:
          items: {default: [0, 1, 2, 3, 4, 5, 6, 7]}
        config: {max_concurrency: 8}
        nodes:
          talk:
            foreach: "{{ state.items }}"
            python: lib:chatty
        """,
    )
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db))
    assert p.returncode == 0, p.stderr
    live = [ln for ln in p.stderr.splitlines() if ln.startswith("talk[")]
    assert len(live) == 8 * (20 + 4)
    for line in live:  # each live line is labelled with the task that printed it
        m = re.fullmatch(r"talk\[(\d)\] \| task (\d) (line|warn) \d+", line)
        assert m and m[1] == m[2], line
    data = logs_json(elsewhere, db)
    assert [o["index"] for o in data] == list(range(8))
    for o in data:
        i = o["index"]
        expected = []
        for n in range(20):
            expected.append({"stream": "stdout", "text": f"task {i} line {n}"})
            if n % 5 == 0:
                expected.append({"stream": "stderr", "text": f"task {i} warn {n}"})
        assert o["lines"] == expected


def test_every_attempt_is_kept_and_attempt_selects_one(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write(
        "wf/flaky.yaml",
        """
        name: flaky
        nodes:
          flaky:
            python: lib:flaky
            retry: {max_attempts: 2, backoff: 1ms}
        """,
    )
    assert flowrun(elsewhere, "run", str(wf), "--db", str(db)).returncode == 0
    p = flowrun(elsewhere, "logs", "latest", "--db", str(db))
    assert p.stdout.splitlines() == ["flaky | try 1", "flaky (attempt 2) | try 2"]
    second = logs_json(elsewhere, db, "--attempt", "2")
    assert [(o["attempt"], o["lines"]) for o in second] == [
        (2, [{"stream": "stdout", "text": "try 2"}])
    ]


def test_logs_refuses_an_unknown_run_and_names_the_near_miss_of_a_node(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/basic.yaml", BASIC)
    assert flowrun(elsewhere, "run", str(wf), "--db", str(db)).returncode == 0
    unknown_run = flowrun(elsewhere, "logs", "nope", "--db", str(db))
    assert unknown_run.returncode == 3
    assert "no run matches 'nope'" in unknown_run.stderr
    unknown_node = flowrun(elsewhere, "logs", "latest", "gret", "--db", str(db))
    assert unknown_node.returncode == 2
    assert "has no node 'gret'" in unknown_node.stderr
    assert "did you mean 'greet'?" in unknown_node.stderr
    assert "Traceback" not in unknown_node.stderr + unknown_run.stderr


def test_output_past_the_limit_keeps_its_end_and_marks_the_cut(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write(
        "wf/big.yaml",
        """
        name: big
        nodes:
          big: {python: "lib:big"}
        """,
    )
    assert flowrun(elsewhere, "run", str(wf), "--db", str(db), "--quiet").returncode == 0
    (o,) = logs_json(elsewhere, db)
    kept = sum(len(ln["text"]) + 1 for ln in o["lines"])  # ASCII: characters are bytes
    total = 2048 * 1024 + len("the end\n")
    assert kept <= 1 << 20  # the default limit: the last 1 MiB
    assert o["cut_bytes"] == total - kept
    assert o["lines"][-1] == {"stream": "stdout", "text": "the end"}
    assert o["lines"][0]["text"] == "x" * 1023  # cut at a line start
    text = flowrun(elsewhere, "logs", "latest", "--db", str(db)).stdout.splitlines()
    assert text[0] == f"big | … {total - kept:,} bytes cut …"
    # --output-limit sets it
    small = flowrun(elsewhere, "run", str(wf), "--db", str(db), "-q", "--output-limit", "64KiB")
    assert small.returncode == 0
    (o,) = logs_json(elsewhere, db)
    kept = sum(len(ln["text"]) + 1 for ln in o["lines"])
    assert kept <= 64 * 1024 and o["cut_bytes"] == total - kept
    bad = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--output-limit", "lots")
    assert bad.returncode == 2 and "--output-limit" in bad.stderr


@pytest.mark.parametrize(
    "node",
    ['{run: [seq, "3000000"]}', '{python: "lib:many_lines"}'],
    ids=["command", "python"],
)
def test_a_node_printing_3_million_lines_stores_a_bounded_tail(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path, node: str
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/seq.yaml", f"name: seq\nnodes:\n  seq: {node}\n")
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--quiet", timeout=300)
    assert p.returncode == 0, p.stderr
    with closing(sqlite3.connect(db)) as c:
        (chunks,) = c.execute("SELECT chunks FROM task_output").fetchone()
    stored = sum(len(text.encode()) for _, text in json.loads(chunks))
    assert stored <= 1 << 20
    (o,) = logs_json(elsewhere, db)
    total = sum(len(str(i)) + 1 for i in range(1, 3_000_001))
    assert o["cut_bytes"] == total - stored
    assert o["lines"][-1]["text"] == "3000000"
    first = int(o["lines"][0]["text"])
    assert [int(ln["text"]) for ln in o["lines"]] == list(range(first, 3_000_001))


def test_a_python_node_opens_relative_paths_from_the_workflow_folder_like_a_command(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    write("wf/data/x.csv", "a,b\n1,2\n")
    wf = write(
        "wf/paths.yaml",
        """
        name: paths
        state:
          by_command: {default: null}
          by_python: {default: null}
        nodes:
          cat:
            run: [cat, data/x.csv]
            save: by_command
            next: read
          read:
            python: lib:read_csv
            save: by_python
        """,
    )
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "x.csv").write_text("the wrong file\n")
    p = flowrun(elsewhere, "run", str(wf), "--db", "rel.db", "--json")
    assert p.returncode == 0, p.stderr
    state = json.loads(p.stdout)["state"]
    assert state["by_command"] == state["by_python"] == "a,b\n1,2"
    assert (elsewhere / "rel.db").exists()  # flowrun's own paths stay relative to its start


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _finished_outputs(db: Path) -> set[int]:
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            rows = c.execute("SELECT idx FROM task_output").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return set()
    return {r[0] for r in rows}


def test_output_of_tasks_finished_before_kill_9_survives_and_resume_adds_the_rest(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    write("wf/lib.py", LIB)
    wf = write(
        "wf/gated.yaml",
        """
        name: gated
        state:
          items: {default: [0, 1, 2, 3]}
        config: {max_concurrency: 4}
        nodes:
          work:
            foreach: "{{ state.items }}"
            python: lib:gated
        """,
    )
    proc = subprocess.Popen(
        [FLOWRUN, "run", str(wf), "--db", str(db), "--quiet"],
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    deadline = time.monotonic() + 60
    while _finished_outputs(db) != {0, 1}:
        assert proc.poll() is None and time.monotonic() < deadline, "tasks 0 and 1 never saved"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    survived = logs_json(elsewhere, db)
    assert [(o["index"], [ln["text"] for ln in o["lines"]]) for o in survived] == [
        (0, ["started 0", "finished 0"]),
        (1, ["started 1", "finished 1"]),
    ]
    (tmp_path / "wf" / "resumed").touch()
    resumed = flowrun(elsewhere, "resume", "latest", "--db", str(db), "--force")
    assert resumed.returncode == 0, resumed.stderr
    after = logs_json(elsewhere, db)
    assert [(o["index"], [ln["text"] for ln in o["lines"]]) for o in after] == [
        (i, [f"started {i}", f"finished {i}"]) for i in range(4)
    ]  # tasks 0 and 1 kept their output and did not run again


def test_live_lines_print_above_the_rich_live_view(
    write: Write, tmp_path: Path, elsewhere: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/basic.yaml", BASIC)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI")}
    env["TERM"] = "xterm-256color"
    p = subprocess.Popen(
        [FLOWRUN, "run", str(wf), "--db", "f.db"],
        cwd=elsewhere,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    raw = b""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    assert p.wait(timeout=60) == 0
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", raw.decode())
    # the display is redrawn below each printed line (cursor moves, stripped here, join
    # the display's last line to the next printed one): each line is whole, to its end
    for expected in ("fetch | one", "fetch | two", "greet[0] | py out 0", "greet[1] | py err 1"):
        assert re.search(rf"(^|-){re.escape(expected)}$", text, re.M), text[-3000:]


def test_the_example_pipeline_shows_its_alert_line(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    work = tmp_path / "pipeline"
    shutil.copytree(root / "workflows" / "pipeline", work, ignore=shutil.ignore_patterns("out"))
    p = flowrun(tmp_path, "run", str(work / "pipeline.yaml"), "--db", str(tmp_path / "f.db"))
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert "alert | flagged reviews: 2, 4, 6" in lines
    assert "report | wrote out/report.md" in lines


def test_text_that_is_not_utf8_is_kept_as_far_as_it_can_be(
    write: Write, tmp_path: Path, elsewhere: Path, db: Path
) -> None:
    write("wf/odd.py", 'def odd(state, ctx):\n    print("caf\\u00e9 \\udc80 end")\n')
    wf = write(
        "wf/odd.yaml",
        """
        name: odd
        nodes:
          py: {python: "odd:odd", next: sh}
          sh: {shell: "printf 'bad \\\\377 byte\\\\n'"}
        """,
    )
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db), "-q")
    assert p.returncode == 0, p.stderr
    texts = [(o["node"], [ln["text"] for ln in o["lines"]]) for o in logs_json(elsewhere, db)]
    assert texts == [("py", ["café ? end"]), ("sh", ["bad \ufffd byte"])]
