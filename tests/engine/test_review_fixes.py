"""Robustness holes a review of main found: secrets across cuts, env-var seconds,
the heartbeat after a failed beat, a command left running, torn read-only reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flowrun.engine import Engine, Observer, SQLiteStore, load_workflow
from flowrun.engine.output import LONG_LINE, MASK_MARGIN, Capture
from flowrun.engine.records import Task
from flowrun.engine.secrets import Masker
from flowrun.engine.store.leases import proc_stat

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]
SECRET = "supersecretvalue0123456789"


def flowrun(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )


def pieces_of(secret: str) -> list[str]:
    """Every 6-character piece of ``secret``: none may be shown or stored."""
    return [secret[i : i + 6] for i in range(len(secret) - 5)]


# 1. the output limit cutting through a secret ------------------------------------------


def test_a_secret_cut_by_the_output_limit_is_masked_before_the_cut(
    write: Write, tmp_path: Path, db: Path
) -> None:
    wf = write(
        "sec.yaml",
        """
        name: sec
        secrets: [MY_TOKEN]
        nodes:
          a:
            shell: >-
              printf "%s" "$(head -c 1000 /dev/zero | tr "\\0" x)";
              printf "%s" "$MY_TOKEN"; printf "tail\\n"
        """,
    )
    env = {"MY_TOKEN": SECRET}
    run = flowrun(tmp_path, "run", str(wf), "--db", str(db), "-q", "--output-limit", "20", env=env)
    assert run.returncode == 0, run.stderr
    logs = flowrun(tmp_path, "logs", "latest", "--db", str(db), "--json")
    (o,) = json.loads(logs.stdout)
    assert o["lines"] == [{"stream": "stdout", "text": "***tail"}]
    # bytes as written: 1000 x, the secret and "tail\n", of which the last 20 were kept
    assert o["cut_bytes"] == 1000 + len(SECRET) + 5 - 20
    shown = flowrun(tmp_path, "logs", "latest", "--db", str(db)).stdout
    assert shown.splitlines() == [f"a | … {o['cut_bytes']:,} bytes cut …", "a | ***tail"]
    assert not [p for p in pieces_of(SECRET) if p in logs.stdout + shown]


# 2. a live line longer than LONG_LINE shown in pieces ----------------------------------


def live_lines(*writes: str) -> list[str]:
    shown: list[str] = []
    capture = Capture(
        on_lines=lambda stream, lines: shown.extend(lines), mask=Masker([SECRET]).text
    )
    for text in writes:
        capture.write("stdout", text)
    capture.close()
    return shown


def test_a_secret_across_the_pieces_of_a_long_live_line_is_masked_whole() -> None:
    # the secret arrives in two writes, the first of which makes the line too long
    shown = live_lines("x" * (LONG_LINE + 10) + SECRET[:11], SECRET[11:] + "y" * 10 + "\n")
    assert len(shown) == 2  # shown in two pieces
    assert not [p for p in pieces_of(SECRET) if p in "\n".join(shown)]
    assert "".join(shown) == "x" * (LONG_LINE + 10) + "***" + "y" * 10


def test_a_secret_where_a_long_live_line_is_cut_into_pieces_is_masked_whole() -> None:
    # one write, cut into a piece and a held-back rest right through the secret
    shown = live_lines("x" * LONG_LINE + SECRET + "y" * (MASK_MARGIN - 10), "z\n")
    assert len(shown) == 2
    assert not [p for p in pieces_of(SECRET) if p in "\n".join(shown)]
    assert shown[0] == "x" * LONG_LINE + "***"
    assert shown[1].endswith("y" * (MASK_MARGIN - 10) + "z") and "***" in shown[1]


# 3. FLOWRUN_* seconds: one rule, checked before the run starts -------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLOWRUN_BUSY_TIMEOUT", "inf"),
        ("FLOWRUN_BUSY_TIMEOUT", "-1"),
        ("FLOWRUN_LEASE_STALE_S", "inf"),
        ("FLOWRUN_LEASE_STALE_S", "1e300"),
        ("FLOWRUN_LEASE_STALE_S", "abc"),
        ("FLOWRUN_LEASE_STALE_S", "0"),
        ("FLOWRUN_GRACE", "1e300"),
        ("FLOWRUN_GRACE", "inf"),
        ("FLOWRUN_GRACE", "nan"),
    ],
)
def test_a_bad_seconds_setting_is_refused_before_the_run_starts(
    write: Write, tmp_path: Path, db: Path, name: str, value: str
) -> None:
    wf = write("ok.yaml", "name: ok\nnodes:\n  a: {shell: 'echo ran'}\n")
    p = flowrun(tmp_path, "run", str(wf), "--db", str(db), env={name: value})
    assert p.returncode == 2, p.stderr
    error, hint = p.stderr.splitlines()
    assert error == (
        f"flowrun: error: {name}={value!r} is not a number of seconds"
        f" {'above 0' if name == 'FLOWRUN_LEASE_STALE_S' else 'from 0'} up to 604800 (one week)"
    )
    assert hint.startswith(f"  hint: e.g. {name}=")
    assert not db.exists()  # refused before anything was made


def test_good_seconds_settings_are_used(write: Write, tmp_path: Path, db: Path) -> None:
    wf = write("ok.yaml", "name: ok\nnodes:\n  a: {shell: 'echo ran'}\n")
    env = {"FLOWRUN_BUSY_TIMEOUT": "0", "FLOWRUN_LEASE_STALE_S": "0.5", "FLOWRUN_GRACE": "604800"}
    p = flowrun(tmp_path, "run", str(wf), "--db", str(db), env=env)
    assert p.returncode == 0, p.stderr
    assert "a | ran" in p.stderr


# 4. the heartbeat after a failed beat ----------------------------------------------------

HOLD_LOCK = """
import os, sqlite3, sys, time

