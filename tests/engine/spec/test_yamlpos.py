"""Positioned YAML loading: libyaml's parser and PyYAML's give the same document."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flowrun.engine.errors import WorkflowError
from flowrun.engine.spec import yamlpos

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
    monkeypatch.setattr(yamlpos, "_BoundedLoader", lambda text: pure_parse("pure-Python parser"))
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
