"""What each command imports: only what it needs, so it starts fast (figures in make bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.installed import FLOWRUN

# Run one command in a fresh interpreter, as the installed `flowrun` does, and list
# every module it imported by the time it exited.
PROBE = """
import json, sys
from flowrun.cli.app import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
with open(sys.argv[2], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

HEAVY = {"rich", "jinja2", "yaml", "sqlite3", "httpx", "prometheus_client", "genai_prices"}
RUNTIME = "flowrun.engine.runtime.engine"
LLM = "flowrun.engine.llm"


def imported(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """Exit code of ``flowrun ARGS`` and the top-level packages and flowrun modules it imported."""
    out = tmp_path / "modules.json"
    p = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args)), str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), p.stderr
    seen = json.loads(out.read_text())
    names = set(seen["modules"])
    return seen["code"], {n.split(".")[0] for n in names} | {
        n for n in names if n.startswith("flowrun.")
    }


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], []])
def test_help_and_version_import_no_engine_and_no_heavy_library(
    tmp_path: Path, args: list[str]
) -> None:
    code, modules = imported(tmp_path, *args)
    assert code in (0, 2)  # bare `flowrun` prints the help and exits 2
    assert not modules & HEAVY
    assert not {m for m in modules if m.startswith("flowrun.engine.")} - {
        "flowrun.engine.errors",
        "flowrun.engine.lazy",
        "flowrun.engine.observer",  # for the Observer base of the progress views: one small module
        "flowrun.engine.records",  # and the records its hooks are called with
    }


def test_a_run_of_a_set_node_without_a_terminal_imports_no_rich_llm_or_metrics_library(
    tmp_path: Path,
) -> None:
    (tmp_path / "one.yaml").write_text(
        "name: one\nstate: {x: {default: 0}}\nnodes:\n  a: {set: {x: 1}}\n"
    )
    code, modules = imported(tmp_path, "run", "one.yaml", "--db", str(tmp_path / "f.db"))
    assert code == 0
    assert RUNTIME in modules  # it did run
    # pydantic: Typer 0.29 would import it for every command (pyproject keeps Typer < 0.29),
    # genai-prices for a price
    assert not modules & {"rich", "httpx", "prometheus_client", "genai_prices", "pydantic"}
    assert LLM not in modules


def test_jinja2_loads_only_for_a_workflow_that_holds_a_template(tmp_path: Path) -> None:
    (tmp_path / "plain.yaml").write_text(
        "name: plain\nstate: {x: {default: 0}}\n"
        "nodes:\n  a: {set: {x: 1}, next: b}\n  b: {run: ['true']}\n"
    )
    (tmp_path / "templated.yaml").write_text(
        "name: templated\nstate: {x: {default: 0}}\nnodes:\n  a: {set: {x: '{{ state.x + 1 }}'}}\n"
    )
    db = str(tmp_path / "f.db")
    for command in (["validate", "plain.yaml"], ["run", "plain.yaml", "--db", db]):
        code, modules = imported(tmp_path, *command)
        assert code == 0, command
        assert "yaml" in modules and "jinja2" not in modules, command
    for command in (["validate", "templated.yaml"], ["run", "templated.yaml", "--db", db]):
        code, modules = imported(tmp_path, *command)
        assert code == 0, command
        assert "jinja2" in modules, command
    shown = subprocess.run(
        [FLOWRUN, "show", "latest", "--db", db, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(shown.stdout)["state"] == {"x": 1}  # the template was rendered


def test_listing_runs_imports_neither_the_scheduler_nor_yaml_nor_jinja2(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: one\nnodes:\n  a: {run: ['true']}\n")
    db = str(tmp_path / "f.db")
    assert imported(tmp_path, "run", "one.yaml", "--db", db)[0] == 0
    for command in (["runs", "--db", db], ["show", "latest", "--db", db]):
        code, modules = imported(tmp_path, *command)
        assert code == 0, command
        assert "sqlite3" in modules  # it did read the database
        assert not modules & {"jinja2", "yaml", "rich"}, command
        assert RUNTIME not in modules, command


def test_validate_opens_no_database_and_imports_no_scheduler(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: one\nnodes:\n  a: {run: ['true']}\n")
    code, modules = imported(tmp_path, "validate", "one.yaml")
    assert code == 0
    assert "yaml" in modules
    assert not modules & {"sqlite3", "rich"}
    assert RUNTIME not in modules


def test_the_engine_api_loads_on_first_use_and_refuses_unknown_names() -> None:
    code = """
import sys
import flowrun.engine.store.base, flowrun.engine.spec.model, flowrun.engine.observer
assert not {"sqlite3", "yaml", "jinja2", "flowrun.engine.runtime.engine"} & set(sys.modules)
import flowrun.engine as engine
from flowrun.engine import *
missing = [n for n in engine.__all__ if n not in dir(engine)]
assert not missing, missing
from flowrun.engine.spec import parse_duration
from flowrun.engine.store import SQLiteStore
from flowrun.engine.runtime import Engine
assert engine.Engine is Engine and engine.SQLiteStore is SQLiteStore
assert parse_duration("2m") == 120
for pkg in ("flowrun.engine", "flowrun.engine.store", "flowrun.engine.spec"):
    try:
        getattr(sys.modules[pkg], "NoSuchName")
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError(pkg)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
