"""`flowrun validate` / `flowrun run` reject bad workflow files with one precise line.

Every case goes through the real console entry point (``flowrun.cli.app.main``)
and pins: exit code 2, ``file:line:column`` of the offending key or value, the key
in the message, the did-you-mean hint for near misses, and no traceback. A few
end-to-end cases run the installed ``flowrun`` binary.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from flowrun.cli.app import main
from flowrun.engine.spec import yamlpos

from tests.support.installed import FLOWRUN


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """cli(*argv) runs `flowrun *argv` in-process in tmp_path; returns exit code and output."""
    monkeypatch.chdir(tmp_path)

    def _run(*argv: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        got = capsys.readouterr()
        code = exit_.value.code
        return Result(code if isinstance(code, int) else (0 if code is None else 1), *got)

    return _run


def put(tmp_path: Path, text: str, name: str = "wf.yaml") -> str:
    (tmp_path / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return name


def one_error(r: Result) -> tuple[str, str | None]:
    """The error line and the hint of a failed command; asserts the shape of both."""
    assert r.code == 2, (r.code, r.err)
    assert "Traceback" not in r.err + r.out
    lines = r.err.splitlines()
    assert lines and lines[0].startswith("flowrun: error: "), r.err
    assert len(lines) <= 2, f"more than an error line and a hint:\n{r.err}"
    hint = None
    if len(lines) == 2:
        assert lines[1].startswith("  hint: "), r.err
        hint = lines[1].removeprefix("  hint: ")
    return lines[0].removeprefix("flowrun: error: "), hint


# (id, workflow text, "line:col", fragments the message holds, fragment the hint holds)
CASES: list[tuple[str, str, str, tuple[str, ...], str | None]] = [
    (
        "unknown top-level key",
        """
        name: t
        nodez:
          a: {shell: x}
        """,
        "2:1",
        ("unknown key 'nodez'",),
        "did you mean 'nodes'?",
    ),
    (
        "unknown node key nxt",
        """
        name: t
        nodes:
          a:
            shell: echo hi
            nxt: END
        """,
        "5:5",
        ("nodes.a", "unknown key 'nxt'"),
        "did you mean 'next'?",
    ),
    (
        "unknown config key",
        """
        name: t
        config:
          max_concurency: 2
        nodes:
          a: {shell: x}
        """,
        "3:3",
        ("config", "unknown key 'max_concurency'"),
        "did you mean 'max_concurrency'?",
    ),
    (
        "unknown retry key",
        """
        name: t
        nodes:
          a:
            shell: x
            retry:
              max_attempt: 3
        """,
        "6:7",
        ("nodes.a.retry", "unknown key 'max_attempt'"),
        "did you mean 'max_attempts'?",
    ),
    (
        "unknown config retry key",
        """
        name: t
        config:
          retry: {backof: 1s}
        nodes:
          a: {shell: x}
        """,
        "3:11",
        ("config.retry", "unknown key 'backof'"),
        "did you mean 'backoff'?",
    ),
    (
        "unknown route key",
        """
        name: t
        nodes:
          a:
            shell: x
            routes:
              - whn: "true"
                to: END
        """,
        "6:9",
        ("nodes.a.routes[0]", "unknown key 'whn'"),
        "did you mean 'when'?",
    ),
    (
        "unknown state key field",
        """
        name: t
        state:
          count: {defualt: 0}
        nodes:
          a: {shell: x}
        """,
        "3:11",
        ("state.count", "unknown key 'defualt'"),
        "did you mean 'default'?",
    ),
    (
        "a key with a newline stays on one line",
        """
        name: t
        state:
          "we\\nird": {defualt: 1}
        nodes:
          a: {shell: x}
        """,
        "3:15",
        ('state["we\\nird"]', "unknown key 'defualt'"),
        "did you mean 'default'?",
    ),
    (
        "unknown llm key",
        """
        name: t
        nodes:
          a:
            llm:
              model: m
              prompt: hi
              temprature: 0
            save: out
        state: {out: {}}
        """,
        "7:7",
        ("nodes.a.llm", "unknown key 'temprature'"),
        "did you mean 'temperature'?",
    ),
    (
        "output on a python node",
        """
        name: t
        nodes:
          a:
            python: json:loads
            output: json
        """,
        "5:5",
        ("nodes.a", "unknown key 'output'"),
        "only to run and shell",
    ),
    (
        "missing name",
        """
        nodes:
          a: {shell: x}
        """,
        "1:1",
        ("missing required key 'name'",),
        "name:",
    ),
    (
        "missing nodes",
        """
        name: t
        state: {}
        """,
        "1:1",
        ("missing required key 'nodes'",),
        "nodes:",
    ),
    (
        "empty nodes",
        """
        name: t
        nodes: {}
        """,
        "2:8",
        ("nodes", "at least one node"),
        None,
    ),
    (
        "node with no kind",
        """
        name: t
        nodes:
          a:
            description: does nothing
        """,
        "3:3",
        ("nodes.a", "needs a kind"),
        "run, shell, python, llm, set",
    ),
    (
        "misspelled kind",
        """
        name: t
        nodes:
          a:
            shel: echo hi
        """,
        "4:5",
        ("nodes.a", "unknown key 'shel'"),
        "did you mean 'shell'?",
    ),
    (
        "node with two kinds",
        """
        name: t
        nodes:
          a:
            shell: echo hi
            run: [echo, hi]
        """,
        "5:5",
        ("nodes.a", "two", "shell and run"),
        "two nodes",
    ),
    (
        "unknown node in next",
        """
        name: t
        nodes:
          fetch:
            shell: x
            next: sumarize
          summarize: {shell: y}
        """,
        "5:11",
        ("nodes.fetch.next", "unknown node 'sumarize'"),
        "did you mean 'summarize'?",
    ),
    (
        "unknown node in a next list",
        """
        name: t
        nodes:
          fetch:
            shell: x
            next: [left, rihgt]
          left: {shell: y}
          right: {shell: z}
        """,
        "5:18",
        ("nodes.fetch.next[1]", "unknown node 'rihgt'"),
        "did you mean 'right'?",
    ),
    (
        "unknown node in routes",
        """
        name: t
        nodes:
          judge:
            shell: x
            routes:
              - when: "true"
                to: notfy
              - to: END
          notify: {shell: y}
        """,
        "7:13",
        ("nodes.judge.routes[0].to", "unknown node 'notfy'"),
        "did you mean 'notify'?",
    ),
    (
        "unknown node in needs",
        """
        name: t
        nodes:
          a:
            shell: x
            next: [b, c]
          b: {shell: y, next: c}
          c:
            shell: z
            needs: [a, bb]
        """,
        "9:16",
        ("nodes.c.needs[1]", "unknown node 'bb'"),
        "did you mean 'b'?",
    ),
    (
        "unknown start node",
        """
        name: t
        start: fetc
        nodes:
          fetch: {shell: x}
        """,
        "2:8",
        ("start", "unknown node 'fetc'"),
        "did you mean 'fetch'?",
    ),
    (
        "END as start",
        """
        name: t
        start: END
        nodes:
          a: {shell: x}
        """,
        "2:8",
        ("start", "END"),
        None,
    ),
    (
        "undeclared state key in save",
        """
        name: t
        state:
          summaries: {default: [], reducer: append}
        nodes:
          a:
            shell: x
            save: sumaries
        """,
        "7:11",
        ("nodes.a.save", "undeclared state key 'sumaries'"),
        "did you mean 'summaries'?",
    ),
    (
        "undeclared state key in set",
        """
        name: t
        state:
          count: {default: 0}
        nodes:
          a:
            set:
              cont: 1
        """,
        "7:7",
        ("nodes.a.set", "undeclared state key 'cont'"),
        "did you mean 'count'?",
    ),
    (
        "undeclared state key in a template",
        """
        name: t
        state:
          missing: {default: 0}
        nodes:
          a:
            shell: "echo {{ state.missng }}"
        """,
        "6:12",
        ("nodes.a.shell", "undeclared state key 'missng'"),
        "did you mean 'missing'?",
    ),
    (
        "undeclared state key via state['...']",
        """
        name: t
        state:
          source: {default: x}
        nodes:
          a:
            run: [cat, "{{ state['sorce'] }}"]
        """,
        "6:16",
        ("nodes.a.run[1]", "undeclared state key 'sorce'"),
        "did you mean 'source'?",
    ),
    (
        "undeclared state key in a condition",
        """
        name: t
        state:
          flagged: {default: 0}
        nodes:
          a:
            shell: x
            routes:
              - when: state.flaged > 0
                to: END
        """,
        "8:15",
        ("nodes.a.routes[0].when", "undeclared state key 'flaged'"),
        "did you mean 'flagged'?",
    ),
    (
        "undefined name in a template",
        """
        name: t
        state:
          x: {default: 1}
        nodes:
          a:
            set:
              x: "{{ stat.x }}"
        """,
        "7:10",
        ("nodes.a.set.x", "undefined name 'stat'"),
        "did you mean 'state'?",
    ),
    (
        "template syntax error",
        """
        name: t
        nodes:
          a:
            shell: "echo {{ state. }}"
        """,
        "4:12",
        ("nodes.a.shell", "bad template", "syntax error"),
        "Jinja2",
    ),
    (
        "unknown filter",
        """
        name: t
        state:
          xs: {default: []}
        nodes:
          a:
            shell: "echo {{ state.xs | lenght }}"
        """,
        "6:12",
        ("nodes.a.shell", "No filter named 'lenght'"),
        "did you mean 'length'?",
    ),
    (
        "item outside foreach",
        """
        name: t
        nodes:
          a:
            shell: "echo {{ item.text }}"
        """,
        "4:12",
        ("nodes.a.shell", "undefined name 'item'"),
        "only in a node with foreach",
    ),
    (
        "index outside foreach",
        """
        name: t
        nodes:
          a:
            llm:
              model: m
              prompt: "number {{ index }}"
            save: out
        state: {out: {}}
        """,
        "6:15",
        ("nodes.a.llm.prompt", "undefined name 'index'"),
        "only in a node with foreach",
    ),
    (
        "item inside the foreach template itself",
        """
        name: t
        nodes:
          a:
            foreach: "{{ item }}"
            shell: x
        """,
        "4:14",
        ("nodes.a.foreach", "undefined name 'item'"),
        "only in a node with foreach",
    ),
    (
        "unreachable node",
        """
        name: t
        nodes:
          a:
            shell: x
            next: END
          orphan:
            shell: y
        """,
        "6:3",
        ("nodes.orphan", "unreachable"),
        "route to it",
    ),
    (
        "bad node timeout",
        """
        name: t
        nodes:
          a:
            shell: x
            timeout: 10 minutes
        """,
        "5:14",
        ("nodes.a.timeout", "bad duration '10 minutes'"),
        "30s",
    ),
    (
        "zero timeout",
        """
        name: t
        nodes:
          a:
            shell: x
            timeout: 0s
        """,
        "5:14",
        ("nodes.a.timeout", "bad duration '0s'"),
        "positive",
    ),
    (
        "bad config timeout",
        """
        name: t
        config:
          timeout: soon
        nodes:
          a: {shell: x}
        """,
        "3:12",
        ("config.timeout", "bad duration 'soon'"),
        "30s",
    ),
    (
        "bad backoff",
        """
        name: t
        nodes:
          a:
            shell: x
            retry:
              max_attempts: 3
              backoff: 1 sec
        """,
        "7:16",
        ("nodes.a.retry.backoff", "bad duration '1 sec'"),
        "250ms",
    ),
    (
        "bad max_attempts",
        """
        name: t
        nodes:
          a:
            shell: x
            retry: {max_attempts: 0}
        """,
        "5:27",
        ("nodes.a.retry.max_attempts", "≥ 1"),
        None,
    ),
    (
        "misspelled reducer",
        """
        name: t
        state:
          summaries: {default: [], reducer: apend}
        nodes:
          a: {shell: x}
        """,
        "3:37",
        ("state.summaries.reducer", "unknown reducer 'apend'"),
        "did you mean 'append'?",
    ),
    (
        "misspelled conflict_policy",
        """
        name: t
        config:
          conflict_policy: last_writer_win
        nodes:
          a: {shell: x}
        """,
        "3:20",
        ("config.conflict_policy", "'last_writer_win'"),
        "did you mean 'last_writer_wins'?",
    ),
    (
        "misspelled output",
        """
        name: t
        nodes:
          a:
            shell: x
            output: jsno
        """,
        "5:13",
        ("nodes.a.output", "unknown output 'jsno'"),
        "did you mean 'json'?",
    ),
    (
        "bad node name",
        """
        name: t
        nodes:
          1st step:
            shell: x
        """,
        "3:3",
        ("nodes", "bad node name '1st step'"),
        "[A-Za-z_]",
    ),
    (
        "END as a node name",
        """
        name: t
        nodes:
          a: {shell: x, next: END}
          END:
            shell: y
        """,
        "4:3",
        ("nodes", "END is reserved"),
        None,
    ),
    (
        "next and routes together",
        """
        name: t
        nodes:
          a:
            shell: x
            next: END
            routes:
              - to: END
        """,
        "6:5",
        ("nodes.a.routes", "either next or routes"),
        "default",
    ),
    (
        "a route after the default",
        """
        name: t
        nodes:
          a:
            shell: x
            routes:
              - to: END
              - when: "true"
                to: END
        """,
        "7:9",
        ("nodes.a.routes[1]", "never taken"),
        "default last",
    ),
    (
        "duplicate key",
        """
        name: t
        nodes:
          a:
            shell: x
            shell: y
        """,
        "5:5",
        ("nodes.a", "duplicate key 'shell'"),
        "remove one",
    ),
    (
        "duplicate node",
        """
        name: t
        nodes:
          a: {shell: x}
          a: {shell: y}
        """,
        "4:3",
        ("nodes", "duplicate key 'a'"),
        "remove one",
    ),
    (
        "unquoted yes as a node name in next",
        """
        name: t
        nodes:
          a: {shell: x, next: yes}
        """,
        "3:23",
        ("nodes.a.next", "boolean"),
        "quote it",
    ),
    (
        "state declared with a bare value",
        """
        name: t
        state:
          count: 0
        nodes:
          a: {shell: x}
        """,
        "3:10",
        ("state.count", "mapping"),
        "count: {default: 0}",
    ),
    (
        "bad python target",
        """
        name: t
        nodes:
          a:
            python: lib.judge
        """,
        "4:13",
        ("nodes.a.python", "'lib.judge'"),
        "module:function",
    ),
    (
        "invalid YAML syntax",
        """
        name: t
        nodes:
          a: {shell: x
          b: {shell: y}
        """,
        "4:4",
        ("invalid YAML",),
        None,
    ),
    (
        "a tab in the indentation",
        "name: t\nnodes:\n  a:\n\tshell: x\n",
        "4:1",
        ("invalid YAML", "'\\t'"),
        None,
    ),
    (
        "two documents",
        """
        name: t
        nodes: {a: {shell: x}}
        ---
        name: u
        """,
        "3:1",
        ("one document",),
        "---",
    ),
    ("empty file", "", "1:1", ("empty",), "name:"),
    ("only comments", "# nothing here\n", "1:1", ("empty",), "name:"),
    (
        "a list document",
        """
        - name: t
        """,
        "1:1",
        ("a workflow must be a mapping, not a list",),
        "name:",
    ),
    ("a scalar document", "hello\n", "1:1", ("mapping, not a string",), "name:"),
]


@pytest.mark.parametrize(
    ("text", "where", "fragments", "hint"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_validate_names_file_line_column_key_and_hint(
    cli: Cli,
    tmp_path: Path,
    text: str,
    where: str,
    fragments: tuple[str, ...],
    hint: str | None,
) -> None:
    name = put(tmp_path, text)
    message, got_hint = one_error(cli("validate", name))
    assert message.startswith(f"{name}:{where}: "), message
    for fragment in fragments:
        assert fragment in message, message
    if hint is None:
        return
    assert got_hint is not None, f"no hint for: {message}"
    assert hint in got_hint, got_hint


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        pytest.param(
            """
            name: t
            nodes:
              a:
                shell: x
                nxt: END
            """,
            "5:5",
            "unknown key 'nxt'",
            id="unknown key",
        ),
        pytest.param(
            """
            name: t
            state:
              total: {default: 0, reducer: add}
            nodes:
              a:
                set: {totl: 1}
            """,
            "6:11",
            "undeclared state key 'totl'",
            id="undeclared set key",
        ),
    ],
)
def test_run_validates_before_anything_runs(
    cli: Cli, tmp_path: Path, text: str, where: str, fragment: str
) -> None:
    name = put(tmp_path, text)
    r = cli("run", name, "--db", str(tmp_path / "f.db"))
    message, _ = one_error(r)
    assert message.startswith(f"{name}:{where}: ") and fragment in message, message
    assert not (tmp_path / "f.db").exists(), "an invalid workflow must not create a run"
    assert r.out == ""


def test_valid_file_is_one_line_on_stdout(cli: Cli, tmp_path: Path) -> None:
    name = put(
        tmp_path,
        """
        name: digest
        state:
          reviews: {default: []}
          summaries: {default: [], reducer: append}
          flagged: {default: 0, reducer: add}
          items: {default: [1, 2]}
        config:
          timeout: 250ms
          retry: {max_attempts: 2, backoff: 1s, max_backoff: 1h, jitter: false}
        start: fetch
        nodes:
          fetch:
            run: [cat, "{{ state.reviews | length }}", 3]
            output: json
            next: [summarize, count]
          summarize:
            foreach: "{{ state.reviews }}"
            llm: {model: m, prompt: "{{ index }}: {{ item.text }}"}
            save: summaries
            next: judge
          count:
            shell: "echo {{ state.get('flagged', 0) }} {{ state.items | join(',') }}"
            next: judge
          judge:
            needs: [summarize, count]
            python: "lib.sub:judge"
            timeout: 5m
            retry: {max_attempts: 3, backoff: 0}
            routes:
              - when: "state.flagged > 0 and run.step < 10 and node == 'judge'"
                to: [notify]
              - to: END
          notify:
            set: {flagged: "{{ range(3) | list | length }}"}
        """,
    )
    (tmp_path / "lib").mkdir()  # judge's module: validate reads it (without running it)
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "lib" / "sub.py").write_text("def judge(state, ctx):\n    return None\n")
    r = cli("validate", name)
    assert r.code == 0, r.err
    assert r.err == ""  # the result line is the report: stdout
    assert r.out.splitlines() == [f"{name}: ok (digest: 5 nodes, 4 state keys)"]


def test_yaml_words_as_keys_are_node_names_not_booleans(cli: Cli, tmp_path: Path) -> None:
    name = put(
        tmp_path,
        """
        name: t
        nodes:
          on: {shell: x, next: "no"}
          no: {shell: y, next: "null"}
          null: {shell: z}
        """,
    )
    r = cli("validate", name, "--json")
    assert r.code == 0, r.err
    assert '"nodes": ["on", "no", "null"]' in r.out


@pytest.mark.parametrize("command", ["validate", "run", "graph"])
def test_file_not_found_is_exit_2_with_a_clear_message(cli: Cli, command: str) -> None:
    message, hint = one_error(cli(command, "nope.yaml"))
    assert message == "nope.yaml: no such file"
    assert hint is not None and "path" in hint


def test_a_folder_is_not_a_workflow(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    message, _ = one_error(cli("validate", "dir.yaml"))
    assert message.startswith("dir.yaml: ") and "folder" in message


def test_non_utf8_file_is_rejected(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_bytes(b"name: caf\xe9\nnodes: {a: {shell: x}}\n")
    message, _ = one_error(cli("validate", "wf.yaml"))
    assert message.startswith("wf.yaml:1:10: not UTF-8 text (byte 0xe9 at offset 9)")


# --- hostile files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where", "tag"),
    [
        (
            'name: !!python/object/apply:os.system ["touch PWNED"]\nnodes: {a: {shell: x}}\n',
            "1:7",
            "!!python/object/apply:os.system",
        ),
        (
            "name: t\nnodes: !!python/object/apply:os.system\n  args: [touch PWNED]\n",
            "2:8",
            "!!python/object/apply:os.system",
        ),
        (
            "name: t\nnodes:\n  a: {shell: !!python/name:os.system x}\n",
            "3:14",
            "!!python/name:os.system",
        ),
        (
            "name: t\nstate:\n  x: {default: !!python/object/new:os.system [touch PWNED]}\n"
            "nodes: {a: {shell: x}}\n",
            "3:16",
            "!!python/object/new:os.system",
        ),
        (
            "name: t\nnodes:\n  ? !!python/object/apply:os.system [touch PWNED]\n  : {shell: x}\n",
            "3:5",
            "!!python/object/apply:os.system",
        ),
    ],
    ids=["apply-scalar", "apply-mapping", "name", "object-new", "as-a-key"],
)
def test_python_tags_never_execute(
    cli: Cli, tmp_path: Path, body: str, where: str, tag: str
) -> None:
    (tmp_path / "wf.yaml").write_text(body)
    for command in ("validate", "run"):
        message, hint = one_error(cli(command, "wf.yaml", *(["--db", "f.db"] * (command == "run"))))
        assert message.startswith(f"wf.yaml:{where}: "), message
        assert f"unsupported YAML tag {tag}" in message
        assert hint is not None and "never executed" in hint
    assert not (tmp_path / "PWNED").exists()


def test_python_tag_through_the_installed_binary_does_not_run(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        'name: !!python/object/apply:os.system ["touch PWNED"]\nnodes: {a: {shell: x}}\n'
    )
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", "f.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("flowrun: error: wf.yaml:1:7: ")
    assert "!!python/object/apply:os.system" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "PWNED").exists()


def _laughs(levels: int, width: int) -> str:
    lines = ["name: t", 'a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append("nodes: {a: {shell: x}}")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_rejected_before_expanding(cli: Cli, tmp_path: Path) -> None:
    # 9 levels of 9 aliases: 81 aliases (under the alias bound), 9**9 values expanded
    (tmp_path / "wf.yaml").write_text(_laughs(9, 9))
    message, hint = one_error(cli("validate", "wf.yaml"))
    assert message.startswith("wf.yaml:")
    assert "expands to more than" in message
    assert hint is not None


def test_too_many_aliases_are_rejected(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(_laughs(3, 50))
    message, _ = one_error(cli("validate", "wf.yaml"))
    assert message.startswith("wf.yaml:5:10: ")  # the 101st alias: the first on a3's line
    assert f"more than {yamlpos.MAX_ALIASES} YAML aliases" in message


def test_an_alias_to_itself_is_rejected(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text("name: t\nx: &loop [*loop]\nnodes: {a: {shell: x}}\n")
    message, _ = one_error(cli("validate", "wf.yaml"))
    assert message.startswith("wf.yaml:2:4: ") and "refers to itself" in message


def test_deep_nesting_is_rejected(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text("name: t\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    message, _ = one_error(cli("validate", "wf.yaml"))
    assert message.startswith("wf.yaml:2:") and "nested more than" in message


def test_a_file_over_the_size_limit_is_rejected(cli: Cli, tmp_path: Path) -> None:
    big = "name: t\nnodes: {a: {shell: x}}\n" + "# padding\n" * (yamlpos.MAX_BYTES // 10 + 1)
    (tmp_path / "wf.yaml").write_text(big)
    message, hint = one_error(cli("validate", "wf.yaml"))
    assert message.startswith("wf.yaml:1:1: file is ")
    assert "KiB" in message
    assert hint is not None


def test_merge_keys_and_anchors_within_bounds_still_work(cli: Cli, tmp_path: Path) -> None:
    name = put(
        tmp_path,
        """
        name: t
        nodes:
          a: &base
            shell: echo a
            timeout: 5s
            next: b
          b:
            <<: *base
            shell: echo b
            next: END
        """,
    )
    r = cli("validate", name)
    assert r.code == 0, r.err


# llm nodes: every setting is checked at load, not when the node first runs ------------
LLM_HEAD = """
name: t
state:
  provider: {default: openai}
nodes:
  a:
    llm:
      model: m
      prompt: hi
"""

# (id, lines added under `llm:` (line 9 on), "line:col", message fragments, hint fragment)
LLM_CASES: list[tuple[str, str, str, tuple[str, ...], str | None]] = [
    (
        "provider typo",
        "provider: opneai",
        "9:17",
        ("nodes.a.llm.provider", "unknown llm provider 'opneai'"),
        "did you mean 'openai'?",
    ),
    (
        "unknown provider",
        "provider: gemini",
        "9:17",
        ("unknown llm provider 'gemini'",),
        "one of: openai, anthropic, replay",
    ),
    (
        "provider template reads a state key that does not exist",
        'provider: "{{ state.provder }}"',
        "9:17",
        ("nodes.a.llm.provider", "undeclared state key 'provder'"),
        "did you mean 'provider'?",
    ),
    (
        "temperature above 2",
        "temperature: 3",
        "9:20",
        ("nodes.a.llm.temperature", "from 0 to 2, got 3"),
        "2 is the most",
    ),
    (
        "negative temperature",
        "temperature: -0.5",
        "9:20",
        ("nodes.a.llm.temperature", "from 0 to 2, got -0.5"),
        None,
    ),
    (
        "temperature as a quoted string",
        'temperature: "0.2"',
        "9:20",
        ("nodes.a.llm.temperature", "not the string '0.2'"),
        "without quotes",
    ),
    (
        "temperature as a boolean",
        "temperature: true",
        "9:20",
        ("nodes.a.llm.temperature", "expected a number, not a boolean"),
        None,
    ),
    (
        "max_tokens zero",
        "max_tokens: 0",
        "9:19",
        ("nodes.a.llm.max_tokens", "whole number ≥ 1, got 0"),
        None,
    ),
    (
        "max_tokens a fraction",
        "max_tokens: 1.5",
        "9:19",
        ("nodes.a.llm.max_tokens", "got 1.5"),
        None,
    ),
    (
        "max_tokens as a quoted string",
        'max_tokens: "200"',
        "9:19",
        ("nodes.a.llm.max_tokens", "not the string '200'"),
        "max_tokens: 200",
    ),
    (
        "json as a quoted word",
        'json: "yes"',
        "9:13",
        ("nodes.a.llm.json", "expected true or false, not 'yes'"),
        "json: true",
    ),
    (
        "json as a number",
        "json: 1",
        "9:13",
        ("nodes.a.llm.json", "expected true or false, not 1"),
        "json: true",
    ),
    (
        "base_url without a scheme",
        "base_url: localhost:8000/v1",
        "9:17",
        ("nodes.a.llm.base_url", "not an http(s) URL: 'localhost:8000/v1'"),
        "http://localhost:8000/v1",
    ),
    (
        "base_url of another scheme",
        "base_url: ftp://example.com/v1",
        "9:17",
        ("nodes.a.llm.base_url", "not an http(s) URL"),
        "http://",
    ),
    (
        "base_url without a host",
        'base_url: "https://"',
        "9:17",
        ("nodes.a.llm.base_url", "not an http(s) URL"),
        None,
    ),
    (
        "api_key_env with a dash",
        "api_key_env: MY-KEY",
        "9:20",
        ("nodes.a.llm.api_key_env", "not an environment variable name"),
        "e.g. OPENAI_API_KEY",
    ),
    (
        "cassette on an openai node",
        "provider: openai\n      cassette: c.jsonl",
        "10:7",
        ("nodes.a.llm", "cassette is read only by provider replay, not by provider openai"),
        "provider: replay",
    ),
    (
        "cassette on a node without provider",
        "cassette: c.jsonl",
        "9:7",
        ("nodes.a.llm", "cassette is read only by provider replay"),
        "--llm-record",
    ),
    (
        "base_url on a replay node",
        "provider: replay\n      cassette: c.jsonl\n      base_url: http://127.0.0.1:1/v1",
        "11:7",
        ("nodes.a.llm", "base_url is not used by provider replay"),
        "remove it",
    ),
    (
        "api_key_env on a replay node",
        "provider: replay\n      cassette: c.jsonl\n      api_key_env: MY_KEY",
        "11:7",
        ("nodes.a.llm", "api_key_env is not used by provider replay"),
        None,
    ),
    (
        "cassette as a number",
        "provider: replay\n      cassette: 7",
        "10:17",
        ("nodes.a.llm.cassette", "expected a string, not a number"),
        None,
    ),
    (
        "base_url template with an undefined name",
        'base_url: "{{ url }}"',
        "9:17",
        ("nodes.a.llm.base_url", "undefined name 'url'"),
        None,
    ),
]


@pytest.mark.parametrize(
    ("lines", "where", "fragments", "hint"),
    [pytest.param(*c[1:], id=c[0]) for c in LLM_CASES],
)
def test_llm_settings_are_checked_at_load_with_location_and_hint(
    cli: Cli,
    tmp_path: Path,
    lines: str,
    where: str,
    fragments: tuple[str, ...],
    hint: str | None,
) -> None:
    text = textwrap.dedent(LLM_HEAD).lstrip("\n") + "      " + lines + "\n    save: provider\n"
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    message, got_hint = one_error(cli("validate", "wf.yaml"))
    assert message.startswith(f"wf.yaml:{where}: "), message
    for fragment in fragments:
        assert fragment in message, message
    if hint is not None:
        assert got_hint is not None and hint in got_hint, got_hint


@pytest.mark.parametrize(
    ("model", "where", "fragment"),
    [
        pytest.param("42", "5:14", "expected a string, not a number", id="a number"),
        pytest.param('" "', "5:14", "the model is empty", id="blank"),
    ],
)
def test_llm_model_must_be_a_non_empty_string(
    cli: Cli, tmp_path: Path, model: str, where: str, fragment: str
) -> None:
    name = put(
        tmp_path,
        f"""
        name: t
        nodes:
          a:
            llm:
              model: {model}
              prompt: hi
            save: out
        state: {{out: {{}}}}
        """,
    )
    message, _ = one_error(cli("validate", name))
    assert message.startswith(f"{name}:{where}: nodes.a.llm.model: ") and fragment in message


def test_llm_temperature_range_follows_the_provider_a_claude_model_goes_to(
    cli: Cli, tmp_path: Path
) -> None:
    name = put(
        tmp_path,
        """
        name: t
        nodes:
          a:
            llm: {model: claude-3-5-haiku, prompt: hi, temperature: 1.5}
            save: out
            next: b
          b:
            llm: {model: gpt-4o-mini, prompt: hi, temperature: 1.5}
            save: out
        state: {out: {}}
        """,
    )
    message, hint = one_error(cli("validate", name))
    assert message.startswith(f"{name}:4:61: nodes.a.llm.temperature: ")
    assert "from 0 to 1, got 1.5" in message
    assert hint is not None and "anthropic" in hint


def test_llm_api_key_env_holding_a_key_is_not_echoed_back(cli: Cli, tmp_path: Path) -> None:
    key = "sk-proj-SECRET0123456789abcdef"
    name = put(
        tmp_path,
        f"""
        name: t
        nodes:
          a:
            llm: {{model: m, prompt: hi, api_key_env: {key}}}
            save: out
        state: {{out: {{}}}}
        """,
    )
    r = cli("validate", name)
    message, hint = one_error(r)
    assert message.startswith(f"{name}:4:46: nodes.a.llm.api_key_env: ")
    assert hint is not None and "not the key" in hint
    assert "SECRET" not in r.err + r.out


def test_llm_settings_from_templates_and_valid_literals_pass(cli: Cli, tmp_path: Path) -> None:
    name = put(
        tmp_path,
        """
        name: t
        state:
          provider: {default: replay}
          model: {default: gpt-4o-mini}
          temp: {default: 0.3}
          out: {default: null}
        nodes:
          templated:
            llm:
              provider: "{{ state.provider }}"
              cassette: "answers-{{ run.id }}.jsonl"
              model: "{{ state.model }}"
              prompt: hi
              temperature: "{{ state.temp }}"
              max_tokens: "{{ 10 * 2 }}"
              json: "{{ state.provider == 'replay' }}"
              base_url: "{{ state.provider }}"
              api_key_env: "{{ state.provider | upper }}_KEY"
            next: live
          live:
            llm:
              provider: openai
              model: local
              prompt: hi
              temperature: 2
              max_tokens: 1
              json: false
              base_url: http://127.0.0.1:8000/v1
              api_key_env: MY_LOCAL_KEY
            save: out
            next: claude
          claude:
            llm: {model: claude-3-5-haiku, prompt: hi, temperature: 0}
            save: out
            next: replayed
          replayed:
            llm: {provider: replay, cassette: c.jsonl, model: m, prompt: hi, temperature: 0.5}
            save: out
            next: from_flag
          from_flag:
            # no cassette: `--llm-replay FILE` may give one when the run starts
            llm: {provider: replay, model: m, prompt: hi}
            save: out
        """,
    )
    r = cli("validate", name)
    assert r.code == 0, r.err
    assert "ok" in r.out


def test_run_with_a_bad_llm_setting_fails_before_any_run_exists(cli: Cli, tmp_path: Path) -> None:
    name = put(
        tmp_path,
        """
        name: t
        nodes:
          a:
            llm: {model: gpt-4o-mini, prompt: hi, provider: opanai}
            save: out
        state: {out: {}}
        """,
    )
    r = cli("run", name, "--db", str(tmp_path / "f.db"))
    message, hint = one_error(r)
    assert message.startswith(f"{name}:4:53: nodes.a.llm.provider: ")
    assert hint == "did you mean 'openai'?"
    assert not (tmp_path / "f.db").exists()


def test_the_example_pipeline_still_validates(cli: Cli) -> None:
    example = Path(__file__).resolve().parents[3] / "workflows" / "pipeline" / "pipeline.yaml"
    r = cli("validate", str(example))
    assert r.code == 0, r.err
