"""What CI systems read in a job's log: GitHub Actions workflow commands, GitLab sections.

Under ``GITHUB_ACTIONS=true`` errors become annotations (``::error …::``) and each
task's output a ``::group::``; under ``GITLAB_CI`` the output is a collapsed section.
GitHub's runner parses every line of a step's stdout *and* stderr for workflow
commands (``ScriptHandler`` hands both streams to its command manager), and GitLab
shows both streams in the job log, so all of it goes to stderr with the rest of the
progress: a ``--json`` stdout stays one JSON document.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_ANNOTATIONS = 10  # GitHub shows at most 10 error annotations of a step


def system(environ: Mapping[str, str] | None = None) -> str | None:
    """``github``, ``gitlab`` or None: whose log format the job's output is read in."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        return "github"
    if env.get("GITLAB_CI"):
        return "gitlab"
    return None


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF escaped (GitHub's toolkit rules)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as a message, and ``:`` and ``,`` too."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_error(
    message: str,
    *,
    title: str | None = None,
    file: str | None = None,
    line: int | None = None,
    col: int | None = None,
) -> str:
    """One ``::error …::message`` line (without its newline)."""
    props = [
        f"{name}={escape_property(str(value))}"
        for name, value in (("file", file), ("line", line), ("col", col), ("title", title))
        if value is not None
    ]
    head = "::error " + ",".join(props) if props else "::error"
    return f"{head}::{escape_data(message)}"


def repo_path(file: str, workspace: str | None = None) -> str:
    """``file`` as GitHub names it: relative to ``GITHUB_WORKSPACE`` when it is inside it."""
    root = workspace if workspace is not None else os.environ.get("GITHUB_WORKSPACE")
    if not root:
        return file
    try:
        return Path(os.path.abspath(file)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return file


def workflow_error_lines(errors: Iterable[Any]) -> list[str]:
    """An annotation for each error of an invalid workflow, at its file, line and column."""
    lines = []
    for e in errors:
        file = getattr(e, "file", None)
        message = getattr(e, "cause", None) or e.message
        if getattr(e, "hint", None):
            message += f"\nhint: {e.hint}"
        if file is None:  # no place to point at: the message says what it is
            lines.append(github_error(e.message))
            continue
        line = getattr(e, "line", None)
        col = (getattr(e, "column", None) or 1) if line is not None else None
        lines.append(github_error(message, file=repo_path(file), line=line, col=col))
    return lines


_SECTION_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class Fold:
    """Frames a block of lines so the CI log shows it collapsed under ``header``."""

    def block(self, name: str, header: str, body: str, started: float) -> str:
        """``body`` (whole lines) framed under ``header``; ``name`` says what it is (a task
        label), ``started`` when it began (``time.time()``)."""
        raise NotImplementedError


class GitHubGroups(Fold):
    """``::group::header`` … ``::endgroup::`` (groups do not nest)."""

    def block(self, name: str, header: str, body: str, started: float) -> str:
        return f"::group::{escape_data(header)}\n{body}::endgroup::\n"


class GitLabSections(Fold):
    """``section_start:TS:name[collapsed=true]`` … ``section_end:TS:name``.

    Names may hold only ``[A-Za-z0-9_.-]`` and must differ within a job: each block
    is numbered.
    """

    def __init__(self) -> None:
        self._count = 0

    def block(self, name: str, header: str, body: str, started: float) -> str:
        self._count += 1
        name = f"flowrun_{self._count}_{_SECTION_NAME.sub('_', name)[:60]}"
        shown = header.replace("\r", " ").replace("\n", " ")
        start, end = int(started), int(time.time())
        return (
            f"\x1b[0Ksection_start:{start}:{name}[collapsed=true]\r\x1b[0K{shown}\n"
            f"{body}\x1b[0Ksection_end:{end}:{name}\r\x1b[0K\n"
        )


def fold_for(name: str | None) -> Fold | None:
    if name == "github":
        return GitHubGroups()
    if name == "gitlab":
        return GitLabSections()
    return None
