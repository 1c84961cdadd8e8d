"""`flowrun schema` describes exactly the keys the validator accepts.

The schema is generated from the same tables the validator reads
(``engine/spec/keys.py``); these tests check the two against each other by
behaviour: every key the schema lists is accepted by ``load_workflow`` with an
example value (and the schema accepts the same document), and an unknown key is
refused by both, the validator's ``allowed:`` hint naming exactly the schema's
keys for that section.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flowrun.cli.app import main
from flowrun.engine import load_workflow
from flowrun.engine.errors import WorkflowError
from flowrun.engine.spec.schema import workflow_schema

from tests.support.schema_check import errors

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = workflow_schema()

BASE: dict[str, Any] = {
    "name": "probe",
    "state": {"n": {"default": 0}, "items": {"default": [1, 2]}, "out": {"default": None}},
    "nodes": {"first": {"run": ["echo", "hi"], "next": "second"}, "second": {"set": {"n": 1}}},
}
KIND_BODIES: dict[str, Any] = {
    "run": ["echo", "{{ state.n }}", 3],
    "shell": "echo {{ state.n }}",
    "python": "lib.sub:judge",
    "llm": {"model": "gpt-4o-mini", "prompt": "hi"},
    "set": {"n": "{{ state.n + 1 }}"},
}
NODE_KEYS: dict[str, dict[str, Any]] = {
    "next": {"next": "END"},
    "routes": {"routes": [{"when": "state.n > 0", "to": "first"}, {"to": "END"}]},
    "needs": {"needs": ["first"]},
    "foreach": {"foreach": "{{ state.items }}"},
    "save": {"save": "out"},
    "retry": {"retry": {"max_attempts": 2}},
    "timeout": {"timeout": "30s"},
    "description": {"description": "what it does"},
}
COMMAND_KEYS: dict[str, dict[str, Any]] = {
    "output": {"output": "json"},
    "env": {"env": {"LANG": "C", "N": "{{ state.n }}"}},
    "cwd": {"cwd": "."},
}
EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "top": {
        "name": {"name": "other"},
        "description": {"description": "what it does"},
        "state": {},  # in BASE
        "config": {"config": {"max_steps": 5}},
        "secrets": {"secrets": ["DEPLOY_TOKEN", "_DB_PASSWORD2"]},
        "start": {"start": ["first"]},
        "nodes": {},  # in BASE
    },
    "state": {
        "default": {"default": 1},
        "reducer": {"reducer": "add"},
        "description": {"description": "a counter"},
    },
    "config": {
        "max_concurrency": {"max_concurrency": 2},
        "queue_depth": {"queue_depth": 0},
        "max_steps": {"max_steps": 10},
        "conflict_policy": {"conflict_policy": "last_writer_wins"},
        "timeout": {"timeout": None},
        "retry": {"retry": {"max_attempts": 3}},
        "max_cost_usd": {"max_cost_usd": 0.5},
    },
    "retry": {
        "max_attempts": {"max_attempts": 3},
        "backoff": {"backoff": "250ms"},
        "max_backoff": {"max_backoff": 10},
        "jitter": {"jitter": False},
    },
    "route": {"when": {"when": "state.n > 1"}, "to": {"to": ["first", "END"]}},
    "llm": {
        "model": {"model": "claude-sonnet-4"},
        "prompt": {"prompt": "Say {{ state.n }}"},
        "system": {"system": "Be brief."},
        "provider": {"provider": "anthropic"},
        "api": {"api": "responses"},
        "temperature": {"temperature": 0.2},
        "max_tokens": {"max_tokens": "{{ state.n + 10 }}"},
        "json": {"json": True},
        "base_url": {"base_url": "http://127.0.0.1:8000/v1"},
        "api_key_env": {"api_key_env": "MY_KEY"},
        "cassette": {"provider": "replay", "cassette": "c.jsonl"},
    },
}
for kind in KIND_BODIES:
    command = COMMAND_KEYS if kind in ("run", "shell") else {}
    EXAMPLES[f"node:{kind}"] = {kind: {}, **NODE_KEYS, **command}


@dataclass(frozen=True)
class Section:
    """Where a section sits in a document, and in the schema."""

    name: str
    place: Callable[[dict[str, Any]], dict[str, Any]]  # the mapping inside a doc copy
    schema: dict[str, Any]


def _props(node: dict[str, Any]) -> dict[str, Any]:
    """The object branch of a schema that may also allow null."""
    if "anyOf" in node:
        node = next(b for b in node["anyOf"] if b.get("type") == "object")
    return node


def _node_doc(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def place(doc: dict[str, Any]) -> dict[str, Any]:
        doc["nodes"]["second"] = {kind: copy.deepcopy(KIND_BODIES[kind])}
        if kind == "llm":  # the reply text must go somewhere (validate refuses to drop it)
            doc["nodes"]["second"]["save"] = "out"
        return doc["nodes"]["second"]

    return place


def _llm(doc: dict[str, Any]) -> dict[str, Any]:
    doc["nodes"]["second"] = {"llm": copy.deepcopy(KIND_BODIES["llm"]), "save": "out"}
    return doc["nodes"]["second"]["llm"]


def _route(doc: dict[str, Any]) -> dict[str, Any]:
    doc["nodes"]["second"]["routes"] = [{"to": "END"}]
    return doc["nodes"]["second"]["routes"][0]


def _config(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.setdefault("config", {})


def _retry(doc: dict[str, Any]) -> dict[str, Any]:
    return _config(doc).setdefault("retry", {})


top = SCHEMA["properties"]
node_variants = {next(iter(v["required"])): v for v in SCHEMA["$defs"]["node"]["oneOf"]}
SECTIONS = [
    Section("top", lambda doc: doc, SCHEMA),
    Section(
        "state",
        lambda doc: doc["state"]["n"],
        _props(_props(top["state"])["additionalProperties"]),
    ),
    Section("config", _config, _props(top["config"])),
    Section("retry", _retry, _props(top["config"])["properties"]["retry"]),
    Section("route", _route, node_variants["set"]["properties"]["routes"]["items"]),
    Section("llm", _llm, node_variants["llm"]["properties"]["llm"]),
    *(Section(f"node:{k}", _node_doc(k), node_variants[k]) for k in KIND_BODIES),
]


def _load(tmp_path: Path, doc: dict[str, Any]) -> None:
    (tmp_path / "lib").mkdir(exist_ok=True)  # KIND_BODIES["python"] (validate reads it)
    (tmp_path / "lib" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "lib" / "sub.py").write_text("def judge(state, ctx):\n    return None\n")
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    load_workflow(path)


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.name)
def test_every_key_in_the_schema_is_accepted_by_the_validator(
    section: Section, tmp_path: Path
) -> None:
    listed = set(section.schema["properties"])
    assert listed == set(EXAMPLES[section.name]), "give every schema key an example here"
    for key, example in EXAMPLES[section.name].items():
        doc = copy.deepcopy(BASE)
        section.place(doc).update(copy.deepcopy(example))
        _load(tmp_path, doc)  # raises WorkflowError if the validator refuses the key
        assert errors(SCHEMA, doc) == [], (section.name, key)


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.name)
def test_a_key_outside_the_schema_is_refused_by_both(section: Section, tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    section.place(doc)["zzz_not_a_key"] = 1
    with pytest.raises(WorkflowError) as refused:
        _load(tmp_path, doc)
    assert "unknown key 'zzz_not_a_key'" in refused.value.message
    hint = refused.value.hint or ""
    assert hint.startswith("allowed: "), hint
    allowed = hint.removeprefix("allowed: ").split(", ")
    assert sorted(allowed) == sorted(section.schema["properties"]), section.name
    assert any(
        "unknown key 'zzz_not_a_key'" in e or "branches fit" in e for e in errors(SCHEMA, doc)
    )


def test_the_schema_is_draft_2020_12_and_refuses_wrong_shapes() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    good = copy.deepcopy(BASE)
    assert errors(SCHEMA, good) == []
    for bad in (
        {"nodes": {"first": {"run": "echo hi"}}},  # run takes a list
        {"nodes": {"first": {"run": ["a"], "shell": "b"}}},  # two kinds
        {"nodes": {"first": {"set": {}, "output": "json"}}},  # output is for run and shell
        {"nodes": {"END": {"set": {}}}},  # reserved name
        {"nodes": {"9lives": {"set": {}}}},  # bad node name
        {"config": {"max_concurrency": 0}},
        {"config": {"timeout": "soon"}},
        {"state": {"n": {"reducer": "sum"}}},
        {"nodes": {"first": {"llm": {"model": "m"}}}},  # no prompt
        {"nodes": {"first": {"llm": {"model": "m", "prompt": "p", "max_tokens": "200"}}}},
    ):
        doc = {**copy.deepcopy(BASE), **bad}
        assert errors(SCHEMA, doc), bad


def test_flowrun_schema_prints_the_schema_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["schema"])
    assert exit_.value.code == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == SCHEMA
    assert out.err == ""


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").rglob("*.yaml")), ids=lambda p: p.name)
def test_example_workflows_match_the_schema(path: Path) -> None:
    load_workflow(path)
    assert errors(SCHEMA, yaml.safe_load(path.read_text(encoding="utf-8"))) == []
