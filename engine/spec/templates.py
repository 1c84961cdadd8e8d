"""Jinja2 templates and conditions, sandboxed, with undefined names as errors.

A string that is exactly one ``{{ expr }}`` evaluates to the expression's native
value (a list stays a list); any other string renders to text. In ``shell:``
commands every substituted value is shell-quoted, so data can never become code.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)
NAMES = frozenset({"state", "item", "index", "run", "node"})


class TemplateError(Exception):
    """A template that does not compile or fails to render."""


def _tojson(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _make_env(finalize: Any = None) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters["tojson"] = _tojson
    env.filters["json"] = _tojson
    return env


def _shell_quote(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(shlex.quote(_text(v)) for v in value)
    return shlex.quote(_text(value))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return _tojson(value)
    return str(value)


_ENV = _make_env(finalize=None)
_SHELL_ENV = _make_env(finalize=_shell_quote)


@dataclass(frozen=True, slots=True)
class Compiled:
    source: str
    expr: Any | None  # compiled native expression, when the string is one {{ expr }}
    template: jinja2.Template | None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


@lru_cache(maxsize=4096)
def compile_template(text: str, *, shell: bool = False) -> Compiled:
    env = _SHELL_ENV if shell else _ENV
    try:
        m = _SINGLE.match(text)
        if m and not shell and "{{" not in m.group("expr") and "}}" not in m.group("expr"):
            return Compiled(text, env.compile_expression(m.group("expr").strip(), False), None)
        return Compiled(text, None, env.from_string(text))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None


@lru_cache(maxsize=4096)
def compile_condition(text: str) -> Any:
    m = _SINGLE.match(text)
    expr = m.group("expr") if m else text
    try:
        return _ENV.compile_expression(expr.strip(), False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"condition syntax error: {exc.message}") from None


def render(text: str, scope: Mapping[str, Any], *, shell: bool = False) -> Any:
    """Render ``text``: the native value for a lone ``{{ expr }}``, else a string."""
    if not is_template(text):
        return text
    c = compile_template(text, shell=shell)
    try:
        if c.expr is not None:
            value = c.expr(**scope)
            if isinstance(value, jinja2.Undefined):
                str(value)  # raises UndefinedError
            return value
        assert c.template is not None
        return c.template.render(**scope)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{exc.message} in {text!r}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"unsafe template {text!r}: {exc}") from None
    except Exception as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc} in {text!r}") from None


def render_text(text: str, scope: Mapping[str, Any]) -> str:
    value = render(text, scope)
    return value if isinstance(value, str) else _text(value)


def evaluate(condition: str, scope: Mapping[str, Any]) -> bool:
    try:
        value = compile_condition(condition)(**scope)
        if isinstance(value, jinja2.Undefined):
            str(value)
        return bool(value)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{exc.message} in condition {condition!r}") from None
    except Exception as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc} in condition {condition!r}") from None


def _ast(text: str, *, condition: bool) -> nodes.Template:
    if condition:
        m = _SINGLE.match(text)
        expr = m.group("expr") if m else text
        return _ENV.parse("{{ " + expr.strip() + " }}")
    return _ENV.parse(text)


def references(text: str, *, condition: bool = False) -> tuple[set[str], set[str]]:
    """Top-level names a template uses, and the ``state.X`` keys it reads.

    Raises :class:`TemplateError` on a syntax error.
    """
    try:
        ast = _ast(text, condition=condition)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"syntax error: {exc.message}") from None
    names = set(meta.find_undeclared_variables(ast))
    keys: set[str] = set()
    for node in ast.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "state":
            keys.add(node.attr)
    for item in ast.find_all(nodes.Getitem):
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == "state"
            and isinstance(item.arg, nodes.Const)
            and isinstance(item.arg.value, str)
        ):
            keys.add(item.arg.value)
    return names, keys
