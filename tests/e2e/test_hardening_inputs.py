"""Bad input never crashes, and JSON is always JSON (security probe F10-F12).

Hostile workflow files, ``--set`` values and ``--input`` files are user mistakes:
exit 2, one line naming where (``file:line:col`` for a workflow), and a hint. A
node that produces a number JSON cannot hold (NaN, ±Infinity) fails its task with
a message naming the node and the state key. Whatever happens, every ``--json``
stdout and every JSON text in the database parses with a strict parser.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flowrun.cli import options
from flowrun.cli.app import main
from flowrun.engine import Engine, SQLiteStore, UsageError, load_workflow
from flowrun.engine.nodes.base import TaskError
from flowrun.engine.nodes.llm import parse_json_reply

from tests.support.installed import FLOWRUN

NON_FINITE_HINT = "JSON has no NaN/Infinity; pass a string or a finite number"


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """cli(*argv) runs `flowrun *argv` in-process in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(options, "_json_written", False)

    def _run(*argv: str) -> Result:
        capsys.readouterr()
        options._json_written = False  # one process, many commands: each prints its own
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        got = capsys.readouterr()
        code = exit_.value.code
        return Result(code if isinstance(code, int) else (0 if code is None else 1), *got)

    return _run


def strict(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in JSON output: {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


def one_error(r: Result, code: int = 2) -> tuple[str, str | None]:
    """The error line and hint of a failed command; no traceback, no internal error."""
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err + r.out and "internal error" not in r.err, r.err
    lines = r.err.strip().splitlines()
    assert lines and lines[-2 if lines[-1].startswith("  hint: ") else -1].startswith(
        "flowrun: error: "
    ), r.err
    hint = lines[-1].removeprefix("  hint: ") if lines[-1].startswith("  hint: ") else None
    error = next(line for line in reversed(lines) if line.startswith("flowrun: error: "))
    return error.removeprefix("flowrun: error: "), hint


JSON_COLUMNS = {
    "runs": ("inputs", "frontier"),
    "steps": ("tasks", "frontier"),
    "state_kv": ("value",),
    "task_results": ("delta",),
    "events": ("data",),
    "llm_calls": ("price",),
}


def db_json_is_strict(db: Path) -> int:
    """Every JSON column of the database parses strictly; returns how many cells did."""
    seen = 0
    con = sqlite3.connect(db)
    try:
        for table, columns in JSON_COLUMNS.items():
            for column in columns:
                for (cell,) in con.execute(f"SELECT {column} FROM {table}"):
                    if cell is not None:
                        strict(cell)
                        seen += 1
    finally:
        con.close()
    return seen


def workflow(tmp_path: Path, text: str | bytes, name: str = "wf.yaml") -> str:
    p = tmp_path / name
    if isinstance(text, str):
        p.write_text(text, encoding="utf-8")
    else:
        p.write_bytes(text)
    return name


ONE_KEY = "name: t\nstate:\n  x: {default: 1}\nnodes:\n  a:\n    set: {x: 2}\n"


# --- F11: YAML ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "shown", "tag"),
    [
        ("!!int abc", "'abc'", "!!int"),
        ("!!bool maybe", "'maybe'", "!!bool"),
        ("!!int", "''", "!!int"),
        ("!!bool", "''", "!!bool"),
        ("!!float x", "'x'", "!!float"),
        ("!!float", "''", "!!float"),
        ("!!timestamp nope", "'nope'", "!!timestamp"),
        ("!!null x", "'x'", "!!null"),
        ("!<tag:yaml.org,2002:int> abc", "'abc'", "!!int"),
    ],
)
def test_yaml_scalar_that_does_not_fit_its_tag_is_an_error_at_its_place(
    cli: Cli, tmp_path: Path, value: str, shown: str, tag: str
) -> None:
    wf = workflow(
        tmp_path, f"name: t\nstate:\n  x:\n    default: {value}\nnodes:\n  a: {{set: {{}}}}\n"
    )
    for command in ("validate", "run"):
        message, hint = one_error(cli(command, wf))
        assert message == f"wf.yaml:4:14: state.x.default: {shown} is not a valid {tag}"
        assert hint is not None and "drop the tag" in hint


@pytest.mark.parametrize(
    "value", ["!!python/object:os.system x", "!foo x", "!!binary aGVsbG8=", "!!set {a, b}"]
)
def test_unsupported_yaml_tags_are_an_error_at_their_place(
    cli: Cli, tmp_path: Path, value: str
) -> None:
    wf = workflow(
        tmp_path, f"name: t\nstate:\n  x:\n    default: {value}\nnodes:\n  a: {{set: {{}}}}\n"
    )
    message, hint = one_error(cli("validate", wf))
    assert message.startswith("wf.yaml:4:14: state.x.default: unsupported YAML tag !")
    assert hint is not None


@pytest.mark.parametrize(
    ("char", "line", "column"),
    [("\x07", 3, 18), ("\x7f", 3, 18), ("\x90", 3, 18), ("\x00", 3, 18), ("\x1b", 3, 18)],
)
def test_control_character_in_the_file_is_an_error_at_its_place(
    cli: Cli, tmp_path: Path, char: str, line: int, column: int
) -> None:
    text = f'name: t\nstate:\n  x: {{default: "a{char}b"}}\nnodes:\n  a: {{set: {{}}}}\n'
    wf = workflow(tmp_path, text)
    for command in ("validate", "run"):
        message, hint = one_error(cli(command, wf))
        code = f"U+{ord(char):04X}"
        assert message == (
            f"wf.yaml:{line}:{column}: the file holds the control character {code},"
            " which YAML does not allow"
        )
        assert hint is not None and f"\\x{ord(char):02x}" in hint


def test_bytes_that_are_not_utf8_are_an_error_at_their_line_and_column(
    cli: Cli, tmp_path: Path
) -> None:
    wf = workflow(tmp_path, b"name: t\nnodes:\n  a:\n    set: {x: \xc3\xa9\xff}\n")
    message, hint = one_error(cli("validate", wf))
    assert message == "wf.yaml:4:15: not UTF-8 text (byte 0xff at offset 35)"
    assert hint == "save the file as UTF-8"
    utf16 = workflow(tmp_path, "name: t\n".encode("utf-16"), "u16.yaml")
    message, hint = one_error(cli("validate", utf16))
    assert message.startswith("u16.yaml:1:1: not UTF-8 text")
    assert hint is not None and "UTF-16" in hint


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("{default: .nan}", "3:16: state.x.default: .nan"),
        ("{default: -.inf}", "3:16: state.x.default: -.inf"),
        ("{default: !!float 1e999}", "3:16: state.x.default: 1e999"),
    ],
)
def test_non_finite_yaml_float_is_an_error_at_its_place(
    cli: Cli, tmp_path: Path, value: str, where: str
) -> None:
    wf = workflow(tmp_path, f"name: t\nstate:\n  x: {value}\nnodes:\n  a: {{set: {{}}}}\n")
    message, hint = one_error(cli("validate", wf))
    assert message == f"wf.yaml:{where} is not a JSON number (JSON has no NaN/Infinity)"
    assert hint is not None and "quote it" in hint


