"""Robustness holes a review of main found: secrets across cuts, env-var seconds,
the heartbeat after a failed beat, a command left running, torn read-only reads."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from flowrun.engine.output import LONG_LINE, MASK_MARGIN, Capture
from flowrun.engine.secrets import Masker

from .conftest import FLOWRUN

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
            shell: 'printf "%s" "$(head -c 1000 /dev/zero | tr "\\0" x)"; printf "%s" "$MY_TOKEN"; printf "tail\\n"'
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
