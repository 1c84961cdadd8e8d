"""docs/ci.md's GitHub Actions and GitLab CI jobs: every flowrun command in them parses.

Each ``flowrun …`` line of a job's ``run:``/``script:`` steps is split as a shell
would (CI expressions and variables replaced by placeholder values) and handed to
the real command-line parser, without running anything: an unknown option, a
missing argument or a bad value fails the test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from flowrun.cli.app import app

from tests.e2e.test_docs import BLOCKS

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "12345"  # a value every flowrun option here accepts (a run id, a path, a URL)


def job(mark: str) -> dict[str, Any]:
    (body,) = [b for where, m, b in BLOCKS if m == mark and where.startswith("docs/ci.md")]
    doc = yaml.safe_load(body)
    assert isinstance(doc, dict)
    return doc


def shell_lines(mark: str) -> list[str]:
    """The shell text of the job's steps: GitHub's ``steps[].run``, GitLab's ``script:``."""
    doc = job(mark)
    if mark == "github-actions":
        steps = [s for j in doc["jobs"].values() for s in j["steps"]]
        return [s["run"] for s in steps if "run" in s]
    return [line for j in doc.values() if isinstance(j, dict) for line in j.get("script", [])]


def flowrun_commands(mark: str) -> list[list[str]]:
    commands = []
    for text in shell_lines(mark):
        text = re.sub(r"\$\{\{[^}]*\}\}", PLACEHOLDER, text)  # ${{ github.run_id }}
        text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", PLACEHOLDER, text)  # $CI_PIPELINE_ID
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "flowrun":
                commands.append(words[1:])
    return commands


def parse(args: list[str]) -> Any:
    """Parse ``flowrun ARGS`` as the program would, and run nothing: the command's context.

    A usage error is the parser's own exception (Click's, vendored by newer Typer),
    with exit code 2, as ``flowrun`` itself would exit.
    """
    group: Any = typer.main.get_command(app)
    root = group.make_context("flowrun", list(args), resilient_parsing=False)
    # the command name and what follows it (``protected_args`` in Click, private when vendored)
    head = getattr(root, "protected_args", None) or getattr(root, "_protected_args", [])
    name, command, rest = group.resolve_command(root, [*head, *root.args])
    assert command is not None, args
    return command.make_context(name, rest, parent=root, resilient_parsing=False)


def refused(args: list[str]) -> str:
    """The parser's message for ``flowrun ARGS`` that it must refuse with exit code 2."""
    with pytest.raises(Exception) as caught:  # the vendored Click's UsageError
        parse(args)
    assert getattr(caught.value, "exit_code", None) == 2, caught.value
    return str(caught.value.format_message())  # type: ignore[attr-defined]


@pytest.mark.parametrize("mark", ["github-actions", "gitlab-ci"])
def test_every_flowrun_command_of_the_ci_jobs_parses_with_the_real_cli(mark: str) -> None:
    commands = flowrun_commands(mark)
    assert [c[0] for c in commands] == ["validate", "run"]
    for args in commands:
        parse(args)  # a usage error on an unknown option or a missing argument
    run = parse(commands[1]).params
    assert run["run_id"] == PLACEHOLDER  # the CI's id of the run, kept by a re-run
    assert run["junit"] and run["metrics_push"] == PLACEHOLDER


def test_the_checker_refuses_an_unknown_option_and_a_missing_argument() -> None:
    assert "--no-such-flag" in refused(["run", "wf.yaml", "--no-such-flag"])
    assert "FILE" in refused(["validate"])
    assert "--run-id" in refused(["run", "wf.yaml", "--run-id"])


def test_the_github_job_keeps_the_database_and_the_report_when_the_run_fails() -> None:
    steps = [s for j in job("github-actions")["jobs"].values() for s in j["steps"]]
    uses = {s.get("uses", "").split("@")[0]: s for s in steps}
    restore, save = uses["actions/cache/restore"], uses["actions/cache/save"]
    assert "github.run_id" in restore["with"]["restore-keys"]
    assert save["if"] == "always()" and save["with"]["path"] == restore["with"]["path"]
    upload = uses["actions/upload-artifact"]
    assert upload["if"] == "always()"
    (run,) = [c for c in flowrun_commands("github-actions") if c[0] == "run"]
    assert upload["with"]["path"] == run[run.index("--junit") + 1]


def test_the_gitlab_job_keeps_the_database_per_pipeline_and_reports_the_junit_file() -> None:
    (body,) = [j for j in job("gitlab-ci").values() if isinstance(j, dict) and "script" in j]
    assert "$CI_PIPELINE_ID" in body["cache"]["key"] and body["cache"]["when"] == "always"
    (run,) = [c for c in flowrun_commands("gitlab-ci") if c[0] == "run"]
    assert body["artifacts"]["reports"]["junit"] == run[run.index("--junit") + 1]
    assert body["artifacts"]["when"] == "always"
