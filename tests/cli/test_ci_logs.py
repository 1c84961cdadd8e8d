"""CI logs: a line per node, not per task; GitHub annotations and groups; GitLab sections.

Every run is the installed ``flowrun`` in a subprocess with stderr a pipe, as in a CI job.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from flowrun.cli import cilog
from flowrun.engine import SQLiteStore

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

N = 20_000
FAIL = (7, 5007)  # items that fail on every attempt
FLAKY = (3, 4003, 8003)  # items whose first attempt fails
SAYS = (1, 10_001)  # items that print a line

LIB = (
    """
import sys
import time
from pathlib import Path

def items(state, ctx):
    return list(range(state["n"]))

def work(state, ctx):
    i = ctx.item
    if i in (FAIL):
        raise ValueError(f"bad item {i}")
    if i in (FLAKY) and ctx.attempt == 1:
        raise RuntimeError(f"flaky {i}")
    if i in (SAYS):
        print(f"note about {i}")
    return i

def gated(state, ctx):
    while ctx.item >= 4 and not Path("gate").exists():
        time.sleep(0.02)
    return ctx.item

def chatty(state, ctx):
    for j in range(3):
        print(f"line {j} of {ctx.item}")
        sys.stdout.flush()
        time.sleep(0.05)
    if ctx.item == 1:
        raise ValueError("50% done,\\nthen: broke")
    return ctx.item

def flood(state, ctx):
    for j in range(state["n"]):
        print(f"flood line {j:08d} " + "x" * 40)
    return {}
""".replace("(FAIL)", repr(FAIL))
    .replace("(FLAKY)", repr(FLAKY))
    .replace("(SAYS)", repr(SAYS))
)

WF = """
name: big
state:
  n: {default: 0}
  items: {default: []}
  out: {default: [], reducer: append}
start: make
config: {max_concurrency: 8}
nodes:
  make:
    python: lib:items
    save: items
    next: work
  work:
    foreach: "{{ state.items }}"
    python: lib:FN
    retry: {max_attempts: 2, backoff: 1ms}
    save: out
"""


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "GITHUB_ACTIONS", "GITHUB_WORKSPACE", "GITLAB_CI")
    }
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def _flowrun(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(**env),
        stdin=subprocess.DEVNULL,
    )


def _workflow(write: Write, fn: str) -> None:
    write("lib.py", LIB)
    write("wf.yaml", WF.replace("FN", fn))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the 20,000-item workflow (items 7 and 5007 fail, three retry)."""
    root = tmp_path_factory.mktemp("big")
    (root / "lib.py").write_text(LIB, encoding="utf-8")
    (root / "wf.yaml").write_text(WF.replace("FN", "work"), encoding="utf-8")
    return root


def test_a_20000_item_foreach_without_a_terminal_prints_lines_per_node(big: Path) -> None:
    # progress lines every 5 s are their own test: a loaded machine that takes longer
    # than that must not add any here
    p = _flowrun(
        big, "run", "wf.yaml", "--db", "plain.db", "--set", f"n={N}",
        FLOWRUN_PROGRESS_INTERVAL="3600",
    )  # fmt: skip
    assert p.returncode == 1, p.stderr[-3000:]
    lines = p.stderr.splitlines()
    assert len(lines) < 50, p.stderr[-3000:]
    assert not [x for x in lines if re.match(r"step 1  work\[\d+\]  ok", x)]  # none per task
    # once at the node's end: counts, time and rate
    ends = [x for x in lines if x.startswith("step 1  work  ")]
    assert len(ends) == 1, lines
    assert re.fullmatch(
        rf"step 1  work  {N - len(FAIL):,}/{N:,} done, {len(FAIL)} failed in \S+"
        r" \([\d,]+ tasks/s\)",
        ends[0],
    )
    # every failure and every retry, one line each, with its cause
    at = r"(lib\.py:\d+ in work: )?"  # where the exception was raised
    for i in FAIL:
        failed = rf"step 1  work\[{i}\]  FAILED after 2 attempt\(s\): {at}ValueError: bad item {i}"
        assert sum(bool(re.fullmatch(failed, x)) for x in lines) == 1, lines
        retried = rf"step 1  work\[{i}\]  attempt 1 failed \({at}ValueError: bad item {i}\);.*"
        assert sum(bool(re.fullmatch(retried, x)) for x in lines) == 1, lines
    for i in FLAKY:
        retried_lines = [x for x in lines if x.startswith(f"step 1  work[{i}]  attempt 1 failed")]
        assert len(retried_lines) == 1, lines
        assert re.fullmatch(
            rf"step 1  work\[{i}\]  attempt 1 failed \({at}RuntimeError: flaky {i}\);"
            r" retrying in 1ms",
            retried_lines[0],
        )
    # the nodes' own output, labelled, as without a CI format
    for i in SAYS:
        assert lines.count(f"work[{i}] | note about {i}") == 1
    assert "step 0  make  ok  " in p.stderr  # a node of one task: its line, as before


