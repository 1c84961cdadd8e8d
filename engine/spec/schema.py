"""The JSON Schema (draft 2020-12) of a workflow file, built from :mod:`.keys` and the
node kinds' entries (:mod:`flowrun.engine.nodes.registry`).

The schema describes the file's shape: which keys each section takes and their
types. What only the whole file can tell (that ``next`` names an existing node,
that a template reads declared state keys) is left to ``flowrun validate``.
"""

from __future__ import annotations

from typing import Any

from ..nodes.registry import KINDS, Kind
from . import keys
from .checks import DURATION_PATTERN
from .keys import Key
from .model import END

DIALECT = "https://json-schema.org/draft/2020-12/schema"
TEMPLATE = {"type": "string", "pattern": r"\{\{|\{%", "description": "A template: {{ ... }}"}


def workflow_schema() -> dict[str, Any]:
    """The schema of a workflow file, as a JSON-able mapping."""
    node_variants = [_node(kind) for kind in KINDS.values()]
    return {
        "$schema": DIALECT,
        "title": "flowrun workflow",
        "description": "A flowrun workflow file. `flowrun validate FILE` checks the rest.",
        **_object(keys.TOP),
        "$defs": {
            "duration": {
                "description": "250ms, 30s, 5m, 1h, 2d, or a number of seconds",
                "anyOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": DURATION_PATTERN},
                ],
            },
            "node_name": {"type": "string", "pattern": keys.NODE_NAME.pattern},
            "node": {
                "description": "A node: exactly one of " + ", ".join(KINDS),
                "oneOf": node_variants,
            },
        },
    }


def _node(kind: Kind) -> dict[str, Any]:
    section: tuple[Key, ...] = (kind.body, *keys.COMMON, *kind.keys)
    out = _object(section)
    out["required"] = [kind.name]
    out["description"] = f"A {kind.name} node: {kind.body.doc}"
    return out


def _object(section: tuple[Key, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {k.name: _key(k) for k in section},
        "additionalProperties": False,
    }
    required = [k.name for k in section if k.required]
    if required:
        out["required"] = required
    return out


def _key(k: Key) -> dict[str, Any]:
    schema = _type(k)
    if k.templated:
        schema = {"anyOf": [schema, TEMPLATE]}
    if k.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    schema["description"] = k.doc
    if k.default is not keys.NO_DEFAULT:
        schema["default"] = k.default
    return schema


def _type(k: Key) -> dict[str, Any]:
    t = k.type
    if t == "any":
        return {}
    if t in ("string", "boolean"):
        return {"type": t}
    if t == "condition":
        return {"type": ["string", "boolean"]}
    if t in ("integer", "number"):
        out: dict[str, Any] = {"type": t}
        if k.minimum is not None:
            out["minimum"] = k.minimum
        if k.maximum is not None:
            out["maximum"] = k.maximum
        return out
    if t == "choice":
        return {"enum": list(k.choices)}
    if t == "duration":
        if not k.positive:
            return {"$ref": "#/$defs/duration"}
        return {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        }
    if t == "node":
        one: dict[str, Any] = {"type": "string"}
        if not k.end:
            one = {"allOf": [{"$ref": "#/$defs/node_name"}, {"not": {"const": END}}]}
        return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}
    if t == "mapping":
        return {"type": "object"}
    if t == "argv":
        item: dict[str, Any] = {"type": ["string", "number", "boolean"]}
        return {"type": "array", "items": item, "minItems": 1}
    if t == "env_names":
        return {"type": "array", "items": {"type": "string", "pattern": keys.ENV_NAME.pattern}}
    if t == "python_target":
        return {"type": "string", "pattern": keys.PYTHON_TARGET.pattern}
    if t == "list_or_template":
        return {"anyOf": [{"type": "array"}, TEMPLATE]}
    if t == "object":
        return _object(k.keys)
    if t == "state":
        entry = {"anyOf": [_object(keys.STATE), {"type": "null"}]}
        return {"type": "object", "additionalProperties": entry}
    if t == "nodes":
        return {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"allOf": [{"$ref": "#/$defs/node_name"}, {"not": {"const": END}}]},
            "additionalProperties": {"$ref": "#/$defs/node"},
        }
    if t == "routes":
        return {"type": "array", "items": _object(keys.ROUTE), "minItems": 1}
    raise ValueError(f"no schema for key type {t!r}")
