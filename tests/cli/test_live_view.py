"""Progress on stderr: a Rich live view on a terminal, plain lines in a pipe, --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

LIB = """
import time
from pathlib import Path

GATE = Path(__file__).parent / "gate"

def prep(state, ctx):
    if ctx.attempt == 1:
        raise RuntimeError("warming up")
    ctx.record_llm_usage("gpt-4o-mini", 1000, 200)
    return {"items": [1, 2, 3, 4, 5]}

def work(state, ctx):
    deadline = time.monotonic() + 60
    while not GATE.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(0.01)
    return ctx.item

def bad(state, ctx):
    raise ValueError("no good")
"""

WF = """
name: live
state:
  items: {default: []}
  out:   {default: [], reducer: append}
config: {max_concurrency: 2}
nodes:
  prep:
    python: lib:prep
    retry: {max_attempts: 2, backoff: 1ms}
    next: work
  work:
    foreach: "{{ state.items }}"
    python: lib:work
    save: out
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def test_live_view_on_a_terminal_shows_running_nodes(write: Write, tmp_path: Path) -> None:
    write("lib.py", LIB)
    write("live.yaml", WF)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI")}
    env["TERM"] = "xterm-256color"
    p = subprocess.Popen(
        [FLOWRUN, "run", "live.yaml", "--db", "f.db"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    raw = b""

    def read_until(pred: Callable[[str], bool]) -> str:
        nonlocal raw
        end = time.monotonic() + 30  # hang guard
        while True:
            text = ANSI.sub("", raw.decode("utf-8", "replace"))
            if pred(text):
                return text
            assert time.monotonic() < end, f"live view never showed it:\n{text[-3000:]}"
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    assert pred(text), f"ended without it:\n{text[-3000:]}"
                    return text
                raw += chunk

    try:
        # two gated tasks running, three waiting: the live table and the running list
        text = read_until(lambda t: "running now: work[0]" in t and "work[1]" in t)
        assert re.search(
            r"run \S+ \(live\) · step 1 · \S+ · spend \$0\.\d{4} in 1 LLM call\(s\)", text
        )
        rows = [ln for ln in text.splitlines() if ln.strip().startswith("work ")]
        assert rows, text[-2000:]
        cells = rows[-1].split()
        assert cells[:2] == ["work", "2"], rows[-1]  # node, running
        prep_rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith("prep ")]
        assert prep_rows[-1][1:] == ["0", "0", "1", "0", "1"]  # done once, retried once
        (tmp_path / "gate").touch()
        text = read_until(lambda t: " succeeded after 2 step(s)" in t)
    finally:
        (tmp_path / "gate").touch()
        assert p.wait(timeout=60) == 0
        os.close(master)
    assert "Traceback" not in text


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "gate").touch()
    return subprocess.run(
        [FLOWRUN, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_plain_lines_in_a_pipe_verbose_one_per_event(write: Write, tmp_path: Path) -> None:
    """``--verbose``: a line for each task's start and end (without it, one per node)."""
    write("lib.py", LIB)
    write("live.yaml", WF)
    p = _run(tmp_path, "run", "live.yaml", "--db", "f.db", "--metrics-port", "0", "--verbose")
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert re.fullmatch(r"run \S+ \(live\) started", lines[0])
    assert re.fullmatch(r"metrics: http://127\.0\.0\.1:\d+/metrics", lines[1])
    assert any(
        re.match(
            r"step 0  prep  attempt 1 failed \(lib\.py:8 in prep: RuntimeError: warming up\)", x
        )
        for x in lines
    )
    assert sum(bool(re.match(r"step 1  work\[\d\]  ok  ", x)) for x in lines) == 5, p.stderr
    assert sum(bool(re.fullmatch(r"step 1  work\[\d\]  started", x)) for x in lines) == 5
    assert "\x1b[" not in p.stderr  # no escape codes in a pipe


def test_quiet_shows_only_errors_and_the_summary(write: Write, tmp_path: Path) -> None:
    write("lib.py", LIB)
    write("live.yaml", WF)
    ok = _run(tmp_path, "run", "live.yaml", "--db", "f.db", "--quiet")
    assert ok.returncode == 0
    lines = ok.stderr.splitlines()
    assert re.fullmatch(r"run \S+ \(live\) started", lines[0])
    assert re.fullmatch(r"run \S+ succeeded after 2 step\(s\) in \S+", lines[1])
    assert not [x for x in lines if x.startswith("step ")], ok.stderr  # no progress lines
    write(
        "bad.yaml",
        """
        name: bad
        state: {}
        nodes:
          boom: {python: "lib:bad"}
        """,
    )
    bad = _run(tmp_path, "run", "bad.yaml", "--db", "f.db", "-q")
    assert bad.returncode == 1
    assert "boom  FAILED after 1 attempt(s): lib.py:21 in bad: ValueError: no good" in bad.stderr
    assert "flowrun: error:" in bad.stderr
    assert " ok " not in bad.stderr