def test_verbose_prints_a_start_and_an_end_line_per_task(big: Path) -> None:
    p = _flowrun(big, "run", "wf.yaml", "--db", "verbose.db", "--set", f"n={N}", "-v")
    assert p.returncode == 1, p.stderr[-3000:]
    lines = p.stderr.splitlines()
    started = {m[1] for x in lines if (m := re.fullmatch(r"step 1  work\[(\d+)\]  started", x))}
    ok = {m[1] for x in lines if (m := re.match(r"step 1  work\[(\d+)\]  ok  \S+", x))}
    failed = {m[1] for x in lines if (m := re.match(r"step 1  work\[(\d+)\]  FAILED after", x))}
    assert len(started) == N
    assert sum(bool(re.fullmatch(r"step 1  work\[(\d+)\]  started", x)) for x in lines) == N
    assert failed == {str(i) for i in FAIL}
    assert ok == {str(i) for i in range(N)} - failed
    for i in FLAKY:  # a retried task's end line says how many attempts it took
        assert any(re.fullmatch(rf"step 1  work\[{i}\]  ok  \S+, 2 attempts", x) for x in lines)


def test_quiet_and_verbose_together_are_a_usage_error(write: Write, tmp_path: Path) -> None:
    _workflow(write, "work")
    p = _flowrun(tmp_path, "run", "wf.yaml", "--db", "f.db", "-q", "-v")
    assert p.returncode == 2
    assert "flowrun: error: --quiet and --verbose: pick one" in p.stderr


