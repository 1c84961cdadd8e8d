"""The command line as a new user and a CI job meet it: help, mistakes, exit codes, --json.

Every test runs the installed `flowrun` command, so the one error boundary in
``main()`` is what is exercised, with real file descriptors.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

COMMANDS = ("run", "resume", "costs", "runs", "show", "validate", "graph", "fork", "prune")

OK_WF = """
name: ok
state:
  x: {default: 0}
  name: {default: ""}
nodes:
  a:
    set: {x: 1}
"""

FAIL_WF = """
name: failing
state:
  x: {default: 0}
nodes:
  a:
    set: {x: 1}
    next: b
  b:
    run: [sh, -c, "echo boom >&2; exit 3"]
"""


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_user_error(p: subprocess.CompletedProcess[str], code: int = 2) -> None:
    """One line of cause (plus an optional hint line), the right exit code, no traceback."""
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("flowrun: error: "), p.stderr
    assert all(line.startswith("  hint: ") for line in lines[1:]), p.stderr


def json_error(p: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """A failed --json command still prints exactly one JSON object on stdout."""
    assert p.stdout.count("\n") == 1, p.stdout
    data = json.loads(p.stdout)
    assert isinstance(data, dict)
    assert data["exit_code"] == p.returncode
    assert data["error"]
    return data


# --help ------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_help_shows_its_example_on_a_line_of_its_own(
    cmd: str, tmp_path: Path
) -> None:
    p = flowrun(cmd, "--help", cwd=tmp_path)
    assert p.returncode == 0
    paragraphs = [" ".join(par.split()) for par in p.stdout.split("\n\n")]
    examples = [par for par in paragraphs if "Example:" in par]
    assert len(examples) == 1 and examples[0].startswith(f"Example: flowrun {cmd} "), p.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_names_arguments_and_option_values_not_python_types(cmd: str, tmp_path: Path) -> None:
    p = flowrun(cmd, "--help", cwd=tmp_path)
    usage = p.stdout.splitlines()[0]
    assert "{file}" not in usage and "{run_id}" not in usage, usage
    options = [line for line in p.stdout.splitlines() if line.startswith("  -")]
    for line in options:
        for python_type in ("<str>", "<int", "<float", "<list["):
            assert python_type not in line, line


def test_run_help_says_set_takes_key_equals_json(tmp_path: Path) -> None:
    p = flowrun("run", "--help", cwd=tmp_path)
    assert p.stdout.startswith("Usage: flowrun run [OPTIONS] {FILE}")
    assert "--set KEY=JSON" in p.stdout


def test_run_help_example_works_on_the_example_pipeline(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    example = root / "workflows" / "pipeline"
    shutil.copytree(
        example, tmp_path / "workflows" / "pipeline", ignore=shutil.ignore_patterns("out")
    )
    p = flowrun("run", "--help", cwd=tmp_path)
    text = " ".join(p.stdout.split())  # the help text is wrapped to the terminal
    argv = text.split("Example: flowrun ")[1].split(" Arguments:")[0].split()
    r = flowrun(*argv, "--db", str(tmp_path / "f.db"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "succeeded"


# usage errors from the parser are one line + hint, like every other error ---------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("rnu", "x.yaml"), "Did you mean 'run'?"),
        (("run", "x.yaml", "--max-concurrency", "0"), "--max-concurrency"),
        (("run",), "Missing argument 'FILE'"),
        (("show",), "Missing argument 'RUN_ID'"),
        (("run", "x.yaml", "--nope"), "No such option"),
    ],
)
def test_parser_errors_are_one_line_with_a_hint_and_exit_2(
    args: tuple[str, ...], needle: str, tmp_path: Path
) -> None:
    p = flowrun(*args, cwd=tmp_path)
    assert_user_error(p)
    assert needle in p.stderr
    assert "--help" in p.stderr.splitlines()[-1]


def test_parser_error_with_json_still_prints_one_json_object(tmp_path: Path) -> None:
    p = flowrun("run", "x.yaml", "--max-concurrency", "0", "--json", cwd=tmp_path)
    assert_user_error(p)
    assert "--max-concurrency" in str(json_error(p)["error"])


def test_no_arguments_prints_help(tmp_path: Path) -> None:
    p = flowrun(cwd=tmp_path)
    assert p.returncode == 2
    assert "Usage: flowrun" in p.stderr and "Commands" in p.stderr


# --json: one object on stdout, even when nothing could run ------------------------------
def test_json_usage_error_prints_an_error_object(tmp_path: Path) -> None:
    p = flowrun("run", "missing.yaml", "--json", cwd=tmp_path)
    assert_user_error(p)
    data = json_error(p)
    assert "missing.yaml" in str(data["error"]) and data["hint"]


def test_json_unknown_run_prints_an_error_object_with_exit_3(tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    (tmp_path / "one.yaml").write_text("name: one\nnodes:\n  a: {shell: 'true'}\n")
    assert flowrun("run", "one.yaml", "--db", db, cwd=tmp_path).returncode == 0  # a real db
    for cmd in (("show", "nosuch"), ("resume", "nosuch"), ("costs", "nosuch")):
        p = flowrun(*cmd, "--db", db, "--json", cwd=tmp_path)
        assert_user_error(p, 3)
        assert "nosuch" in str(json_error(p)["error"])


def test_json_of_a_failed_run_is_the_run_object_only(write: Write, tmp_path: Path) -> None:
    wf = write("fail.yaml", FAIL_WF)
    p = flowrun("run", str(wf), "--db", str(tmp_path / "f.db"), "--json", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stdout.count("\n") == 1
    data = json.loads(p.stdout)
    assert data["status"] == "failed" and "boom" in data["error"]
    assert p.stderr.splitlines()[0] == f"run {data['run_id']} (failing) started"


def test_json_stdout_is_not_polluted_by_what_python_nodes_print(
    write: Write, tmp_path: Path
) -> None:
    write(
        "noisylib.py",
        """
        import os

        def talk(state, ctx):
            print("hello from print")
            os.system("echo hello from a child process")
            return {"x": 1}
        """,
    )
    wf = write(
        "noisy.yaml",
        """
        name: noisy
        state: {x: {default: 0}}
        nodes:
          a: {python: "noisylib:talk"}
        """,
    )
    p = flowrun("run", str(wf), "--db", str(tmp_path / "f.db"), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"x": 1}
    assert "hello from print" in p.stderr and "hello from a child process" in p.stderr


def test_json_after_nan_input_is_still_valid_json(write: Write, tmp_path: Path) -> None:
    wf = write("wf.yaml", "name: n\nstate: {name: {default: ''}}\nnodes:\n  a: {set: {}}\n")
    p = flowrun(
        "run", str(wf), "--set", "name=NaN", "--db", str(tmp_path / "f.db"), "--json", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout, parse_constant=lambda c: pytest.fail(c))["state"] == {"name": "NaN"}


def test_input_file_with_nan_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    inp = write("in.json", '{"x": NaN}')
    p = flowrun("run", str(wf), "--input", str(inp), "--db", str(tmp_path / "f.db"), cwd=tmp_path)
    assert_user_error(p)
    assert "NaN" in p.stderr


# --input, --set, --run-id ---------------------------------------------------------------
def test_input_file_that_is_not_utf8_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"name": "caf\xe9"}')
    p = flowrun("run", str(wf), "--input", str(bad), "--db", str(tmp_path / "f.db"), cwd=tmp_path)
    assert_user_error(p)
    assert "latin1.json" in p.stderr and "UTF-8" in p.stderr


@pytest.mark.parametrize("bad", ["latest", "a b", "x/y"])
def test_run_id_that_cannot_be_addressed_later_is_refused(
    bad: str, write: Write, tmp_path: Path
) -> None:
    wf = write("ok.yaml", OK_WF)
    p = flowrun("run", str(wf), "--run-id", bad, "--db", str(tmp_path / "f.db"), cwd=tmp_path)
    assert_user_error(p)
    assert "--run-id" in p.stderr
    assert not (tmp_path / "f.db").exists()  # refused before anything was stored


def test_llm_record_into_a_folder_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    p = flowrun(
        "run", str(wf), "--llm-record", str(tmp_path), "--db", str(tmp_path / "f.db"), cwd=tmp_path
    )
    assert_user_error(p)
    assert "--llm-record" in p.stderr


# --db -----------------------------------------------------------------------------------
def test_db_pointing_at_a_folder_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    for args in (("run", str(wf)), ("runs",), ("show", "latest"), ("runs", "--json")):
        p = flowrun(*args, "--db", str(tmp_path), cwd=tmp_path)
        assert_user_error(p)
        assert "folder" in p.stderr


def test_db_pointing_at_a_file_that_is_not_sqlite_is_a_usage_error(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, just notes\n" * 10)
    p = flowrun("runs", "--db", str(notes), cwd=tmp_path)
    assert_user_error(p)
    assert "not an SQLite database" in p.stderr
    assert notes.read_text() == "not a database, just notes\n" * 10


def test_db_in_a_folder_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "one.yaml").write_text("name: one\nnodes:\n  a: {shell: 'true'}\n")
    p = flowrun("run", "one.yaml", "--db", str(blocker / "sub" / "f.db"), cwd=tmp_path)
    assert_user_error(p)


def test_valid_sqlite_db_is_still_accepted(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    sqlite3.connect(db).close()  # an empty file: a new database
    p = flowrun("runs", "--db", str(db), "--json", cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout) == []


# runs / fork -------------------------------------------------------------------------------
def test_runs_with_an_unknown_status_is_a_usage_error(tmp_path: Path) -> None:
    p = flowrun("runs", "--status", "bogus", "--db", str(tmp_path / "f.db"), cwd=tmp_path)
    assert_user_error(p)
    assert "succeeded" in p.stderr  # the valid ones are listed


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_runs_limit_must_be_positive(limit: str, tmp_path: Path) -> None:
    p = flowrun("runs", "--limit", limit, "--db", str(tmp_path / "f.db"), cwd=tmp_path)
    assert_user_error(p)


def test_runs_with_a_huge_limit_lists_all_runs(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    db = str(tmp_path / "f.db")
    assert flowrun("run", str(wf), "--db", db, cwd=tmp_path).returncode == 0
    p = flowrun("runs", "--limit", "99999999999999999999", "--db", db, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)) == 1


def test_fork_from_a_huge_step_is_a_usage_error(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    db = str(tmp_path / "f.db")
    assert flowrun("run", str(wf), "--db", db, cwd=tmp_path).returncode == 0
    p = flowrun("fork", "latest", "--from-step", "99999999999999999999", "--db", db, cwd=tmp_path)
    assert_user_error(p)
    assert "--from-step" in p.stderr


# show exits with the run's status code ---------------------------------------------------
def test_show_exit_codes_follow_the_run_status(write: Write, tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    ok = write("ok.yaml", OK_WF)
    bad = write("fail.yaml", FAIL_WF)
    assert flowrun("run", str(ok), "--run-id", "good", "--db", db, cwd=tmp_path).returncode == 0
    assert flowrun("run", str(bad), "--run-id", "bad", "--db", db, cwd=tmp_path).returncode == 1
    for ref, code, status in (("good", 0, "succeeded"), ("bad", 1, "failed")):
        human = flowrun("show", ref, "--db", db, cwd=tmp_path)
        assert human.returncode == code and human.stderr == ""  # the report is on stdout
        assert f"status    {status}" in human.stdout
        machine = flowrun("show", ref, "--db", db, "--json", cwd=tmp_path)
        assert machine.returncode == code
        assert json.loads(machine.stdout)["status"] == status


def test_live_view_header_has_no_empty_run_id_before_the_run_starts() -> None:
    import io

    from flowrun.cli.console import LiveView
    from rich.console import Console

    view = LiveView(quiet=False)
    out = Console(file=io.StringIO(), width=120, record=True)
    out.print(view._render())
    text = out.export_text()
    assert "run  ()" not in text and text.startswith("starting · step 0"), text


def test_json_run_with_stdout_closed_still_runs(write: Write, tmp_path: Path) -> None:
    wf = write("ok.yaml", OK_WF)
    p = subprocess.run(
        ["sh", "-c", f'"{FLOWRUN}" run "{wf}" --db "{tmp_path / "f.db"}" --json >&-'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "succeeded" in p.stderr and "Traceback" not in p.stderr