def test_non_finite_yaml_float_in_a_set_body_is_refused_before_the_run(
    cli: Cli, tmp_path: Path
) -> None:
    wf = workflow(
        tmp_path, "name: t\nstate:\n  x: {default: 1}\nnodes:\n  a:\n    set: {x: .inf}\n"
    )
    message, _ = one_error(cli("run", wf, "--db", "f.db"))
    assert (
        message
        == "wf.yaml:6:14: nodes.a.set.x: .inf is not a JSON number (JSON has no NaN/Infinity)"
    )
    assert not (tmp_path / "f.db").exists()


def test_integer_past_the_digit_limit_is_an_error_at_its_place(cli: Cli, tmp_path: Path) -> None:
    wf = workflow(
        tmp_path, f"name: t\nstate:\n  x: {{default: {'7' * 5000}}}\nnodes:\n  a: {{set: {{}}}}\n"
    )
    message, hint = one_error(cli("validate", wf))
    assert message == "wf.yaml:3:16: state.x.default: a number with more than 4300 digits"
    assert hint == "quote it to keep it as text"


def test_lone_surrogate_escape_is_an_error_and_a_pair_is_one_character(
    cli: Cli, tmp_path: Path
) -> None:
    lone = workflow(
        tmp_path, 'name: t\nstate:\n  x: {default: "a\\ud800"}\nnodes:\n  a: {set: {}}\n'
    )
    message, hint = one_error(cli("validate", lone))
    assert message == "wf.yaml:3:16: state.x.default: lone surrogate \\ud800 is not valid Unicode"
    assert hint is not None
    key = workflow(tmp_path, 'name: t\nstate:\n  "\\udc00": {default: 1}\nnodes: {}\n', "k.yaml")
    message, _ = one_error(cli("validate", key))
    assert message.startswith("k.yaml:3:3: state: lone surrogate \\udc00")

    pair = workflow(
        tmp_path,
        'name: t\nstate:\n  x: {default: "\\ud83d\\ude00"}\nnodes:\n  a: {set: {}}\n',
        "pair.yaml",
    )
    r = cli("run", pair, "--db", "f.db", "--json")
    assert r.code == 0, r.err
    assert strict(r.out)["state"] == {"x": "\U0001f600"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: t\nname: u\nnodes: {}\n", "wf.yaml:2:1: duplicate key 'name'"),
        ("- a\n- b\n", "wf.yaml:1:1: a workflow must be a mapping, not a list"),
        ("", "wf.yaml:1:1: the file is empty"),
        (
            "name: t\nnodes:\n  a:\n    <<: 5\n",
            "wf.yaml:4:9: nodes.a: a merge key (<<) needs a mapping",
        ),
    ],
)
def test_other_yaml_shapes_are_clear_errors(
    cli: Cli, tmp_path: Path, text: str, fragment: str
) -> None:
    message, _ = one_error(cli("validate", workflow(tmp_path, text)))
    assert message.startswith(fragment), message


