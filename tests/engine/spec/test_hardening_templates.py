"""Template hardening: every way a shell template emits text is data, builds are
bounded, and deep or long templates are refused cleanly (security probe, issue 7)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import pytest
from flowrun.engine.spec import nesting, templates
from flowrun.engine.spec.templates import TemplateError, render

from tests.support.installed import FLOWRUN

PAYLOADS = [
    "$(touch X)",
    "`touch X`",
    "; touch X",
    "' ; touch X ; '",
    '" ; touch X ; "',
    "a\ntouch X\nb",
    "$(touch X)'\"`touch X`\\",
    "&& touch X || touch X",
    "EOF\ntouch X\nEOF",
]


def scope(**state: Any) -> dict[str, Any]:
    return {"state": state, "item": None, "index": None, "run": {"id": "r"}, "node": "n"}


def run_sh(tmp_path: Path, template: str, value: str) -> str:
    script = render(template, scope(v=value), shell=True)
    p = subprocess.run(
        ["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert not (tmp_path / "X").exists(), f"{template!r} ran code from {value!r}"
    assert p.returncode == 0, p.stderr
    return p.stdout


# Each construct prints the value with printf; expected output as a function of it.
CONSTRUCTS = {
    "filter block, value in the arguments": (
        """printf '%s' {% filter replace("T", state.v) %}T{% endfilter %}""",
        lambda v: v,
    ),
    "filter block, format(value)": (
        "printf '%s' {% filter format(state.v) %}%s{% endfilter %}",
        lambda v: v,
    ),
    "filter block, value in the body": (
        "printf '%s' {% filter trim %} {{ state.v }} {% endfilter %}",
        lambda v: v.strip(),
    ),
    "nested filter blocks": (
        """printf '%s' {% filter replace("A", state.v) %}"""
        """{% filter replace("B", "A") %}B{% endfilter %}{% endfilter %}""",
        lambda v: v,
    ),
    "filter block in a macro": (
        """{% macro m(a) %}printf '%s' {% filter replace("T", a) %}T{% endfilter %}"""
        "{{ caller() }}{% endmacro %}{% call m(state.v) %}{% endcall %}",
        lambda v: v,
    ),
    "call block, caller() body": (
        "{% macro m() %}printf '%s' {{ caller() }}{% endmacro %}"
        "{% call m() %}{{ state.v }}{% endcall %}",
        lambda v: v,
    ),
    "call block with an argument": (
        "{% macro m(a) %}printf '%s' {{ a }}{{ caller() }}{% endmacro %}"
        "{% call m(state.v) %}{% endcall %}",
        lambda v: v,
    ),
    "call block, caller(value) body": (
        "{% macro m() %}printf '%s' {{ caller(state.v) }}{% endmacro %}"
        "{% call(x) m() %}{{ x }}{% endcall %}",
        lambda v: v,
    ),
    "set block with a filter taking the value": (
        """{% set x | replace("T", state.v) %}T{% endset %}printf '%s' {{ x }}""",
        lambda v: v,
    ),
    "set block, filtered when output": (
        "{% set x %}<{{ state.v }}>{% endset %}printf '%s' {{ x | replace('<', '[') }}",
        lambda v: f"[{v}>",
    ),
    "block and self": (
        "printf '%s|' {% block b %}{{ state.v }}{% endblock %} {{ self.b() }}",
        lambda v: f"{v}|{v}|",
    ),
    "with": (
        "{% with x = state.v %}printf '%s' {{ x }}{% endwith %}",
        lambda v: v,
    ),
    "autoescape": (
        "{% autoescape true %}printf '%s' {{ state.v }}{% endautoescape %}",
        lambda v: v,
    ),
    "loop.cycle": (
        "{% for i in [1] %}printf '%s' {{ loop.cycle(state.v) }}{% endfor %}",
        lambda v: v,
    ),
    "format filter in an expression": (
        "printf '%s' {{ '%s' | format(state.v) }}",
        lambda v: v,
    ),
}


@pytest.mark.parametrize("value", PAYLOADS)
@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_every_construct_that_emits_text_in_a_shell_template_passes_values_as_data(
    tmp_path: Path, construct: str, value: str
) -> None:
    template, expected = CONSTRUCTS[construct]
    assert run_sh(tmp_path, template, value) == expected(value)


# A call block writes its callee's result unquoted: a callee that is not a macro is
# refused before running, or when it renders if a name was rebound to it.
CALLS_ON_A_VALUE = {
    "a method of the value": "printf '%s' {% call state.v.format() %}{% endcall %}",
    "format taking the value": """printf '%s' {% call "{}".format(state.v) %}{% endcall %}""",
    "another method": "printf '%s' {% call state.v.strip() %}{% endcall %}",
    "a global": "printf '%s' {% call lipsum(1, false) %}{% endcall %}",
}
CALLS_ON_A_REBOUND_MACRO = {
    "a macro name set to a method": (
        "{% macro m() %}{% endmacro %}{% set m = state.v.format %}"
        "printf '%s' {% call m() %}{% endcall %}"
    ),
    "caller set to a method": (
        "{% set caller = state.v.format %}printf '%s' {% call caller() %}{% endcall %}"
    ),
}


def rendered_or_refused(tmp_path: Path, template: str, value: str) -> str | None:
    """Render and run ``template``: its refusal, or None after the script ran."""
    try:
        run_sh(tmp_path, template, value)
    except TemplateError as exc:
        assert not (tmp_path / "X").exists()
        return str(exc)
    return None


@pytest.mark.parametrize("value", PAYLOADS)
@pytest.mark.parametrize("construct", sorted(CALLS_ON_A_VALUE))
def test_a_call_block_on_anything_but_a_macro_is_refused_before_running(
    tmp_path: Path, construct: str, value: str
) -> None:
    template = CALLS_ON_A_VALUE[construct]
    with pytest.raises(TemplateError, match="template line 1") as err:
        templates.check(template, shell=True)
    assert "{% call %} can only call a macro defined in this template" in str(err.value)
    refused = rendered_or_refused(tmp_path, template, value)
    assert refused is not None and "can only call a macro" in refused


@pytest.mark.parametrize("value", PAYLOADS)
@pytest.mark.parametrize("construct", sorted(CALLS_ON_A_REBOUND_MACRO))
def test_a_call_block_on_a_name_rebound_from_a_macro_is_refused_when_it_renders(
    tmp_path: Path, construct: str, value: str
) -> None:
    template = CALLS_ON_A_REBOUND_MACRO[construct]
    templates.check(template, shell=True)  # the name is a macro's: only rendering can tell
    refused = rendered_or_refused(tmp_path, template, value)
    assert refused is not None and "{% call %} can only call a macro" in refused


@pytest.mark.parametrize(
    "shell",
    [
        "echo {% call state.title.format() %}{% endcall %}",
        'echo {% call "{}".format(state.title) %}{% endcall %}',
    ],
)
def test_a_real_run_refuses_a_call_block_on_a_value_and_runs_nothing(
    tmp_path: Path, shell: str
) -> None:
    # The reviewer's reproductions, inj1.yaml and inj2.yaml.
    (tmp_path / "wf.yaml").write_text(
        "name: inj\nstate:\n  title: {default: x}\nnodes:\n  a:\n"
        f"    shell: {json.dumps(shell)}\n"
    )
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--set", 'title="$(touch PWNED)"', "--db", "f.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not (tmp_path / "PWNED").exists()
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("flowrun: error: wf.yaml:6:12: nodes.a.shell: "), p.stderr
    assert "{% call %} can only call a macro defined in this template" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_filter_block_output_is_one_value_even_its_template_text(tmp_path: Path) -> None:
    # The probe's exact shape: the whole filtered text is one word, never a script.
    script = render(
        """{% filter replace("T", state.title) %}echo T{% endfilter %}""",
        scope(title="$(touch X)"),
        shell=True,
    )
    p = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 127  # a command named "echo $(touch X)" does not exist
    assert not (tmp_path / "X").exists()


def test_a_real_run_keeps_a_hostile_set_value_in_a_filter_block_as_data(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        textwrap.dedent(
            """\
            name: probe
            state:
              title: {default: ""}
              out: {default: null}
            nodes:
              a:
                shell: printf '%s' {% filter replace("T", state.title) %}T{% endfilter %}
                save: out
            """
        )
    )
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--set", "title=$(touch PWNED)", "--json", "--db", "f.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"]["out"] == "$(touch PWNED)"
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{% include 'x.sh' %}", "{% include %} is not supported"),
        ("{% import 'x' as y %}echo", "{% import %} is not supported"),
        ("{% from 'x' import y %}echo", "{% from ... import %} is not supported"),
        ("{% extends 'x' %}", "{% extends %} is not supported"),
        ("echo {{ _flowrun_block_0 }}", "reserved"),
    ],
)
def test_constructs_that_cannot_be_quoted_are_refused_before_running(
    template: str, why: str
) -> None:
    with pytest.raises(TemplateError, match="template line 1") as err:
        templates.check(template, shell=True)
    assert why in str(err.value)


def test_validate_refuses_an_include_in_a_shell_command_with_its_location(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        "name: t\nnodes:\n  a:\n    shell: \"echo {% include 'evil.sh' %}\"\n"
    )
    p = subprocess.run(
        [FLOWRUN, "validate", "wf.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    assert p.stderr.startswith("flowrun: error: wf.yaml:4:12: nodes.a.shell: ")
    assert "{% include %} is not supported" in p.stderr
    assert "Traceback" not in p.stderr


# --- F18: every build is bounded ------------------------------------------------------

BOMBS = [
    "{{ 'x' | center(2000000000) }}",
    "{{ 'x'.center(2000000000) }}",
    "{{ 'x'.ljust(2000000000) }}",
    "{{ 'x'.rjust(2000000000) }}",
    "{{ 'x'.zfill(2000000000) }}",
    "{{ 'a\\nb' | indent(2000000000) }}",
    "{{ '{:>2000000000}'.format(1) }}",
    "{{ '{:.2000000000f}'.format(1.0) }}",
    "{{ '%.2000000000f' % 1.0 }}",
    "{{ '%2000000000d' % 1 }}",
    "{{ '%*d' % (2000000000, 1) }}",
    "{{ '%.2000000000f' | format(1.0) }}",
    "{{ ('x' * 1000000) | replace('x', 'y' * 1000) }}",
    "{{ ('x' * 1000000).replace('x', 'y' * 1000) }}",
    "{{ ('x ' * 1000000) | wordwrap(1, wrapstring='z' * 1000) }}",
    "{{ range(100000) | join('x' * 100000) }}",
    "{{ ('x' * 100000).join(range(100000) | map('string')) }}",
    "{{ (('x' * 1000000) ~ ('x' * 1000000) ~ ('x' * 1000000)) * 4 }}",
    "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
    "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}z{% endfor %}"
    "{% endfor %}{% endset %}{{ x | length }}",
    "{{ (['x' * 1000000] * 100) | join }}",
    "{{ (['x' * 1000000] * 100) | tojson }}",
    "{{ ('\\t' * 1000000).expandtabs(1000) }}",
    "{{ lipsum(100000000) }}",
    "{{ [1] | batch(2000000000, 0) | list }}",
    "{{ [1, 2] | slice(2000000000) | list }}",
    "{{ (1).to_bytes(2000000000, 'big') }}",
]

_BOMB_RUNNER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from flowrun.engine.spec import templates
results = []
for text in json.loads(sys.argv[1]):
    for shell in (False, True):
        try:
            templates.check(text, shell=shell)  # never runs a filter while compiling
            templates.render(text, {"state": {}, "item": None, "index": None,
                                    "run": {}, "node": "n"}, shell=shell)
            results.append([text, shell, None])
        except templates.TemplateError as exc:
            results.append([text, shell, str(exc)])
print(json.dumps(results))
"""


