"""Property-based fuzzing of everything a user can hand flowrun: workflow YAML,
templates, and ``--set``/``--input`` values.

The properties are the project's promises about bad input:

- loading a workflow either gives a ``Workflow`` or raises ``WorkflowError`` (exit 2,
  a located one-line cause); never another exception, never "internal error";
- a ``--set``/``--input`` value is either accepted as strict JSON (no NaN/Infinity)
  or refused with ``UsageError`` (exit 2);
- a value substituted into ``shell:`` reaches the command as data, byte for byte,
  whatever template construct carries it; nothing it contains is executed;
- a valid workflow runs to success or to a clean ``RunFailed``/``WorkflowError``,
  and whatever it stores is strict JSON.

CI runs the ``ci`` profile (a few dozen examples each); ``make fuzz`` runs the
``fuzz`` profile (thousands). Inputs that once broke a promise live in
``tests/e2e/fuzz_corpus/`` and run on every test run.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from flowrun.engine import Engine, FlowrunError, SQLiteStore, UsageError, WorkflowError
from flowrun.engine import load_workflow as _load
from flowrun.engine.spec import yamlcompose, yamlpos
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=4000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("FLOWRUN_FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)
if os.environ.get("FLOWRUN_FUZZ_EXAMPLES"):  # a length between the two profiles
    settings.register_profile(
        "custom",
        parent=settings.get_profile(PROFILE),
        max_examples=int(os.environ["FLOWRUN_FUZZ_EXAMPLES"]),
    )
    settings.load_profile("custom")

CORPUS = Path(__file__).parent / "fuzz_corpus"


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def load_or_refuse(path: Path) -> Any:
    """The loading promise: a Workflow, or a WorkflowError with a location."""
    try:
        return _load(str(path))
    except WorkflowError as exc:
        assert "internal error" not in exc.message
        assert exc.message.strip() and "\n" not in exc.message.strip()
        assert exc.exit_code == 2
        return None


# --- workflow YAML ---------------------------------------------------------------

KEYS = [
    "name", "description", "state", "config", "start", "nodes", "secrets",
    "run", "shell", "python", "llm", "set", "next", "routes", "needs", "foreach",
    "save", "retry", "timeout", "output", "env", "cwd", "when", "to", "default",
    "reducer", "max_concurrency", "queue_depth", "max_steps", "max_attempts",
    "backoff", "model", "prompt", "END", "a", "b",
]  # fmt: skip
TAGS = ["", "!!int ", "!!float ", "!!bool ", "!!str ", "!!null ", "!!binary ", "!!timestamp "]
TAGS += ["!!set ", "!!omap ", "!!python/object ", "!foo ", "!!map ", "!!seq "]
SCALARS = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(KEYS),
    st.text(max_size=30),
    st.sampled_from(
        [
            "{{ state.a }}",
            "{{ state.a | upper }}",
            "{% if state.a %}x{% endif %}",
            "{{ (((1))) }}",
            "{{ 1e308 * 10 }}",
            "{{ x }",
            "{% for i in range(3) %}{{ i }}{% endfor %}",
            "1e999",
            "30s",
            "10m",
            "-1s",
            "append",
            "json",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    """A workflow-shaped document: mostly right, with random values in every key."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "END", "x-1"]), min_size=1, max_size=3))
    nodes: dict[str, Any] = {}
    for n in names:
        kind = draw(st.sampled_from(["run", "shell", "python", "set", "llm"]))
        body: dict[str, Any] = {kind: draw(VALUES)}
        for _ in range(draw(st.integers(0, 3))):
            body[draw(st.sampled_from(KEYS))] = draw(VALUES)
        nodes[n] = body
    doc: dict[str, Any] = {"name": draw(st.one_of(st.just("fz"), VALUES)), "nodes": nodes}
    if draw(st.booleans()):
        doc["state"] = draw(st.dictionaries(st.sampled_from(["a", "b"]), VALUES, max_size=2))
    if draw(st.booleans()):
        doc["config"] = draw(VALUES)
    return doc


@st.composite
def mangled_yaml(draw: st.DrawFn) -> str:
    """Valid-looking YAML text with tags, control characters and cuts spliced in."""
    text = yaml.safe_dump(draw(workflows()), allow_unicode=True, sort_keys=False)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        piece = draw(
            st.one_of(
                st.sampled_from(TAGS),
                st.sampled_from(
                    ["\x00", "\x07", "\x7f", "\x90", "\ufeff", "\r", "\t", "&a ", "*a"]
                ),
                st.sampled_from([": ", "- ", "{", "[", "'", '"', "\n  ", "<<: ", "? "]),
                st.text(max_size=5),
            )
        )
        text = text[:at] + piece + text[at:]
    return text


