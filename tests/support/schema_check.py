"""A small JSON Schema (2020-12) checker: the keywords ``flowrun schema`` uses, no more.

``jsonschema`` is not a dependency of the project, so the tests check documents
against the schema with this. An unsupported keyword is an error, never ignored,
so the schema cannot grow a keyword these tests silently skip.
"""

from __future__ import annotations

import re
from typing import Any

_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "$defs"}
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Every place ``value`` breaks ``schema``, as ``path: why``; empty when it fits."""
    out: list[str] = []
    _check(schema, value, "$", schema, out)
    return out


def _is(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def _check(s: dict[str, Any], v: Any, at: str, root: dict[str, Any], out: list[str]) -> None:
    for word, arg in s.items():
        if word in _ANNOTATIONS:
            continue
        if word == "$ref":
            assert arg.startswith("#/$defs/"), arg
            _check(root["$defs"][arg.removeprefix("#/$defs/")], v, at, root, out)
        elif word == "type":
            types = arg if isinstance(arg, list) else [arg]
            if not any(_is(v, t) for t in types):
                out.append(f"{at}: {v!r} is not {arg}")
        elif word == "enum":
            if v not in arg:
                out.append(f"{at}: {v!r} not one of {arg}")
        elif word == "const":
            if v != arg or type(v) is not type(arg):
                out.append(f"{at}: {v!r} is not {arg!r}")
        elif word in ("minimum", "maximum", "exclusiveMinimum"):
            if (
                _is(v, "number")
                and not {
                    "minimum": v >= arg,
                    "maximum": v <= arg,
                    "exclusiveMinimum": v > arg,
                }[word]
            ):
                out.append(f"{at}: {v!r} fails {word} {arg}")
        elif word == "pattern":
            if isinstance(v, str) and not re.search(arg, v):
                out.append(f"{at}: {v!r} does not match {arg}")
        elif word == "minItems":
            if isinstance(v, list) and len(v) < arg:
                out.append(f"{at}: fewer than {arg} items")
        elif word == "minProperties":
            if isinstance(v, dict) and len(v) < arg:
                out.append(f"{at}: fewer than {arg} keys")
        elif word == "items":
            if isinstance(v, list):
                for i, item in enumerate(v):
                    _check(arg, item, f"{at}[{i}]", root, out)
        elif word == "required":
            if isinstance(v, dict):
                out.extend(f"{at}: missing {k!r}" for k in arg if k not in v)
        elif word == "properties":
            if isinstance(v, dict):
                for k, sub in arg.items():
                    if k in v:
                        _check(sub, v[k], f"{at}.{k}", root, out)
        elif word == "additionalProperties":
            if isinstance(v, dict):
                known = s.get("properties", {})
                for k, item in v.items():
                    if k in known:
                        continue
                    if arg is False:
                        out.append(f"{at}: unknown key {k!r}")
                    elif arg is not True:
                        _check(arg, item, f"{at}.{k}", root, out)
        elif word == "propertyNames":
            if isinstance(v, dict):
                for k in v:
                    _check(arg, k, f"{at}.{k} (name)", root, out)
        elif word in ("anyOf", "oneOf", "allOf"):
            results = [errors_in(sub, v, at, root) for sub in arg]
            passed = sum(1 for r in results if not r)
            if word == "allOf":
                for r in results:
                    out.extend(r)
            elif (word == "anyOf" and passed == 0) or (word == "oneOf" and passed != 1):
                best = min(results, key=len)
                out.append(f"{at}: {passed} of {len(arg)} {word} branches fit; e.g. {best}")
        elif word == "not":
            if not errors_in(arg, v, at, root):
                out.append(f"{at}: {v!r} matches a schema it must not")
        else:
            raise AssertionError(f"schema keyword {word!r} is not supported by this checker")


def errors_in(s: dict[str, Any], v: Any, at: str, root: dict[str, Any]) -> list[str]:
    out: list[str] = []
    _check(s, v, at, root, out)
    return out