def test_bom_crlf_dates_and_merge_keys_load_as_written(cli: Cli, tmp_path: Path) -> None:
    text = (
        "\ufeffname: t\r\nstate:\r\n  x: {default: 2024-01-31}\r\n  y: {default: 0}\r\n"
        "nodes:\r\n  a:\r\n    <<: {set: {y: 123456789012345678901234567890}}\r\n"
    )
    r = cli("run", workflow(tmp_path, text), "--db", "f.db", "--json")
    assert r.code == 0, r.err
    assert strict(r.out)["state"] == {"x": "2024-01-31", "y": 123456789012345678901234567890}


# --- F12 and F10: --set and --input ----------------------------------------------------------
@pytest.mark.parametrize(
    ("item", "message", "hint"),
    [
        ('x="\\ud800"', "--set x: lone surrogate \\ud800 is not valid Unicode", "UTF-8"),
        ("x=a\udcff", "--set x: lone surrogate \\udcff is not valid Unicode", "UTF-8"),
        ("x=" + "[" * 3000 + "]" * 3000, "--set x: nested more than 100 levels deep", "flatten"),
        ("x=" + "[" * 101 + "]" * 101, "--set x: nested more than 100 levels deep", "flatten"),
        ("x=" + "9" * 5000, "--set x: a number with more than 4300 digits", "string"),
        ("x=1e999", "--set x: 1e999 is beyond the range of a JSON number", NON_FINITE_HINT),
        ("x=-1e400", "--set x: -1e400 is beyond the range of a JSON number", NON_FINITE_HINT),
        ("x=[NaN]", "--set x[0]: NaN is not a JSON number", NON_FINITE_HINT),
        ('x={"a": [1, Infinity]}', "--set x.a[1]: Infinity is not a JSON number", NON_FINITE_HINT),
    ],
)
def test_set_value_json_cannot_hold_is_a_usage_error(
    cli: Cli, tmp_path: Path, item: str, message: str, hint: str
) -> None:
    wf = workflow(tmp_path, ONE_KEY)
    r = cli("run", wf, "--db", "f.db", "--set", item, "--json")
    got, got_hint = one_error(r)
    assert got == message
    assert got_hint is not None and hint in got_hint
    assert strict(r.out)["exit_code"] == 2
    assert not (tmp_path / "f.db").exists()