@given(doc=workflows())
def test_a_random_workflow_document_loads_or_is_refused_with_a_location(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    load_or_refuse(path)


@given(text=mangled_yaml())
def test_mangled_yaml_text_loads_or_is_refused_with_a_location(tmp_path: Path, text: str) -> None:
    path = tmp_path / "wf.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    load_or_refuse(path)


@given(text=mangled_yaml())
def test_a_file_built_from_libyaml_events_is_the_composed_one(text: str) -> None:
    """The event-built document (where it is one) has the composer's values and positions."""
    if not yaml.__with_libyaml__ or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return  # the event builder is never asked
    direct = yamlpos._Direct("wf.yaml").read(text)
    if direct is None:
        return  # left to the composer
    root, loader = yamlcompose.compose(text, libyaml=True)
    composed = yamlpos.Document(file="wf.yaml", data=None)
    composed.data = yamlpos._Builder(composed, loader).build(root, ())
    assert repr(direct.data) == repr(composed.data)
    assert list(direct.values.items()) == list(composed.values.items())
    assert list(direct.keys.items()) == list(composed.keys.items())


@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_load_or_are_refused_with_a_location(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "wf.yaml"
    path.write_bytes(b"name: fz\nnodes:\n  a: {set: {}}\n" + raw)
    load_or_refuse(path)


# --- templates -------------------------------------------------------------------

FILTERS = [
    "upper", "lower", "length", "string", "int", "float", "first", "last", "list",
    "join", "center(10)", "indent(2)", "replace('a', 'b')", "tojson", "trim", "title",
    "default('d')", "reverse", "sort", "unique", "wordwrap(5)", "truncate(5)", "abs",
    "round", "sum", "format(1)", "batch(2)", "e", "safe", "striptags", "urlencode",
]  # fmt: skip
ATOMS = [
    "state.a", "state.b", "1", "0", "-1", "1e308", "'s'", "[1, 2]", "{'k': 1}", "none",
    "true", "run.id", "node", "item", "index", "range(5)", "'%s' % 1", "'{}'.format(2)",
    "state.a ~ 'x'", "0[1]", "(1 if 0 else 2)", "[] * 3", "'x' * 4",
]  # fmt: skip


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    atom = draw(st.sampled_from(ATOMS))
    if depth < 3 and draw(st.booleans()):
        op = draw(st.sampled_from([" + ", " - ", " * ", " ~ ", " and ", " or ", " == ", " % "]))
        atom = f"({atom}{op}{draw(expressions(depth + 1))})"
    for _ in range(draw(st.integers(0, 3))):
        atom = f"{atom} | {draw(st.sampled_from(FILTERS))}"
    return atom


@st.composite
def templates(draw: st.DrawFn) -> str:
    expr = draw(expressions())
    shape = draw(
        st.sampled_from(
            [
                "{{ E }}",
                "x {{ E }} y",
                "{% if E %}a{% else %}b{% endif %}",
                "{% for i in E %}{{ i }}{% endfor %}",
                "{% filter upper %}{{ E }}{% endfilter %}",
                "{% set v = E %}{{ v }}",
                "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(E) }}",
                "{{ E }",
                "{% if %}",
            ]
        )
    )
    return shape.replace("E", expr)


def fresh_dir(tmp_path: Path) -> Path:
    """A folder of one example's own: Hypothesis runs many examples in one tmp_path."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def run_inprocess(folder: Path, text: str, inputs: dict[str, Any] | None = None) -> Any:
    """Load and run a workflow in ``folder``: its RunResult, or None if it was refused."""
    path = folder / "wf.yaml"
    path.write_text(text, encoding="utf-8")
    wf = load_or_refuse(path)
    if wf is None:
        return None
    return Engine(SQLiteStore(folder / "flowrun.db")).start(wf, inputs=inputs)


def workflow_with(node_body: str) -> str:
    return (
        "name: fz\n"
        "state:\n  a: {default: 'A b'}\n  b: {default: [1, 2]}\n  out: {default: null}\n"
        f"nodes:\n  n:\n{node_body}"
    )


@given(tpl=templates())
def test_a_random_template_in_a_set_node_validates_and_runs_cleanly(
    tmp_path: Path, tpl: str
) -> None:
    body = f"    set:\n      out: {json.dumps(tpl)}\n"
    try:
        result = run_inprocess(fresh_dir(tmp_path), workflow_with(body))
    except FlowrunError as exc:
        assert "internal error" not in exc.message, exc.message
        return
    if result is None:
        return
    assert result.status in ("succeeded", "failed")
    if result.status == "failed":
        assert "internal error" not in (result.error or ""), result.error
    strict_loads(json.dumps(result.to_json(), allow_nan=True))


# --- shell values are data ---------------------------------------------------------

SHELL_SHAPES = [
    "printf '%s' {{ state.a }}",
    "printf '%s' \"{{ state.a }}\"",
    "printf '%s' '{{ state.a }}'",
    "printf '%s' {% filter upper %}{{ state.a }}{% endfilter %}",
    "printf '%s' {% filter replace('T', state.a) %}T{% endfilter %}",
    "printf '%s' {{ '%s' | format(state.a) }}",
    "{% set v = state.a %}printf '%s' {{ v }}",
    "{% macro m(x) %}{{ x }}{% endmacro %}printf '%s' {{ m(state.a) }}",
    "{% macro m() %}printf '%s' {{ caller() }}{% endmacro %}"
    "{% call m() %}{{ state.a }}{% endcall %}",
    "printf '%s' {% call state.a.format() %}{% endcall %}",
    "printf '%s' {% call '{}'.format(state.a) %}{% endcall %}",
    "{% macro m() %}{% endmacro %}{% set m = state.a.format %}"
    "printf '%s' {% call m() %}{% endcall %}",
]
PAYLOADS = st.one_of(
    st.text(alphabet=string.printable, max_size=40),
    st.sampled_from(
        [
            "$(touch PWNED)",
            "`touch PWNED`",
            "; touch PWNED",
            "'; touch PWNED; '",
            '"$(touch PWNED)"',
        ]
    ),
)


@given(shape=st.sampled_from(SHELL_SHAPES), value=PAYLOADS)
def test_a_value_in_a_shell_template_is_data_in_every_construct(
    tmp_path: Path, shape: str, value: str
) -> None:
    body = f"    shell: {json.dumps(shape)}\n    save: out\n    output: text\n"
    folder = fresh_dir(tmp_path)
    marker = folder / "PWNED"
    try:
        result = run_inprocess(
            folder, workflow_with(body).replace("default: 'A b'", "default: ''"), {"a": value}
        )
    except FlowrunError as exc:
        assert "internal error" not in exc.message
        return
    assert not marker.exists(), f"{shape!r} executed {value!r}"
    if result is None:  # the construct is refused at validate time: also safe
        return
    if result.status == "succeeded":
        out = result.state["out"]
        expected = value.upper() if "upper" in shape else value
        assert out == expected.rstrip("\n"), (shape, value, out)


# --- --set and --input values ----------------------------------------------------

SET_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "1e999",
            "-1e999",
            "NaN",
            "Infinity",
            "-Infinity",
            '"\\ud800"',
            '"\\udfff"',
            "[" * 3000 + "]" * 3000,
            '{"a": ' * 2000 + "1" + "}" * 2000,
            "1" * 5000,
            '"\\u0000"',
            "[1e400]",
            '{"x": NaN}',
        ]
    ),
    st.recursive(
        st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none(), st.booleans()),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps(v, allow_nan=True)),
)


@given(raw=SET_VALUES)
def test_a_set_value_is_strict_json_or_refused(raw: str) -> None:
    from flowrun.cli.running import parse_inputs

    try:
        got = parse_inputs([f"k={raw}"], None)
    except UsageError as exc:
        assert exc.exit_code == 2 and "internal error" not in exc.message
        return
    strict_loads(json.dumps(got, allow_nan=True))
    json.dumps(got, ensure_ascii=False).encode("utf-8")  # no lone surrogates


@given(raw=SET_VALUES)
def test_an_input_file_is_strict_json_or_refused(tmp_path: Path, raw: str) -> None:
    from flowrun.cli.running import parse_inputs

    path = tmp_path / "in.json"
    path.write_text('{"k": ' + raw + "}", encoding="utf-8", errors="surrogatepass")
    try:
        got = parse_inputs([], str(path))
    except UsageError as exc:
        assert exc.exit_code == 2 and "internal error" not in exc.message
        return
    strict_loads(json.dumps(got, allow_nan=True))


# --- the corpus of inputs that once broke a promise --------------------------------


def corpus(kind: str) -> list[Path]:
    return sorted((CORPUS / kind).glob("*")) if (CORPUS / kind).is_dir() else []


@pytest.mark.parametrize("path", corpus("workflows"), ids=lambda p: p.name)
def test_corpus_workflow_loads_or_is_refused_with_a_location(tmp_path: Path, path: Path) -> None:
    target = tmp_path / "wf.yaml"
    target.write_bytes(path.read_bytes())
    load_or_refuse(target)


@pytest.mark.parametrize("path", corpus("set-values"), ids=lambda p: p.name)
def test_corpus_set_value_is_strict_json_or_refused(path: Path) -> None:
    test_a_set_value_is_strict_json_or_refused.hypothesis.inner_test(  # type: ignore[attr-defined]
        raw=path.read_text(encoding="utf-8", errors="surrogatepass").rstrip("\n")
    )
