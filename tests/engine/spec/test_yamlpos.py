"""Positioned YAML loading: libyaml's parser and PyYAML's give the same document."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flowrun.engine.errors import WorkflowError
from flowrun.engine.spec import yamlcompose, yamlpos

needs_libyaml = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")

SAMPLES = {
    "anchors, merge keys, surrogate escapes (libyaml refuses those)": """
name: t
base: &base {shell: echo a, timeout: 5s}
nodes:
  a:
    <<: *base
    next: b
  b: {<<: [*base], shell: "echo \\u00e9 \\ud83d\\ude00"}
""",
    "scalars of every tag": """
name: t
state:
  i: {default: 0x1f}
  f: {default: 1.5e3}
  b: {default: yes}
  n: {default: ~}
  d: {default: 2024-01-02}
  s: {default: !!str 12}
  q: {default: 'on'}
  block: |
    line one
      line two
  folded: >-
    a
    b
nodes: {a: {set: {x: [1, [2, {y: z}]]}}}
""",
    "the pipeline example": (Path(__file__).parents[3] / "workflows/pipeline/pipeline.yaml")
    .read_text(encoding="utf-8")
    .lstrip(),
}


def _pure(monkeypatch: pytest.MonkeyPatch, text: str) -> yamlpos.Document | str:
    with monkeypatch.context() as m:
        m.setattr(yaml, "__with_libyaml__", False)
        return _load(text)


def _load(text: str) -> yamlpos.Document | str:
    try:
        return yamlpos.load(text, "wf.yaml")
    except WorkflowError as exc:
        return str(exc)


@needs_libyaml
@pytest.mark.parametrize("text", list(SAMPLES.values()), ids=list(SAMPLES))
def test_libyaml_and_pure_python_give_the_same_values_and_positions(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    fast, pure = _load(text), _pure(monkeypatch, text)
    assert isinstance(fast, yamlpos.Document) and isinstance(pure, yamlpos.Document)
    assert fast.data == pure.data
    assert fast.values == pure.values
    assert fast.keys == pure.keys
    assert len(fast.values) > 10


@needs_libyaml
def test_a_valid_file_is_composed_by_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    pure_parse = pytest.fail  # the pure-Python loader must not be built for a valid file
    monkeypatch.setattr(
        yamlcompose, "_BoundedLoader", lambda text: pure_parse("pure-Python parser")
    )
    doc = yamlpos.load("name: t\nbase: &b {shell: echo a}\nnodes:\n  a: {<<: *b, next: END}\n", "f")
    assert doc.data["nodes"]["a"] == {"shell": "echo a", "next": "END"}
    assert doc.values[("nodes", "a", "next")] == yamlpos.Pos(4, 21)
    assert doc.keys[("nodes", "a")] == yamlpos.Pos(4, 3)


@needs_libyaml
@pytest.mark.parametrize(
    "text",
    [
        "name: t\nnodes:\n  a: {shell: x\n  b: {shell: y}\n",  # libyaml refuses the syntax
        "name: t\nnodes:\n  a:\n\tshell: x\n",  # a tab
        "name: t\nx: 'a\x07b'\n",  # a control character
        "name: t\n---\nname: u\n",  # two documents
        "name: t\nx: !!int abc\n",  # composed by both; the builder refuses the value
        "name: t\nx: &l [*l]\n",  # an alias to itself
        "name: t\nx: " + "[" * 200 + "]" * 200 + "\n",  # past the depth bound
    ],
)
def test_a_refused_file_reads_the_same_error_with_or_without_libyaml(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    fast, pure = _load(text), _pure(monkeypatch, text)
    assert isinstance(fast, str) and fast.startswith("wf.yaml:")
    assert fast == pure


def _composed(monkeypatch: pytest.MonkeyPatch, text: str) -> yamlpos.Document | str:
    with monkeypatch.context() as m:
        m.setattr(yamlpos._Direct, "read", lambda self, text: None)
        return _load(text)


PLAIN = {
    "the pipeline example": SAMPLES["the pipeline example"],
    # every tag's scalars but !!str's, untagged; a flow mapping with quoted and non-ASCII keys
    "untagged scalars, block and flow styles": SAMPLES["scalars of every tag"].replace(
        "  s: {default: !!str 12}\n", '  e: {default: }\n  u: {default: "caf\\u00e9"}\n'
    )
    + '"1": {"on": [1, [2, {y: z}], [], {}], "é": "ü"}\n',
}


@needs_libyaml
@pytest.mark.parametrize("text", list(PLAIN.values()), ids=list(PLAIN))
def test_a_plain_file_is_built_from_libyaml_events_as_the_composer_builds_it(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    assert yamlpos._Direct("wf.yaml").read(text) is not None  # the event builder's kind
    direct, composed = _load(text), _composed(monkeypatch, text)
    assert isinstance(direct, yamlpos.Document) and isinstance(composed, yamlpos.Document)
    assert repr(direct.data) == repr(composed.data)
    assert list(direct.values.items()) == list(composed.values.items())
    assert list(direct.keys.items()) == list(composed.keys.items())


@needs_libyaml
@pytest.mark.parametrize(
    "text",
    [
        "name: t\nbase: &b {shell: echo a}\nnodes:\n  a: {<<: *b}\n",  # an anchor
        "name: t\nx: !!str 12\n",  # a tag
        "name: t\nx: {<<: {a: 1}}\n",  # a merge key
        "name: t\nname: u\n",  # a duplicate key
        "name: t\n? [a]\n: b\n",  # a key that is not a scalar
        "name: t\n=: b\n",  # a scalar of the `value` tag
        "name: t\nx: .nan\n",  # a value the builder refuses
        "name: t\nnodes: {a: {shell: x}\n",  # bad syntax
        "name: t\n---\nname: u\n",  # two documents
        "",  # no document
        "x: " + "[" * 64 + "]" * 64 + "\n",  # at the depth bound
    ],
)
def test_what_the_event_builder_leaves_goes_to_the_composer(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    assert yamlpos._Direct("wf.yaml").read(text) is None
    direct, composed = _load(text), _composed(monkeypatch, text)
    assert (direct if isinstance(direct, str) else direct.data) == (
        composed if isinstance(composed, str) else composed.data
    )