def test_every_way_to_build_a_huge_string_fails_cleanly_naming_the_limit() -> None:
    # In a 1 GB address space: a build that is not bounded crashes or says MemoryError.
    p = subprocess.run(
        [sys.executable, "-c", _BOMB_RUNNER, json.dumps(BOMBS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    named = ("the template limit of 10,000,000", "loop iterations", "a `*` width")
    failures = [
        (text, shell, error)
        for text, shell, error in json.loads(p.stdout)
        if error is None or not any(limit in error for limit in named)
    ]
    assert failures == []


INTEGER_BOMBS = [
    "{{ ((10**1000)**1000)**10 }}",
    "{{ (10**1000)**1000 % 7 }}",
    "{{ (2**1000)**101 % 7 }}",
    "{% set ns = namespace(n=10**1000) %}{% for i in range(40) %}"
    "{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n % 7 }}",
    "{% set ns = namespace(n=9**999) %}{% for i in range(100) %}"
    "{% set ns.n = ns.n * 9**999 %}{% endfor %}{{ ns.n % 7 }}",
    "{% set ns = namespace(n=(2**1000)**90) %}{% for i in range(100000) %}"
    "{% set ns.n = (ns.n + ns.n) + (ns.n + ns.n) %}{% endfor %}{{ ns.n % 7 }}",
    "{% set ns = namespace(n=(2**1000)**90) %}{% for i in range(100000) %}"
    "{% set ns.n = (ns.n - -ns.n) - -(ns.n - -ns.n) %}{% endfor %}{{ ns.n % 7 }}",
    "{{ ('f' * 1000000) | int(base=16) % 7 }}",
    "{{ (0).from_bytes(('x' * 1000000).encode(), 'big') % 7 }}",
]


def test_every_way_to_build_a_huge_integer_fails_cleanly_naming_the_limit() -> None:
    # Integer arithmetic costs more than its size: refused before it runs where it can be.
    p = subprocess.run(
        [sys.executable, "-c", _BOMB_RUNNER, json.dumps(INTEGER_BOMBS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    failures = [
        (text, shell, error)
        for text, shell, error in json.loads(p.stdout)
        if error is None or "the template limit of 100,000 bits" not in error
    ]
    assert failures == []


def test_integers_under_the_limit_still_compute() -> None:
    assert render("{{ (2**1000)**99 % 1000003 }}", scope()) == (2**1000) ** 99 % 1000003
    assert render("{{ 10**1000 * 10**1000 % 999 }}", scope()) == 10**2000 % 999
    assert render("{{ (-3)**1000 - 1 }}", scope()) == 3**1000 - 1
    assert render("{{ (2**1000)**99 // (2**1000)**98 }}", scope()) == 2**1000


def test_large_input_values_still_render_under_the_limit() -> None:
    doc = "word " * 400_000  # 2 MB of real data: not a bomb
    assert len(render("{{ state.doc | upper }}", scope(doc=doc))) == len(doc)
    assert render("{{ state.doc | replace('word', 'w') | length }}", scope(doc=doc)) == 800_000


# --- F23, F11: long and deep templates ------------------------------------------------


def test_a_filter_chain_is_compiled_without_constant_folding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    original = jinja2.nodes.Filter.as_const

    def counting(self: Any, eval_ctx: Any = None) -> Any:
        nonlocal calls
        calls += 1
        return original(self, eval_ctx)

    monkeypatch.setattr(jinja2.nodes.Filter, "as_const", counting)
    n = nesting.MAX_EXPRESSION - 2  # and `state.x` makes two more levels
    templates.check("{{ state.x" + " | upper" * n + " }}")  # folding was ~n**3 calls
    templates.check("{{ state.x" + " | upper" * n + " }}", shell=True)
    assert calls <= 2 * n


WORKFLOW = """\
name: t
state:
  x: {{default: 1}}
nodes:
  a:
    shell: {shell}
    routes:
      - when: {when}
        to: END
"""


def validate(tmp_path: Path, shell: str, when: str = "'true'") -> subprocess.CompletedProcess[str]:
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(shell=shell, when=when))
    return subprocess.run(
        [FLOWRUN, "validate", "wf.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("shell", "when", "where", "why"),
    [
        ("'echo {{ state.x" + " | upper" * 400 + " }}'", "'true'", "6:12: nodes.a.shell", "40"),
        ("'echo {{ " + "(" * 1000 + "1" + ")" * 1000 + " }}'", "'true'", "6:12", "40"),
        ("'echo {{ " + "[" * 1000 + "]" * 1000 + " }}'", "'true'", "6:12", "40"),
        ("'echo {{ " + "not " * 1000 + "1 }}'", "'true'", "6:12", "40"),
        ("'" + "{% if 1 %}" * 101 + "{% endif %}" * 101 + "'", "'true'", "6:12", "16"),
        (
            "'" + "{% for i in [1] %}" * 21 + "{% endfor %}" * 21 + "'",
            "'true'",
            "6:12",
            "blocks nested deeper than 16",
        ),
        ("echo", "'" + "(" * 1000 + "1" + ")" * 1000 + "'", "8:15: nodes.a.routes[0].when", "40"),
        ("echo", "'(1 if 0[1] else 2)'", "8:15: nodes.a.routes[0].when", "no items to index"),
    ],
)
def test_validate_refuses_deep_and_long_templates_with_a_location_and_hint(
    tmp_path: Path, shell: str, when: str, where: str, why: str
) -> None:
    p = validate(tmp_path, shell, when)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(f"flowrun: error: wf.yaml:{where}"), p.stderr
    assert why in p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr
    if "no items" not in why:
        assert "split it up" in p.stderr  # the hint


def _nest(open_: str, close: str, depth: int, inner: str) -> str:
    return open_ * depth + inner + close * depth


@pytest.mark.parametrize(
    "template",
    [
        "{{ " + _nest("(", ")", 38, "state.x") + " }}",
        "{{ " + _nest("[", "]", 38, "state.x") + " }}",
        "{{ " + _nest("{'k': ", "}", 38, "state.x") + " }}",
        "{{ " + _nest("(state.x if ", " else 1)", 19, "1") + " }}",
        "{{ state.x" + " | replace('a', 'b')" * 38 + " }}",
        "{{ state.x" + " + 1" * 38 + " }}",
        "{{ " + "not " * 38 + "state.x }}",
        "{{ " + _nest("state.get(", ", 1)", 19, "'x'") + " }}",
        _nest("{% for i in [1] %}{{ loop.index }}", "{% else %}e{% endfor %}", 16, "x"),
        _nest("{% if state.x %}", "{% else %}n{% endif %}", 16, "x"),
        _nest("{% macro m() %}{{ caller() }}", "{% endmacro %}", 8, "")
        + _nest("{% call m() %}", "{% endcall %}", 8, "x"),
        _nest("{% filter upper %}", "{% endfilter %}", 16, "{{ state.x }}"),
        _nest("{% set y %}", "{% endset %}{{ y }}", 16, "{{ state.x }}"),
        _nest("{% with z = state.x %}{{ z }}", "{% endwith %}", 16, ""),
    ],
)
@pytest.mark.parametrize("shell", [False, True])
def test_templates_at_the_nesting_limits_compile_and_render(template: str, shell: bool) -> None:
    templates.check(template, shell=shell)
    render(template, scope(x=1), shell=shell)