def test_set_bare_nan_word_stays_a_string(cli: Cli, tmp_path: Path) -> None:
    wf = workflow(tmp_path, "name: t\nstate:\n  x: {default: ''}\nnodes:\n  a: {set: {}}\n")
    r = cli("run", wf, "--db", "f.db", "--set", "x=Infinity", "--json")
    assert r.code == 0, r.err
    assert strict(r.out)["state"] == {"x": "Infinity"}


def test_set_with_bytes_that_are_not_utf8_is_a_usage_error_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(ONE_KEY, encoding="utf-8")
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", "f.db", "--json", "--set", b"x=caf\xe9"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    err = p.stderr.decode("utf-8")
    assert err.startswith("flowrun: error: --set x: lone surrogate \\udce9 is not valid Unicode\n")
    assert "Traceback" not in err
    assert strict(p.stdout.decode("utf-8"))["exit_code"] == 2


@pytest.mark.parametrize(
    ("content", "message", "hint"),
    [
        (
            '{"x": "\\ud800"}',
            "--input in.json at x: lone surrogate \\ud800 is not valid Unicode",
            "UTF-8",
        ),
        (
            '{"x": ' + "[" * 3000 + "]" * 3000 + "}",
            "--input in.json: nested more than 100 levels deep",
            "flatten",
        ),
        (
            '{"x": 1e999}',
            "--input in.json at x: 1e999 is beyond the range of a JSON number",
            NON_FINITE_HINT,
        ),
        (
            '{"x": [-Infinity]}',
            "--input in.json at x[0]: -Infinity is not a JSON number",
            NON_FINITE_HINT,
        ),
    ],
)
def test_input_file_value_json_cannot_hold_is_a_usage_error(
    cli: Cli, tmp_path: Path, content: str, message: str, hint: str
) -> None:
    wf = workflow(tmp_path, ONE_KEY)
    (tmp_path / "in.json").write_text(content, encoding="utf-8")
    r = cli("run", wf, "--db", "f.db", "--input", "in.json", "--json")
    got, got_hint = one_error(r)
    assert got == message
    assert got_hint is not None and hint in got_hint
    strict(r.out)


def test_library_inputs_json_cannot_hold_are_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(ONE_KEY, encoding="utf-8")
    wf = load_workflow(tmp_path / "wf.yaml")
    store = SQLiteStore(tmp_path / "f.db")
    try:
        with pytest.raises(UsageError) as exc:
            Engine(store).start(wf, inputs={"x": [float("inf")]})
        assert exc.value.message == "input x[0]: Infinity is not a JSON number"
        assert exc.value.hint == NON_FINITE_HINT
        assert store.list_runs() == []
    finally:
        store.close()


# --- F10: a node that produces NaN or Infinity -----------------------------------------------
NODES = {
    "python": ("a:\n    python: nanlib:make\n", "state key x: NaN is not a JSON number"),
    "template": (
        'a:\n    set: {x: "{{ 1e308 * 10 }}"}\n',
        "state key x: Infinity is not a JSON number",
    ),
    "json-nan": (
        'a:\n    shell: "echo \'{\\"x\\": [NaN]}\'"\n    output: json\n',
        "output: json, but stdout is not usable JSON: NaN is not a JSON number (at x[0])",
    ),
    "json-huge": (
        'a:\n    shell: "echo \'{\\"x\\": 1e999}\'"\n    output: json\n',
        "output: json, but stdout is not usable JSON:"
        " 1e999 is beyond the range of a JSON number (at x)",
    ),
    "nested": (
        "a:\n    python: nanlib:nested\n",
        "state key x.deep[1]: -Infinity is not a JSON number",
    ),
}


