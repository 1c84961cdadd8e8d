"""Shared fixtures: workflows written into tmp_path, a CLI runner, the installed binary."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from .pg import pg_server, pg_url, store_url  # noqa: F401 - PostgreSQL fixtures

BIN = Path(sys.executable).parent
FLOWRUN = shutil.which("flowrun", path=str(BIN)) or "flowrun"


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write(name, text) puts a dedented file into tmp_path and returns its path."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return p

    return _write


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flowrun.db"


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FLOWRUN_DB", raising=False)
    # the suite may itself run in GitHub Actions or GitLab CI: its runs log as a terminal-less
    # shell would, unless a test asks for a CI system's format
    for name in ("GITHUB_ACTIONS", "GITHUB_WORKSPACE", "GITLAB_CI", "FLOWRUN_PROGRESS_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


EXECUTORS = ("threads", "processes")


@pytest.fixture(params=EXECUTORS)
def executor_kind(request: pytest.FixtureRequest) -> str:
    """Where a test's tasks run: each executor ``Settings(executor=...)`` accepts."""
    return str(request.param)
