"""``--executor`` / ``FLOWRUN_EXECUTOR`` on run, resume and fork: the values and the refusals."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from flowrun.cli.app import app
from typer.testing import CliRunner

from tests.support.installed import FLOWRUN

WF = """
name: tiny
state:
  n: {default: 0}
nodes:
  a:
    set: {n: 1}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tiny(write: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write("wf.yaml", WF)
    monkeypatch.chdir(path.parent)
    return path


def flowrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


@pytest.mark.parametrize("command", [["run", "wf.yaml"], ["resume", "latest"], ["fork", "latest"]])
def test_an_unknown_executor_is_exit_2_before_anything_runs(tiny: Path, command: list[str]) -> None:
    args = [*command, "--db", "f.db", "--executor", "gpu"]
    if command[0] == "fork":
        args += ["--from-step", "0"]
    p = flowrun(*args)
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [
        "flowrun: error: unknown executor 'gpu'",
        "  hint: one of: threads, processes, dask, tcp://HOST:PORT",
    ]
    assert not (tiny.parent / "f.db").exists()  # refused before the store was opened


def test_flowrun_executor_is_read_from_the_environment(tiny: Path) -> None:
    p = flowrun("run", "wf.yaml", "--db", "f.db", env={**os.environ, "FLOWRUN_EXECUTOR": "x"})
    assert p.returncode == 2
    assert "unknown executor 'x'" in p.stderr
    r = CliRunner().invoke(
        app, ["run", "wf.yaml", "--db", "f.db", "-q"], env={"FLOWRUN_EXECUTOR": "threads"}
    )
    assert r.exit_code == 0, r.output


def test_a_malformed_scheduler_address_is_exit_2(tiny: Path) -> None:
    p = flowrun("run", "wf.yaml", "--executor", "tcp://localhost")
    assert p.returncode == 2
    assert "--executor 'tcp://localhost': not a scheduler address" in p.stderr
    assert "hint: write it as tcp://HOST:PORT" in p.stderr


def test_an_unreachable_scheduler_is_exit_2_not_a_hang(tiny: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    p = flowrun("run", "wf.yaml", "--db", "f.db", "--executor", address)
    assert p.returncode == 2, p.stderr
    assert f"flowrun: error: --executor {address}: cannot reach the Dask scheduler" in p.stderr
    assert "hint: start one with `dask scheduler`" in p.stderr
    assert "Traceback" not in p.stderr


def _without_distributed(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import ``distributed`` (as if never installed)."""
    shim = tmp_path / "no-distributed"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\nsys.modules['distributed'] = None  # import distributed: ImportError\n"
    )
    return {**os.environ, "PYTHONPATH": str(shim)}


@pytest.mark.parametrize("value", ["dask", "tcp://127.0.0.1:8786"])
def test_without_distributed_a_dask_executor_is_exit_2_with_the_install_hint(
    tiny: Path, tmp_path: Path, value: str
) -> None:
    env = _without_distributed(tmp_path)
    probe = subprocess.run(
        [str(Path(FLOWRUN).parent / "python"), "-c", "import distributed"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "ModuleNotFoundError" in probe.stderr or "ImportError" in probe.stderr  # the shim works
    p = flowrun("run", "wf.yaml", "--db", "f.db", "--executor", value, env=env)
    assert p.returncode == 2, p.stderr
    assert "need Dask distributed, which is not installed" in p.stderr
    assert "hint: pip install 'flowrun[dask]'" in p.stderr
    threads = flowrun("run", "wf.yaml", "--db", "f.db", "-q", env=env)
    assert threads.returncode == 0, threads.stderr  # nothing else needs it