@pytest.mark.parametrize("case", sorted(NODES))
def test_node_producing_a_non_finite_number_fails_its_task_and_writes_nothing(
    cli: Cli, tmp_path: Path, case: str
) -> None:
    body, message = NODES[case]
    (tmp_path / "nanlib.py").write_text(
        "def make(state, ctx):\n    return {'x': float('nan')}\n\n"
        "def nested(state, ctx):\n    return {'x': {'deep': [1, float('-inf')]}}\n",
        encoding="utf-8",
    )
    wf = workflow(tmp_path, f"name: t\nstate:\n  x: {{default: 0}}\nnodes:\n  {body}")
    r = cli("run", wf, "--db", "f.db", "--json")
    assert r.code == 1, r.err
    assert "internal error" not in r.err and "Traceback" not in r.err
    report = strict(r.out)
    assert report["status"] == "failed"
    assert report["state"] == {"x": 0}
    assert report["error"] == f"node 'a' failed after 1 attempt(s): {message}" + (
        f" ({NON_FINITE_HINT})" if message.startswith("state key") else ""
    )
    assert db_json_is_strict(tmp_path / "f.db") > 0
    shown = cli("show", report["run_id"], "--db", "f.db", "--json")
    assert shown.code == 1, shown.err  # the run's status: failed
    assert strict(shown.out)["status"] == "failed"


def test_node_returning_deeply_nested_data_fails_its_task(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "deeplib.py").write_text(
        "def make(state, ctx):\n    v = []\n    for _ in range(5000):\n        v = [v]\n"
        "    return {'x': v}\n",
        encoding="utf-8",
    )
    wf = workflow(
        tmp_path, "name: t\nstate:\n  x: {default: 0}\nnodes:\n  a: {python: deeplib:make}\n"
    )
    r = cli("run", wf, "--db", "f.db", "--json")
    assert r.code == 1, r.err
    report = strict(r.out)
    assert report["error"] == (
        "node 'a' failed after 1 attempt(s): state key x: nested more than 100 levels deep"
        " (flatten the value)"
    )
    assert report["state"] == {"x": 0}


def test_add_reducer_that_overflows_fails_the_run_naming_the_key(cli: Cli, tmp_path: Path) -> None:
    text = (
        "name: t\nstate:\n  total: {default: 1.0e+308, reducer: add}\n"
        "nodes:\n  a:\n    set: {total: 1.0e+308}\n"
    )
    r = cli("run", workflow(tmp_path, text), "--db", "f.db", "--json")
    assert r.code == 1, r.err
    report = strict(r.out)
    assert report["status"] == "failed"
    assert report["error"] == (
        "node 'a': state key 'total' (add) overflows: 1e+308 + 1e+308"
        " is beyond the range of a JSON number"
    )
    assert report["state"] == {"total": 1e308}
    db_json_is_strict(tmp_path / "f.db")


def test_llm_json_reply_with_nan_is_a_retryable_task_error() -> None:
    with pytest.raises(TaskError) as exc:
        parse_json_reply('```json\n{"score": NaN}\n```')
    assert str(exc.value) == "the reply is not usable JSON: NaN is not a JSON number (at score)"
    assert exc.value.retryable and exc.value.reason == "llm_json"


def test_run_stored_by_an_older_flowrun_with_nan_prints_an_error_not_invalid_json(
    cli: Cli, tmp_path: Path
) -> None:
    r = cli("run", workflow(tmp_path, ONE_KEY), "--db", "f.db", "--json")
    run_id = strict(r.out)["run_id"]
    con = sqlite3.connect(tmp_path / "f.db")
    tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    changed = 0
    for table in tables:
        cols = [c[1] for c in con.execute(f'PRAGMA table_info("{table}")')]
        if "value" in cols and "key" in cols:
            changed += con.execute(f"UPDATE \"{table}\" SET value = 'NaN'").rowcount
    con.commit()
    con.close()
    assert changed > 0
    shown = cli("show", run_id, "--db", "f.db", "--json")
    message, hint = one_error(shown, code=1)
    assert message.startswith("cannot print the result as JSON: NaN is not a JSON number")
    assert hint is not None and "without --json" in hint
    assert strict(shown.out)["exit_code"] == 1