def test_a_progress_line_while_a_foreach_node_is_running(write: Write, tmp_path: Path) -> None:
    """Items 0-3 finish, 4 and 5 wait for a file: the line says so before the node ends."""
    _workflow(write, "gated")
    proc = subprocess.Popen(
        [FLOWRUN, "run", "wf.yaml", "--db", "f.db", "--set", "n=6"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(FLOWRUN_PROGRESS_INTERVAL="0.2"),
    )
    assert proc.stderr is not None
    seen = b""
    want = re.compile(rb"^step 1  work  4/6 done, 2 running, [\d,]+ tasks/s$", re.M)
    try:
        while not want.search(seen):
            ready, _, _ = select.select([proc.stderr], [], [], 60)
            assert ready, seen.decode()
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, seen.decode()  # the run ended without the line
            seen += chunk
    finally:
        (tmp_path / "gate").touch()
        rest = proc.communicate(timeout=60)[1]
    text = (seen + rest).decode()
    assert proc.returncode == 0, text
    assert re.search(r"^step 1  work  6/6 done in \S+ \([\d,]+ tasks/s\)$", text, re.M), text


# GitHub Actions -----------------------------------------------------------------------------
BAD = """
name: bad
state: {}
nodes:
  a:
    python: lib:items
    nxt: END
"""


def test_github_annotation_of_a_workflow_error_exact_and_escaped(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    write("ci/bad,1:x.yaml", BAD)  # , and : in a property are escaped
    p = _flowrun(
        tmp_path / "ci", "validate", "bad,1:x.yaml", GITHUB_ACTIONS="true", GITHUB_WORKSPACE=".."
    )
    assert p.returncode == 2
    assert p.stderr.splitlines()[0] == (
        "::error file=ci/bad%2C1%3Ax.yaml,line=6,col=5::nodes.a: unknown key 'nxt'"
        "%0Ahint: did you mean 'next'?"
    )
    assert "flowrun: error: bad,1:x.yaml:6:5: nodes.a: unknown key 'nxt'" in p.stderr
    # run reports it the same way; with --json, stdout stays one JSON document
    r = _flowrun(tmp_path / "ci", "run", "bad,1:x.yaml", "--json", GITHUB_ACTIONS="true")
    assert r.returncode == 2
    assert json.loads(r.stdout)["exit_code"] == 2
    assert r.stderr.splitlines()[0].startswith("::error file=bad%2C1%3Ax.yaml,line=6,col=5::")
    # without GITHUB_ACTIONS=true, no workflow commands
    plain = _flowrun(tmp_path / "ci", "validate", "bad,1:x.yaml", GITHUB_ACTIONS="false")
    assert plain.returncode == 2
    assert "::error" not in plain.stderr


THREE = """
name: three
state: {}
start: [a, b, c]
nodes:
  a:
    python: lib:items
    nxt: END
  b:
    python: lib:items
    tiemout: 5
  c:
    run: [echo, hi]
    retyr: {}
"""


def test_github_annotations_for_each_error_of_a_workflow_and_json_intact(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    write("three.yaml", THREE)
    p = _flowrun(tmp_path, "validate", "three.yaml", "--json", GITHUB_ACTIONS="true")
    assert p.returncode == 2
    assert len(json.loads(p.stdout)["errors"]) == 3  # stdout: one JSON document
    assert [x for x in p.stderr.splitlines() if x.startswith("::")] == [
        "::error file=three.yaml,line=7,col=5::nodes.a: unknown key 'nxt'"
        "%0Ahint: did you mean 'next'?",
        "::error file=three.yaml,line=10,col=5::nodes.b: unknown key 'tiemout'"
        "%0Ahint: did you mean 'timeout'?",
        "::error file=three.yaml,line=13,col=5::nodes.c: unknown key 'retyr'"
        "%0Ahint: did you mean 'retry'?",
    ]
    # GitHub shows 10 annotations of a step: no more are written
    many = "name: many\nstate: {}\nnodes:\n" + "".join(
        f"  n{i}: {{python: lib:items, nxt: END}}\n" for i in range(15)
    )
    write("many.yaml", many)
    m = _flowrun(tmp_path, "validate", "many.yaml", GITHUB_ACTIONS="true")
    assert m.returncode == 2
    shown = [x for x in m.stderr.splitlines() if x.startswith("::error ")]
    assert [re.sub(r"line=\d+", "line=L", x).split("::")[1] for x in shown] == [
        "error file=many.yaml,line=L,col=27"
    ] * 10
    assert m.stderr.count("flowrun: error: many.yaml:") > 10  # more errors than annotations


def test_github_annotations_one_per_error_of_an_invalid_workflow(tmp_path: Path) -> None:
    errors = [
        SimpleNamespace(
            message=f"wf.yaml:{n}:3: {what}",
            cause=what,
            hint=hint,
            file="wf.yaml",
            line=n,
            column=3,
        )
        for n, what, hint in (
            (4, "nodes.a: unknown key 'nxt'", "did you mean 'next'?"),
            (7, "nodes.b.next: no node 'end'", None),
            (9, "100% wrong", None),
        )
    ]
    errors.append(SimpleNamespace(message="no file here", hint=None, file=None))
    assert cilog.workflow_error_lines(errors) == [
        "::error file=wf.yaml,line=4,col=3::nodes.a: unknown key 'nxt'"
        "%0Ahint: did you mean 'next'?",
        "::error file=wf.yaml,line=7,col=3::nodes.b.next: no node 'end'",
        "::error file=wf.yaml,line=9,col=3::100%25 wrong",
        "::error::no file here",
    ]
    assert cilog.escape_property("a%b\r\nc:d,e") == "a%25b%0D%0Ac%3Ad%2Ce"
    assert cilog.escape_data("a%b\r\nc:d,e") == "a%25b%0D%0Ac:d,e"


def _chatty(
    write: Write, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    _workflow(write, "chatty")
    return _flowrun(tmp_path, "run", "wf.yaml", "--db", "f.db", "--set", "n=4", *args, **env)


def test_github_groups_enclose_each_tasks_lines_and_a_failure_is_annotated(
    write: Write, tmp_path: Path
) -> None:
    p = _chatty(write, tmp_path, "--json", GITHUB_ACTIONS="true")
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["status"] == "failed"  # stdout: one JSON document
    lines = p.stderr.splitlines()
    groups: dict[str, list[str]] = {}
    inside: str | None = None
    for x in lines:
        if x.startswith("::group::"):
            assert inside is None, "groups never nest"
            inside = x.removeprefix("::group::")
            groups[inside] = []
        elif x == "::endgroup::":
            assert inside is not None
            inside = None
        elif inside is not None:
            groups[inside].append(x)
        else:
            assert " | " not in x, f"a task's line outside its group: {x}"
    assert inside is None
    tries = {0: 1, 1: 2, 2: 1, 3: 1}  # item 1 fails on both attempts
    assert groups == {
        f"step 1  work[{i}]  output": [f"work[{i}] | line {j} of {i}" for j in range(3)] * tries[i]
        for i in range(4)
    }
    error = next(
        r.error
        for r in SQLiteStore(str(tmp_path / "f.db")).task_results(json.loads(p.stdout)["run_id"])
        if r.status != "ok"
    )
    assert error is not None and "\n" in error and "%" in error
    escaped = error.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    assert lines.count(f"::error title=flowrun%3A node work[1] failed::{escaped}") == 1
    assert re.fullmatch(  # the cause, where it was raised, and the escapes
        r"::error title=flowrun%3A node work\[1\] failed::(lib\.py:\d+ in chatty: )?"
        r"ValueError: 50%25 done,%0Athen: broke",
        f"::error title=flowrun%3A node work[1] failed::{escaped}",
    )
    # the annotation and the failure line are outside every group
    at = lines.index(f"::error title=flowrun%3A node work[1] failed::{escaped}")
    # the error's two lines, as the failure line prints them
    assert lines[at - 2].startswith("step 1  work[1]  FAILED after 2 attempt(s): ")
    assert lines[at - 2].endswith("ValueError: 50% done,")
    assert lines[at - 1] == "then: broke"


def test_a_task_printing_more_than_a_mebibyte_is_folded_in_parts(
    write: Write, tmp_path: Path
) -> None:
    write("lib.py", LIB)
    write("wf.yaml", "name: flood\nstate: {n: {default: 0}}\nnodes:\n  f: {python: lib:flood}\n")
    n = 30_000  # 58 bytes a line: 1.7 MB
    p = _flowrun(
        tmp_path, "run", "wf.yaml", "--db", "f.db", "--set", f"n={n}", GITHUB_ACTIONS="true"
    )
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stderr.splitlines()
    heads = [x for x in lines if x.startswith("::group::")]
    assert heads[0] == "::group::step 0  f  output (continued below)"
    assert heads[-1] == "::group::step 0  f  output"
    assert len(heads) == 2
    shown = [x for x in lines if x.startswith("f | flood line ")]
    assert shown == [f"f | flood line {j:08d} " + "x" * 40 for j in range(n)]


# GitLab CI ----------------------------------------------------------------------------------
SECTION = re.compile(
    r"\x1b\[0Ksection_start:(\d+):([A-Za-z0-9_.-]+)\[collapsed=true\]\r\x1b\[0K(.*)\n"
    r"((?:(?!\x1b).*\n)*?)"
    r"\x1b\[0Ksection_end:(\d+):\2\r\x1b\[0K\n"
)


def test_gitlab_sections_are_well_formed_and_hold_each_tasks_lines(
    write: Write, tmp_path: Path
) -> None:
    _workflow(write, "chatty")
    p = subprocess.run(  # bytes: a CR must stay a CR
        [FLOWRUN, "run", "wf.yaml", "--db", "f.db", "--set", "n=4"],
        cwd=tmp_path,
        capture_output=True,
        timeout=600,
        env=_env(GITLAB_CI="true"),
        stdin=subprocess.DEVNULL,
    )
    stderr = p.stderr.decode()
    assert p.returncode == 1, stderr
    sections = SECTION.findall(stderr)
    assert len(sections) == 4
    names = [s[1] for s in sections]
    assert len(set(names)) == 4
    tries = {0: 1, 1: 2, 2: 1, 3: 1}
    by_header = {}
    for start, _name, header, body, end in sections:
        assert int(start) <= int(end)
        by_header[header] = body.splitlines()
    assert by_header == {
        f"step 1  work[{i}]  output": [f"work[{i}] | line {j} of {i}" for j in range(3)] * tries[i]
        for i in range(4)
    }
    rest = SECTION.sub("", stderr)
    assert "section_" not in rest and " | line " not in rest  # nothing outside a section
    assert "::error" not in stderr  # GitHub's commands only under GitHub
