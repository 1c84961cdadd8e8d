"""Failures say where: tracebacks of Python nodes, command stderr, bad JSON, interrupts.

Every test runs the installed ``flowrun`` command in a subprocess against a real
SQLite file; the interrupt test sends a real SIGINT.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

REVIEW_LIB = """
def _check(verdict):
    if verdict != "ok":
        raise ValueError("kaboom")


def judge(state, ctx):
    _check("bad")
    return {}
"""

REVIEW_WF = """
name: review
state: {n: {default: 0}}
nodes:
  judge: {python: "review_lib:judge"}
"""


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # the timeout only turns a hang into a failure; nothing here is timed
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def failed_run(write: Write, tmp_path: Path, wf: str, **files: str) -> None:
    for name, text in files.items():
        write(name, text)
    write("wf.yaml", wf)
    run = flowrun("run", "wf.yaml", "--db", "f.db", "--run-id", "r1", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr


def test_show_of_a_failed_python_node_prints_the_user_frames_of_its_traceback(
    write: Write, tmp_path: Path
) -> None:
    failed_run(write, tmp_path, REVIEW_WF, **{"review_lib.py": REVIEW_LIB})
    show = flowrun("show", "r1", "--db", "f.db", cwd=tmp_path)
    assert show.returncode == 1
    text = show.stdout
    # the run's error line names the raising frame, file:line first
    assert "review_lib.py:3 in _check: ValueError: kaboom" in text
    # both of the user's frames, outer first, with their source lines
    outer = text.index('File "review_lib.py", line 7, in judge')
    inner = text.index('File "review_lib.py", line 3, in _check')
    assert outer < inner
    assert '_check("bad")' in text and 'raise ValueError("kaboom")' in text
    # flowrun's own frames and the thread machinery are trimmed away
    assert "nodes/python.py" not in text and "threading.py" not in text
    assert "_loop" not in text and "<lambda>" not in text


def test_show_json_of_a_failed_python_node_carries_its_traceback_and_raising_frame(
    write: Write, tmp_path: Path
) -> None:
    failed_run(write, tmp_path, REVIEW_WF, **{"review_lib.py": REVIEW_LIB})
    show = flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path)
    assert show.returncode == 1
    detail = json.loads(show.stdout)
    assert detail["error"].endswith("review_lib.py:3 in _check: ValueError: kaboom")
    (error,) = detail["nodes"]["judge"]["errors"]
    assert error["status"] == "failed"
    assert error["file"] == str(tmp_path / "review_lib.py")
    assert error["line"] == 3
    tb = error["traceback"]
    assert isinstance(tb, str)
    assert 'review_lib.py", line 7, in judge' in tb
    assert 'review_lib.py", line 3, in _check' in tb
    assert tb.rstrip().endswith("ValueError: kaboom")
    assert "flowrun" not in tb.replace(str(tmp_path), "")


def test_the_traceback_keeps_the_exception_chain(write: Write, tmp_path: Path) -> None:
    lib = """
    import json


    def parse(state, ctx):
        try:
            json.loads("{")
        except ValueError as exc:
            raise RuntimeError("bad config") from exc
    """
    wf = """
    name: chain
    state: {n: {default: 0}}
    nodes:
      parse: {python: "chain_lib:parse"}
    """
    failed_run(write, tmp_path, wf, **{"chain_lib.py": lib})
    detail = json.loads(flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    (error,) = detail["nodes"]["parse"]["errors"]
    tb = error["traceback"]
    assert "JSONDecodeError" in tb
    assert tb.index("JSONDecodeError") < tb.index("direct cause") < tb.index("RuntimeError")
    assert error["line"] == 8  # the raise, not the json.loads inside the stdlib
    assert detail["error"].endswith("chain_lib.py:8 in parse: RuntimeError: bad config")


def test_show_prints_the_stderr_tail_of_a_failed_command(write: Write, tmp_path: Path) -> None:
    wf = """
    name: cmd
    state: {n: {default: 0}}
    nodes:
      build:
        shell: |
          echo "compiling part 1" >&2
          echo "fatal: disk full at block 42" >&2
          echo "giving up" >&2
          exit 3
    """
    failed_run(write, tmp_path, wf)
    show = flowrun("show", "r1", "--db", "f.db", cwd=tmp_path)
    assert show.returncode == 1
    lines = show.stdout.splitlines()
    # the error names only the last stderr line; the tail shows what came before it
    start = next(i for i, line in enumerate(lines) if "stderr" in line and "last" in line)
    tail = [line.strip() for line in lines[start + 1 : start + 4]]
    assert tail == ["compiling part 1", "fatal: disk full at block 42", "giving up"]


def test_output_json_that_does_not_parse_shows_how_stdout_began(
    write: Write, tmp_path: Path
) -> None:
    wf = """
    name: badjson
    state: {n: {default: 0}}
    nodes:
      emit:
        shell: 'printf "Traceback (most recent call last):\\n  File \\"x.py\\"\\n"'
        output: json
    """
    failed_run(write, tmp_path, wf)
    detail = json.loads(flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    (error,) = detail["nodes"]["emit"]["errors"]
    assert error["error"] == (
        "output: json, but stdout is not JSON (line 1 col 1: Expecting value);"
        ' it began: "Traceback (most recent call last):\\n  File \\"x.py\\"\\n"'
    )


def test_the_beginning_of_bad_json_output_is_cut_to_one_short_line(
    write: Write, tmp_path: Path
) -> None:
    wf = """
    name: longjson
    state: {n: {default: 0}}
    nodes:
      emit:
        run: [python3, -c, "print('{\\"a\\": 1,' + 'x' * 5000)"]
        output: json
    """
    failed_run(write, tmp_path, wf)
    detail = json.loads(flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    (error,) = detail["nodes"]["emit"]["errors"]
    message = error["error"]
    assert "\n" not in message
    began = message.partition("it began: ")[2]
    assert began.startswith('"{\\"a\\": 1,xxx') and began.endswith('"…')
    assert len(began) < 250


def _lines(stream: object) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            q.put(line)
        q.put("")

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for(q: queue.Queue[str], needle: str, seen: list[str]) -> str:
    while True:
        line = q.get(timeout=60)  # only turns a hang into a failure
        seen.append(line)
        assert line, f"stderr ended without {needle!r}: {''.join(seen)}"
        if needle in line:
            return line


def test_sigint_says_at_once_what_it_waits_for_and_the_task_is_interrupted(
    write: Write, tmp_path: Path
) -> None:
    write(
        "wf.yaml",
        """
        name: slow
        state: {n: {default: 0}}
        nodes:
          a: {set: {n: 1}, next: long}
          long: {shell: "touch started; sleep 120"}
        """,
    )
    proc = subprocess.Popen(
        [FLOWRUN, "run", "wf.yaml", "--db", "f.db", "--run-id", "s1"],
        cwd=tmp_path,
        env={
            "FLOWRUN_GRACE": "300",
            "PATH": f"{Path(FLOWRUN).parent}:/usr/bin:/bin",
            "NO_COLOR": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "started").exists()
        err = _lines(proc.stderr)
        seen: list[str] = []
        proc.send_signal(signal.SIGINT)
        line = _wait_for(err, "stopping:", seen)
        assert line.strip() == (
            "stopping: waiting up to 300s for 1 running task (Ctrl-C again to stop now)"
        )
        assert proc.poll() is None  # said while the grace period runs, not after it
        proc.send_signal(signal.SIGINT)  # stop now
        proc.wait(timeout=60)
        assert proc.returncode == 130, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    detail = json.loads(flowrun("show", "s1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    assert detail["status"] == "interrupted"
    node = detail["nodes"]["long"]
    assert (node["failed"], node["interrupted"]) == (0, 1)
    (task,) = node["errors"]
    assert task["status"] == "interrupted"
    text = flowrun("show", "s1", "--db", "f.db", cwd=tmp_path).stdout
    assert "interrupted after 1 attempt(s)" in text
    assert "failed after" not in text


def test_an_exception_from_a_library_points_at_the_users_line_that_called_it(
    write: Write, tmp_path: Path
) -> None:
    lib = """
    import json


    def load(state, ctx):
        return json.loads("{")
    """
    wf = """
    name: lib
    state: {n: {default: 0}}
    nodes:
      load: {python: "lib_caller:load"}
    """
    failed_run(write, tmp_path, wf, **{"lib_caller.py": lib})
    detail = json.loads(flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    (error,) = detail["nodes"]["load"]["errors"]
    assert (error["file"], error["line"]) == (str(tmp_path / "lib_caller.py"), 5)
    assert "json/decoder.py" in error["traceback"]  # the library's frames stay in the traceback
    assert detail["error"].startswith("node 'load' failed after 1 attempt(s): lib_caller.py:5 in")


def test_a_runaway_recursion_traceback_is_collapsed_and_bounded(
    write: Write, tmp_path: Path
) -> None:
    lib = """
    def down(n):
        return down(n + 1)


    def start(state, ctx):
        return down(0)
    """
    wf = """
    name: deep
    state: {n: {default: 0}}
    nodes:
      start: {python: "deep_lib:start"}
    """
    failed_run(write, tmp_path, wf, **{"deep_lib.py": lib})
    detail = json.loads(flowrun("show", "r1", "--db", "f.db", "--json", cwd=tmp_path).stdout)
    (error,) = detail["nodes"]["start"]["errors"]
    tb = error["traceback"]
    assert "RecursionError" in tb and "more time(s)]" in tb
    assert tb.count("in down") <= 10
    assert len(tb) < 4000
    assert error["line"] == 2