# --- the one helper ---------------------------------------------------------------------------
def test_dumps_refuses_what_json_cannot_hold_and_says_where() -> None:
    from flowrun.engine.jsonvalue import JSONValueError, dumps, loads

    for value, problem, where in [
        ({"a": [1, float("nan")]}, "NaN is not a JSON number", ("a", 1)),
        ({"b": {"c": "x\ud800"}}, "lone surrogate \\ud800 is not valid Unicode", ("b", "c")),
    ]:
        with pytest.raises(JSONValueError) as exc:
            dumps(value)
        assert (exc.value.problem, exc.value.path) == (problem, where)
    assert dumps({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert loads('{"a": [1.5, "\\ud83d\\ude00"]}') == {"a": [1.5, "\U0001f600"]}


_WRITTEN = [
    {"n": 5},
    'é\n\u2028"q"',
    [1, 2.5, -0.0, 1e300, None, True, False],
    {"b": {"z": 1, "a": [{}]}, "a": "x", "é": [[], {}]},
    10**100,
    (1, "tuple"),
]


@pytest.mark.parametrize("c_part", [True, False], ids=["c-encoder-made-once", "no-c-encoder"])
def test_dumps_writes_what_json_dumps_writes_with_or_without_json_s_c_encoder(
    c_part: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jsonvalue.dumps makes json's C encoder once per set of options; without it (a
    Python whose json has no C part) it falls back to JSONEncoder. Same text either way."""
    import json.encoder

    from flowrun.engine import jsonvalue

    if not c_part:
        monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    jsonvalue._encoder.cache_clear()  # made again, with or without the C part
    try:
        for value in _WRITTEN:
            for sort_keys in (True, False):
                for ascii_only in (True, False):
                    for compact, seps in ((True, (",", ":")), (False, None)):
                        assert jsonvalue.dumps(
                            value, sort_keys=sort_keys, compact=compact, ensure_ascii=ascii_only
                        ) == json.dumps(
                            value,
                            sort_keys=sort_keys,
                            separators=seps,
                            ensure_ascii=ascii_only,
                            allow_nan=False,
                        )
        loop: list[Any] = []
        loop.append(loop)  # no circular check: it ends in RecursionError, told as too deep
        with pytest.raises(jsonvalue.JSONValueError, match="nested more than 100 levels"):
            jsonvalue.dumps(loop)
    finally:
        jsonvalue._encoder.cache_clear()


@pytest.mark.parametrize(
    "raw",
    [
        {"n": 5, "s": "é", "f": -0.0, "b": True, "z": None},  # plain scalars: copied as they are
        {"n": 2**80, "s": "x"},  # an int past 64 bits goes through JSON: the same value
        {"n": [1, (2, 3)], "s": {"k": "v"}},  # containers: normalised (a tuple is a list)
    ],
)
def test_a_delta_reads_back_from_its_json_as_itself(raw: dict[str, Any]) -> None:
    from flowrun.engine.nodes.registry import to_delta

    wf = load_workflow(
        "wf.yaml",
        text="name: d\nstate: {n: {default: 0}, s: {default: ''}, f: {default: 0},"
        " b: {default: false}, z: {default: null}}\nnodes: {a: {set: {n: 1}}}\n",
    )
    delta = to_delta(wf, wf.nodes["a"], raw)
    assert delta == json.loads(json.dumps(raw))
    assert [type(v) for v in delta.values()] == [
        type(v) for v in json.loads(json.dumps(raw)).values()
    ]
    assert delta is not raw  # the node keeps no handle on what the step merges
