"""SIGINT while a lone Python node runs on the coordinator's side of the hand-off."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import FLOWRUN


def test_sigint_abandons_a_long_python_node_after_the_grace_period_and_resume_finishes(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write(
        "slowlib.py",
        """
        import os, time
        def slow(state, ctx):
            if os.path.exists("fast"):
                return {"n": 2}
            open("started", "w").close()
            time.sleep(60)
        """,
    )
    write(
        "wf.yaml",
        """
        name: slow
        state: {n: {default: 0}}
        nodes:
          a: {set: {n: 1}, next: b}
          b: {python: "slowlib:slow"}
        """,
    )
    db = str(tmp_path / "f.db")
    env = {"FLOWRUN_GRACE": "0.3", "PATH": str(Path(FLOWRUN).parent)}
    proc = subprocess.Popen(
        [FLOWRUN, "run", "wf.yaml", "--db", db, "--run-id", "s1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "started").exists()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # returns long before the node's 60 s sleep
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    shown = subprocess.run(
        [FLOWRUN, "show", "s1", "--db", db, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 130
    assert json.loads(shown.stdout)["status"] == "interrupted"
    (tmp_path / "fast").touch()
    done = subprocess.run(
        [FLOWRUN, "resume", "s1", "--db", db, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == {"n": 2}
