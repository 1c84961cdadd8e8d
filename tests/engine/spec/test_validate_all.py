"""`flowrun validate` finds everything it can before a run spends anything.

Every error of a file in one pass (each at its file:line:col), python targets
looked up without importing them, an llm node whose reply could never reach the
state, `end` for `END`, and a join that waits for a node that cannot run first.
All through the real console entry point, in a real folder.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from flowrun.cli import options
from flowrun.cli.app import main

_LOCATED = re.compile(r"^flowrun: error: (wf\.yaml):(\d+):(\d+): (.*)$")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def errors(self) -> list[tuple[int, int, str]]:
        """(line, column, message) of every error line on stderr."""
        found = []
        for line in self.err.splitlines():
            m = _LOCATED.match(line)
            if m:
                found.append((int(m[2]), int(m[3]), m[4]))
        return found


Cli = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)

    def _run(*argv: str) -> Result:
        capsys.readouterr()
        options._json_written = False  # one process, many commands: each prints its own
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        got = capsys.readouterr()
        code = exit_.value.code
        return Result(code if isinstance(code, int) else (0 if code is None else 1), *got)

    return _run


def put(tmp_path: Path, text: str, name: str = "wf.yaml") -> str:
    (tmp_path / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return name


def only_error(r: Result) -> tuple[int, int, str, str | None]:
    """The one error of a failed validate: line, column, message, hint."""
    assert r.code == 2, (r.code, r.err)
    assert "Traceback" not in r.err + r.out
    errors = r.errors()
    assert len(errors) == 1, r.err
    lines = r.err.splitlines()
    hint = lines[1].removeprefix("  hint: ") if len(lines) > 1 else None
    return (*errors[0], hint)


# -- every error in one pass -------------------------------------------------------


def test_validate_reports_three_errors_of_one_file_in_one_pass(cli: Cli, tmp_path: Path) -> None:
    put(
        tmp_path,
        """
        name: three
        state:
          n: {default: 0}
        nodes:
          a:
            set: {n: 1}
            nxt: b
            next: b
          b:
            shell: "echo {{ state.n }}"
            timeout: 5 minutes
            next: c
          c:
            set: {n: 2}
            save: count
        """,
    )
    r = cli("validate", "wf.yaml")
    assert r.code == 2, r.err
    assert "Traceback" not in r.err
    errors = r.errors()
    assert [(line, col) for line, col, _ in errors] == [(7, 5), (11, 14), (15, 11)], r.err
    assert "nodes.a: unknown key 'nxt'" in errors[0][2]
    assert "nodes.b.timeout: bad duration '5 minutes'" in errors[1][2]
    assert "nodes.c.save: save names undeclared state key 'count'" in errors[2][2]
    hints = [line for line in r.err.splitlines() if line.startswith("  hint: ")]
    assert hints[0] == "  hint: did you mean 'next'?"
    assert len(r.err.splitlines()) == 6  # each error and its hint, nothing else

    js = cli("validate", "wf.yaml", "--json")
    assert js.code == 2
    out = json.loads(js.out)
    assert out["exit_code"] == 2
    assert out["error"] == f"wf.yaml:7:5: {errors[0][2]}"  # the first, as before
    assert [(e["file"], e["line"], e["column"]) for e in out["errors"]] == [
        ("wf.yaml", 7, 5),
        ("wf.yaml", 11, 14),
        ("wf.yaml", 15, 11),
    ]
    assert [e["key"] for e in out["errors"]] == ["nodes.a.nxt", "nodes.b.timeout", "nodes.c.save"]
    assert out["errors"][0]["hint"] == "did you mean 'next'?"


def test_validate_shows_twenty_errors_and_counts_the_rest(cli: Cli, tmp_path: Path) -> None:
    nodes = "".join(f"  n{i}: {{shell: x, timeout: soon, next: {'END'}}}\n" for i in range(25))
    (tmp_path / "wf.yaml").write_text(
        f"name: many\nstart: [{', '.join(f'n{i}' for i in range(25))}]\nnodes:\n{nodes}"
    )
    r = cli("validate", "wf.yaml")
    assert r.code == 2
    assert [line for line, _, _ in r.errors()] == list(range(4, 24))
    assert r.err.splitlines()[-1].startswith("flowrun: error: and 5 more errors")
    out = json.loads(cli("validate", "wf.yaml", "--json").out)
    assert [e["line"] for e in out["errors"]] == list(range(4, 29))


def test_a_file_that_does_not_parse_is_one_error(cli: Cli, tmp_path: Path) -> None:
    put(tmp_path, "name: t\nnodes:\n  a: {shell: x\n  b: [\n")
    r = cli("validate", "wf.yaml")
    assert r.code == 2
    assert len(r.errors()) == 1, r.err


def test_a_misspelt_nodes_key_is_one_error_not_two(cli: Cli, tmp_path: Path) -> None:
    put(tmp_path, "name: t\nnodez:\n  a: {shell: x}\n")
    line, col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, col) == (2, 1) and "unknown key 'nodez'" in message
    assert hint == "did you mean 'nodes'?"


def test_an_unknown_next_node_is_not_echoed_as_unreachable(cli: Cli, tmp_path: Path) -> None:
    put(
        tmp_path,
        """
        name: t
        nodes:
          a: {shell: x, next: sumarize}
          summarize: {shell: y}
        """,
    )
    line, col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, col) == (3, 23) and "unknown node 'sumarize'" in message
    assert hint == "did you mean 'summarize'?"


# -- python: module:function, found without running it -----------------------------


def _python_node(tmp_path: Path, target: str) -> None:
    put(
        tmp_path,
        f"""
        name: t
        nodes:
          judge:
            python: "{target}"
        """,
    )


def test_a_python_target_in_a_module_that_does_not_exist_is_an_error(
    cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "review_lib.py").write_text("def judge(state, ctx):\n    return None\n")
    _python_node(tmp_path, "reviewlib:judge")
    line, col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, col) == (4, 13)
    assert message.startswith("nodes.judge.python: no module 'reviewlib'")
    assert hint == "did you mean 'review_lib'?"


def test_a_python_target_the_module_does_not_define_is_an_error_with_a_near_miss(
    cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "lib.py").write_text(
        "import os\n\ndef judge(state, ctx):\n    return None\n\nclass Helper:\n    pass\n"
    )
    _python_node(tmp_path, "lib:judeg")
    line, col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, col) == (4, 13)
    assert message == "nodes.judge.python: 'lib' has no function 'judeg'"
    assert hint == "did you mean 'judge'?"


def test_an_async_python_target_is_an_error(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("async def judge(state, ctx):\n    return None\n")
    _python_node(tmp_path, "lib:judge")
    _, _, message, hint = only_error(cli("validate", "wf.yaml"))
    assert "lib.judge is an async def" in message
    assert hint is not None and "def judge(state, ctx)" in hint


def test_validate_never_imports_the_module_it_checks(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit('imported')\n"
    )
    (tmp_path / "pkg" / "steps.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "if True:\n    def judge(state, ctx):\n        return None\n"
    )
    _python_node(tmp_path, "pkg.steps:judge")
    r = cli("validate", "wf.yaml")
    assert r.code == 0, r.err
    assert not marker.exists()
    _python_node(tmp_path, "pkg.stepz:judge")
    _, _, message, hint = only_error(cli("validate", "wf.yaml"))
    assert "no module 'pkg.stepz'" in message and hint == "did you mean 'steps'?"
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    ["json:loads", "os.path:join", "lib:made", "lib:imported", "lib:Klass", "star:anything"],
)
def test_python_targets_that_may_be_callable_pass(cli: Cli, tmp_path: Path, target: str) -> None:
    (tmp_path / "lib.py").write_text(
        "from json import loads as imported\n"
        "made = (lambda state, ctx: None)\n"
        "class Klass:\n    pass\n"
    )
    (tmp_path / "star.py").write_text("from json import *\n")
    _python_node(tmp_path, target)
    r = cli("validate", "wf.yaml")
    assert r.code == 0, r.err


def test_a_python_module_with_a_syntax_error_is_an_error(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("def judge(state, ctx)\n    return None\n")
    _python_node(tmp_path, "lib:judge")
    _, _, message, _ = only_error(cli("validate", "wf.yaml"))
    assert "'lib' cannot be imported" in message and "lib.py:1" in message


# -- an llm reply that would be dropped --------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("", "reply text is not a mapping"),
        ("json: false", "reply text is not a mapping"),
    ],
)
def test_an_llm_node_without_save_whose_reply_is_text_is_an_error(
    cli: Cli, tmp_path: Path, extra: str, fragment: str
) -> None:
    put(
        tmp_path,
        f"""
        name: t
        state:
          summary: {{default: null}}
        nodes:
          ask:
            llm: {{model: gpt-4o-mini, prompt: "Summarise", {extra}}}
        """,
    )
    line, col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, col) == (6, 5)
    assert message.startswith("nodes.ask.llm: the reply is never used") and fragment in message
    assert hint is not None and "save: KEY" in hint


def test_an_llm_json_reply_without_save_in_a_workflow_without_state_is_an_error(
    cli: Cli, tmp_path: Path
) -> None:
    put(
        tmp_path,
        """
        name: t
        nodes:
          ask:
            llm: {model: gpt-4o-mini, prompt: "JSON please", json: true}
        """,
    )
    _, _, message, _ = only_error(cli("validate", "wf.yaml"))
    assert "the workflow declares none" in message


@pytest.mark.parametrize(
    "node",
    [
        '{llm: {model: gpt-4o-mini, prompt: "Summarise"}, save: summary}',
        '{llm: {model: gpt-4o-mini, prompt: "JSON with summary", json: true}}',
        '{llm: {model: gpt-4o-mini, prompt: "x", json: "{{ state.summary is none }}"}}',
    ],
)
def test_an_llm_node_whose_reply_can_reach_the_state_passes(
    cli: Cli, tmp_path: Path, node: str
) -> None:
    put(tmp_path, f"name: t\nstate:\n  summary: {{default: null}}\nnodes:\n  ask: {node}\n")
    r = cli("validate", "wf.yaml")
    assert r.code == 0, r.err


# -- END in lower case ----------------------------------------------------------------


@pytest.mark.parametrize(("edge", "col"), [("next: end", 23), ("routes: [{to: End}]", 31)])
def test_end_in_lower_case_suggests_END(cli: Cli, tmp_path: Path, edge: str, col: int) -> None:
    put(tmp_path, f"name: t\nnodes:\n  a: {{shell: x, {edge}}}\n")
    line, got_col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, got_col) == (3, col)
    assert "unknown node" in message
    assert hint is not None and hint.startswith("did you mean 'END'?")


# -- a join that can never run -----------------------------------------------------


def test_a_join_waiting_for_a_node_that_runs_only_after_it_is_an_error(
    cli: Cli, tmp_path: Path
) -> None:
    put(
        tmp_path,
        """
        name: t
        nodes:
          fetch: {shell: x, next: [left, report]}
          left: {shell: y, next: report}
          report:
            needs: [left, publish]
            shell: z
            next: publish
          publish: {shell: w}
        """,
    )
    line, col, message, hint = only_error(cli("validate", "wf.yaml"))
    assert (line, col) == (6, 19)
    assert message == (
        "nodes.report.needs: join 'report' can never run:"
        " it waits for 'publish', which runs only after 'report' itself"
    )
    assert hint is not None and "'publish'" in hint


def test_a_join_waiting_for_an_unreachable_node_names_it(cli: Cli, tmp_path: Path) -> None:
    put(
        tmp_path,
        """
        name: t
        nodes:
          a: {shell: x, next: j}
          j: {needs: [a, lost], shell: y}
          lost: {shell: z}
        """,
    )
    r = cli("validate", "wf.yaml")
    assert r.code == 2
    messages = [m for _, _, m in r.errors()]
    assert any("node 'lost' is unreachable" in m for m in messages), r.err
    assert (
        "nodes.j.needs: join 'j' can never run: it waits for 'lost', which never runs"
        " (it is unreachable from start)" in messages
    ), r.err


def test_a_join_whose_needs_run_on_other_branches_passes(cli: Cli, tmp_path: Path) -> None:
    put(
        tmp_path,
        """
        name: t
        nodes:
          fetch: {shell: x, next: [left, right]}
          left: {shell: y, next: both}
          right: {shell: z, next: both}
          both: {needs: [left, right], shell: w, next: fetch2}
          fetch2: {shell: v}
        """,
    )
    r = cli("validate", "wf.yaml")
    assert r.code == 0, r.err
