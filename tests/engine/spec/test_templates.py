"""Templates: native values, strict undefined names, the sandbox, and shell values as data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine.spec import templates
from flowrun.engine.spec.templates import TemplateError, evaluate, references, render
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.installed import FLOWRUN

EVIL = "; $(touch X) `touch Y` ' \" \\ $HOME * && touch Z"


def scope(**state: Any) -> dict[str, Any]:
    return {
        "state": state,
        "item": None,
        "index": None,
        "run": {"id": "r1", "step": 3},
        "node": "n",
    }


# --- native values and text -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ state.xs }}", [1, {"a": 2}]),
        ("  {{ state.xs }}\n", [1, {"a": 2}]),
        ("{{ state.n }}", 7),
        ("{{ state.n > 3 }}", True),
        ("{{ state.d }}", {"k": None}),
        ("{{ state.none }}", None),
        ("{{ state.xs | length }}", 2),
        ("{{ state.xs[1].a + state.n }}", 9),
        ("{{ run.id }}-{{ run.step }}", "r1-3"),
        ("n={{ state.n }}", "n=7"),
        ("{{ state.xs }} items", '[1,{"a":2}] items'),
        ("{{ state.none }}/{{ state.n > 3 }}", "null/true"),
        ("{% for x in state.xs %}[{{ loop.index }}]{% endfor %}", "[1][2]"),
        ("no template at all", "no template at all"),
    ],
)
def test_lone_expression_is_native_anything_else_is_text(text: str, expected: Any) -> None:
    got = render(text, scope(xs=[1, {"a": 2}], n=7, d={"k": None}, none=None))
    assert got == expected
    assert type(got) is type(expected)


def test_a_state_key_named_like_a_dict_method_is_the_state_value() -> None:
    s = scope(items=[1, 2], keys="k", values=0, get="g")
    assert render("{{ state.items }}", s) == [1, 2]
    assert render("{{ state.keys }} {{ state.values }} {{ state.get }}", s) == "k 0 g"
    assert render("{{ state.items | length }}", s) == 2


def test_references_finds_state_keys_and_ignores_jinja_globals() -> None:
    names, keys = references(
        "{{ state.a }} {{ state['b'] }} {{ state.get('c', 0) }} {{ range(3) | list }}"
        " {{ state.items() | list }} {% for x in state.d %}{{ x }}{% endfor %} {{ item }}"
    )
    assert names == {"state", "item"}
    assert keys == {"a", "b", "c", "d"}


def test_references_are_read_once_per_text_and_each_caller_gets_its_own_sets() -> None:
    text = "{{ state.once_a }} {{ item }}"
    names, keys = references(text)
    names.add("changed")
    keys.clear()
    assert references(text) == ({"state", "item"}, {"once_a"})
    with pytest.raises(TemplateError):  # an error is raised at every read
        references("{{ state.a | no_such_filter_once }}")
    with pytest.raises(TemplateError):
        references("{{ state.a | no_such_filter_once }}")


def test_condition_references_and_evaluation() -> None:
    names, keys = references("state.flagged > 0 and index < 2", condition=True)
    assert names == {"state", "index"} and keys == {"flagged"}
    assert evaluate("state.flagged > 0", scope(flagged=1)) is True
    assert evaluate("{{ state.flagged > 0 }}", scope(flagged=0)) is False
    assert evaluate("state.xs | length == 2", scope(xs=[1, 2])) is True


# --- strict undefined ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{{ nosuch }}",
        "{{ state.missing }}",
        "value: {{ state.missing }}",
        "{{ state.d.nope }}",
        "{% if state.missing %}x{% endif %}",
        "{{ state.missing | length }}",
    ],
)
def test_undefined_names_are_errors_not_empty_strings(text: str) -> None:
    with pytest.raises(TemplateError) as err:
        render(text, scope(d={}))
    assert "undefined" in str(err.value) or "no attribute" in str(err.value)
    assert text in str(err.value)


@pytest.mark.parametrize("condition", ["state.missing > 0", "nosuch", "state.d.nope == 1"])
def test_undefined_names_in_conditions_are_errors(condition: str) -> None:
    with pytest.raises(TemplateError) as err:
        evaluate(condition, scope(d={}))
    assert condition in str(err.value)


def test_undefined_names_in_shell_templates_are_errors() -> None:
    with pytest.raises(TemplateError):
        render("echo {{ state.missing }}", scope(), shell=True)


@pytest.mark.parametrize(
    "text", ["{{ state. }}", "{{ x | nosuchfilter }}", "{% if %}", "{{ 1 is nosuchtest }}"]
)
def test_syntax_errors_and_unknown_filters_fail_to_compile(text: str) -> None:
    with pytest.raises(TemplateError, match="syntax error"):
        templates.check(text)


# --- the sandbox ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "x {{ state.__class__ }}",
        "{{ state.xs.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ run.update({'id': 1}) }}",
        "{{ state.xs.append(1) }}",
        "{{ 'a' * 100000000 }}",
        "{{ [0] * 100000000 }}",
        "{{ 10 ** 100000 }}",
        "{{ '%999999999d' % 1 }}",
        "{{ range(10 ** 9) | list }}",
    ],
)
def test_sandbox_turns_escapes_and_bombs_into_template_errors(text: str) -> None:
    s = scope(xs=[1])
    with pytest.raises(TemplateError):
        render(text, s)
    with pytest.raises(TemplateError):
        render(text, s, shell=True)
    assert s["state"]["xs"] == [1]


# --- shell values are data ---------------------------------------------------------


def sh(tmp_path: Path, text: str, **state: Any) -> str:
    script = render(text, scope(**state), shell=True)
    p = subprocess.run(
        ["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, p.stderr
    for name in ("X", "Y", "Z"):
        assert not (tmp_path / name).exists(), f"{text!r} ran code from a value"
    return p.stdout


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("printf '%s' {{ state.v }}", EVIL),
        ("printf '%s' {{ state.v }}{{ state.v }}", EVIL + EVIL),
        ("printf '%s' \"{{ state.v }}\"", EVIL),
        ("printf '%s' \"<{{ state.v }}>\"", f"<{EVIL}>"),
        ("printf '%s' 'before {{ state.v }} after'", f"before {EVIL} after"),
        ("printf '%s' \"$(printf '%s' {{ state.v }})\"", EVIL),
        ("printf '%s' \"${UNSET_VAR:-{{ state.v }}}\"", EVIL),
        ("cat <<EOF\n{{ state.v }}\nEOF", EVIL + "\n"),
        ("# a comment: {{ state.v }} isn't code\nprintf ok", "ok"),
        ("{% set x %}[{{ state.v }}]{% endset %}printf '%s' {{ x }}", f"[{EVIL}]"),
        ("printf '%s|' {{ state.words }}", f"a b|{EVIL}|"),
        ("printf '%s' \"{{ state.words }}\"", json.dumps(["a b", EVIL], separators=(",", ":"))),
        ("printf '%s' {{ state.n }} $(( {{ state.n }} + 1 ))", "4142"),
        ("printf '%s' {{ state.v | upper }}", EVIL.upper()),
    ],
)
def test_shell_values_are_passed_as_data_in_every_quoting_context(
    tmp_path: Path, template: str, expected: str
) -> None:
    assert sh(tmp_path, template, v=EVIL, words=["a b", EVIL], n=41) == expected


def test_shell_value_with_newlines_and_an_eof_line_stays_data(tmp_path: Path) -> None:
    value = "line1\nEOF\ntouch X\n"
    assert sh(tmp_path, "cat <<EOF\n{{ state.v }}\nEOF", v=value) == value + "\n"
    assert sh(tmp_path, "printf '%s' '{{ state.v }}'", v=value) == value


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("echo $(( {{ state.v }} + 1 ))", "integer"),
        ("cat <<'EOF'\n{{ state.v }}\nEOF", "quoted here-document"),
    ],
)
def test_shell_refuses_places_where_a_value_cannot_be_data(template: str, why: str) -> None:
    with pytest.raises(TemplateError, match=why):
        render(template, scope(v=EVIL), shell=True)


def test_validate_rejects_a_value_in_a_quoted_heredoc(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        textwrap.dedent(
            """\
            name: t
            state:
              v: {default: x}
            nodes:
              a:
                shell: |
                  cat <<'EOF'
                  {{ state.v }}
                  EOF
            """
        )
    )
    p = subprocess.run(
        [FLOWRUN, "validate", "wf.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    assert p.stderr.startswith("flowrun: error: wf.yaml:6:12: nodes.a.shell: ")
    assert "quoted here-document" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_real_run_passes_a_hostile_set_value_to_the_shell_as_data(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        textwrap.dedent(
            """\
            name: quoting
            state:
              v: {default: ""}
              bare: {default: null}
              double: {default: null}
              single: {default: null}
            nodes:
              bare:
                shell: "printf '%s' {{ state.v }}"
                save: bare
                next: double
              double:
                shell: printf '%s' "{{ state.v }}"
                save: double
                next: single
              single:
                shell: printf '%s' '{{ state.v }}'
                save: single
            """
        )
    )
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--set", f"v={EVIL}", "--json", "--db", "f.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    state = json.loads(p.stdout)["state"]
    assert state["v"] == EVIL
    assert state["bare"] == EVIL
    assert state["double"] == EVIL
    assert state["single"] == EVIL
    for name in ("X", "Y", "Z"):
        assert not (tmp_path / name).exists()


# --- a lone path is looked up without Jinja2, with the sandbox's answer -----------------

_KEYS = st.sampled_from(["a", "b", "items", "keys", "get", "x1", "B_2", "in", "true", "upper"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except TemplateError as exc:
        return "error", str(exc)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([*sorted(templates.NAMES), "other"]),
    keys=st.lists(_KEYS, max_size=3),
    state=st.dictionaries(_KEYS, _JSON, max_size=4),
    item=_JSON,
    spacing=st.sampled_from([("{{ ", " }}"), ("{{", "}}"), ("  {{  ", "  }}\n"), ("", "")]),
)
def test_a_lone_path_renders_and_evaluates_as_the_sandbox_does(
    name: str,
    keys: list[str],
    state: dict[str, Any],
    item: Any,
    spacing: tuple[str, str],
) -> None:
    from flowrun.engine.spec import sandbox

    path = ".".join([name, *keys])
    s = {"state": state, "item": item, "index": 2, "run": {"id": "r", "step": 1}, "node": "n"}
    opening, closing = spacing
    text = f"{opening}{path}{closing}"
    if opening:
        assert _outcome(render, text, s) == _outcome(sandbox.render, text, s)
        assert references(text) == sandbox.references(text)
    assert _outcome(evaluate, text, s) == _outcome(sandbox.evaluate, text, s)
    assert references(text, condition=True) == sandbox.references(text, condition=True)


def test_a_workflow_whose_templates_are_lone_paths_never_imports_jinja2(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        textwrap.dedent("""
            name: paths
            state:
              items: {default: [1, 2]}
              done: {default: true}
              out: {default: [], reducer: append}
            nodes:
              map:
                foreach: "{{ state.items }}"
                set: {out: "{{ item }}"}
                next: check
              check:
                set: {done: "{{ state.done }}"}
                routes:
                  - {when: state.done, to: [END]}
            """)
    )
    probe = (
        "import sys\n"
        "from flowrun.engine import Engine, SQLiteStore, load_workflow\n"
        f"wf = load_workflow({str(tmp_path / 'wf.yaml')!r})\n"
        f"r = Engine(SQLiteStore({str(tmp_path / 'f.db')!r})).start(wf)\n"
        "print(r.status, r.state['out'], 'jinja2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["succeeded", "[1,", "2]", "False"]