db = sys.argv[1]
run_id = os.environ["FLOWRUN_RUN_ID"]
BEAT = "SELECT lease_heartbeat FROM runs WHERE run_id = ?"
def beat():
    c = sqlite3.connect(db)
    try:
        return c.execute(BEAT, (run_id,)).fetchone()[0]
    finally:
        c.close()
while beat() is None:  # the first beat
    time.sleep(0.02)
holder = sqlite3.connect(db, isolation_level=None)
holder.execute("BEGIN IMMEDIATE")  # every beat now waits busy_timeout and fails
time.sleep(1.0)
held = beat()
holder.execute("COMMIT")
deadline = time.time() + 60
while beat() == held and time.time() < deadline:
    time.sleep(0.05)
print("resumed" if beat() != held else "stopped")
"""


def test_the_heartbeat_goes_on_after_a_beat_fails(write: Write, tmp_path: Path, db: Path) -> None:
    write("hold.py", HOLD_LOCK)
    wf = write(
        "beat.yaml",
        f"""
        name: beat
        nodes:
          a: {{run: [{sys.executable}, hold.py, "{db}"]}}
        """,
    )
    env = {"FLOWRUN_LEASE_STALE_S": "0.6", "FLOWRUN_BUSY_TIMEOUT": "0.05"}  # a beat each 0.1s
    p = flowrun(tmp_path, "run", str(wf), "--db", str(db), env=env)
    assert p.returncode == 0, p.stderr
    assert "a | resumed" in p.stderr
    warned = [line for line in p.stderr.splitlines() if "heartbeat failed" in line]
    assert len(warned) == 1  # told once, not at every beat
    assert warned[0].startswith("flowrun: warning: run ")
    assert "database is locked" in warned[0]
    assert "Traceback" not in p.stderr


# 5. a command whose output cannot be handed on --------------------------------------------


class Boom(BaseException):
    """Not an Exception: what a KeyboardInterrupt on the reading thread looks like."""


class FailingView(Observer):
    def task_output(
        self, step: int, task: Task, attempt: int, stream: str, lines: list[str]
    ) -> None:
        raise Boom


def test_a_command_is_killed_and_reaped_when_reading_its_output_fails(
    write: Write, tmp_path: Path, db: Path
) -> None:
    wf = write(
        "long.yaml",
        """
        name: long
        nodes:
          a: {shell: "echo $$ > pid; echo started; exec sleep 60"}
        """,
    )
    with pytest.raises(Boom):
        Engine(SQLiteStore(db), observer=FailingView()).start(load_workflow(str(wf)))
    pid = int((tmp_path / "pid").read_text())
    try:
        assert proc_stat(pid) is None  # killed, and waited for: not even a zombie
    finally:
        if proc_stat(pid) is not None:
            os.killpg(pid, signal.SIGKILL)
