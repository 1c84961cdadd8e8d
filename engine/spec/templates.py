"""Jinja2 templates and conditions, sandboxed, with undefined names as errors.

A string that is exactly one ``{{ expr }}`` evaluates to the expression's native
value (a list stays a list); any other string renders to text, where a value
that is not a string is written as JSON (``true``, ``null``, ``[1, 2]``), as
GitHub Actions does. In ``shell:`` commands every substituted value is passed
as data (see :mod:`.shell`), so it can never become code.

``state.key`` always means the state key, even when the key is called ``items``
or ``keys``: mappings answer attribute lookups from their items first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..jsonvalue import dumps
from . import shell as _shell

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)
NAMES = frozenset({"state", "item", "index", "run", "node"})
MAX_SIZE = 1_000_000  # the longest string or list `*` may build; the largest `**` exponent
_MAPPING_METHODS = frozenset({"get", "keys", "values", "items"})
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\d{5,}|\*)")


class TemplateError(Exception):
    """A template that does not compile or fails to render."""


def _tojson(value: Any) -> str:
    return dumps(value, ensure_ascii=True)


def _text(value: Any) -> str:
    """A value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, jinja2.Undefined):
        return str(value)  # StrictUndefined raises here
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, dict | list | tuple):
        try:
            return _tojson(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox, with mapping items before attributes and bounded ``*``, ``**``, ``%``."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_SIZE
                ):
                    raise jinja2.exceptions.SecurityError(
                        f"`*` would build more than {MAX_SIZE} items"
                    )
        elif operator == "**":
            if isinstance(right, int | float) and abs(right) > 1000 and left not in (0, 1, -1):
                raise jinja2.exceptions.SecurityError("exponent too large")
        elif operator == "%" and isinstance(left, str) and _FORMAT_WIDTH.search(left):
            raise jinja2.exceptions.SecurityError("format width too large")
        return super().call_binop(context, operator, left, right)


# Values collected while a shell template renders (one list per render, per thread).
_SHELL_VALUES: ContextVar[list[_shell.Value] | None] = ContextVar("flowrun_shell", default=None)


def _unwrap(text: str, values: list[_shell.Value]) -> str:
    """Put the text of earlier placeholders back (a `{% set %}` block captured them)."""
    return _shell.PLACEHOLDER.sub(lambda m: values[int(m.group(1))][0], text)


@jinja2.pass_context
def _collect(context: Any, value: Any) -> str:
    values = _SHELL_VALUES.get()
    text = _text(value)
    if values is None:  # rendered outside render_shell: plain text
        return text
    words = None
    if isinstance(value, list | tuple):
        words = [_unwrap(_text(v), values) for v in value]
    values.append((_unwrap(text, values), words))
    return f"\x00{len(values) - 1}\x00"


def _make_env(finalize: Any) -> _Env:
    env = _Env(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters["tojson"] = _tojson
    env.filters["json"] = _tojson
    return env


_ENV = _make_env(_text)
_SHELL_ENV = _make_env(_collect)
_GLOBALS = frozenset(_ENV.globals)
FILTERS = frozenset(_ENV.filters)
TESTS = frozenset(_ENV.tests)


@dataclass(frozen=True, slots=True)
class Compiled:
    source: str
    expr: Any | None  # compiled native expression, when the string is one {{ expr }}
    template: jinja2.Template | None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _syntax(exc: jinja2.TemplateSyntaxError, what: str = "template") -> TemplateError:
    return TemplateError(f"{what} syntax error: {exc.message}")


@lru_cache(maxsize=4096)
def compile_template(text: str, *, shell: bool = False) -> Compiled:
    env = _SHELL_ENV if shell else _ENV
    try:
        m = _SINGLE.match(text)
        if m and not shell and "{{" not in m.group("expr") and "}}" not in m.group("expr"):
            return Compiled(text, env.compile_expression(m.group("expr").strip(), False), None)
        return Compiled(text, None, env.from_string(text))
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax(exc) from None


@lru_cache(maxsize=4096)
def compile_condition(text: str) -> Any:
    m = _SINGLE.match(text)
    expr = m.group("expr") if m else text
    try:
        return _ENV.compile_expression(expr.strip(), False)
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax(exc, "condition") from None


def _failed(exc: Exception, text: str) -> TemplateError:
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(f"{exc.message} in {text!r}")
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return TemplateError(f"unsafe template {text!r}: {exc}")
    if isinstance(exc, _shell.ShellTemplateError):
        return TemplateError(f"{exc} in {text!r}")
    return TemplateError(f"{type(exc).__name__}: {exc} in {text!r}")


def render(text: str, scope: Mapping[str, Any], *, shell: bool = False) -> Any:
    """Render ``text``: the native value for a lone ``{{ expr }}``, else a string.

    With ``shell``, the text of a ``/bin/sh -c`` script whose values are data.
    """
    if shell:
        return render_shell(text, scope)
    if not is_template(text):
        return text
    c = compile_template(text)
    try:
        if c.expr is not None:
            value = c.expr(**scope)
            if isinstance(value, jinja2.Undefined):
                str(value)  # raises UndefinedError
            return value
        assert c.template is not None
        return c.template.render(**scope)
    except Exception as exc:
        raise _failed(exc, text) from None


def render_shell(text: str, scope: Mapping[str, Any]) -> str:
    """Render a ``shell:`` command; every value is passed to the shell as data."""
    if "\x00" in text:
        raise TemplateError("a shell command cannot hold a NUL byte")
    if not is_template(text):
        return text
    c = compile_template(text, shell=True)
    assert c.template is not None
    values: list[_shell.Value] = []
    token = _SHELL_VALUES.set(values)
    try:
        script = c.template.render(**scope)
        return _shell.substitute(script, values)
    except Exception as exc:
        raise _failed(exc, text) from None
    finally:
        _SHELL_VALUES.reset(token)


def render_text(text: str, scope: Mapping[str, Any]) -> str:
    return _text(render(text, scope))


def evaluate(condition: str, scope: Mapping[str, Any]) -> bool:
    try:
        value = compile_condition(condition)(**scope)
        if isinstance(value, jinja2.Undefined):
            str(value)
        return bool(value)
    except TemplateError:
        raise
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
        names = set(meta.find_undeclared_variables(ast)) - _GLOBALS
    except jinja2.TemplateSyntaxError as exc:  # TemplateAssertionError too: unknown filter
        raise _syntax(exc, "condition" if condition else "template") from None
    callees = {id(call.node) for call in ast.find_all(nodes.Call)}
    keys: set[str] = set()
    for node in ast.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "state":
            if id(node) in callees and node.attr in _MAPPING_METHODS:
                continue  # state.get('k'), state.items(): read below, or not a key
            keys.add(node.attr)
    for item in ast.find_all(nodes.Getitem):
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == "state"
            and isinstance(item.arg, nodes.Const)
            and isinstance(item.arg.value, str)
        ):
            keys.add(item.arg.value)
    for call in ast.find_all(nodes.Call):
        f = call.node
        if (
            isinstance(f, nodes.Getattr)
            and isinstance(f.node, nodes.Name)
            and f.node.name == "state"
            and f.attr == "get"
            and call.args
            and isinstance(call.args[0], nodes.Const)
            and isinstance(call.args[0].value, str)
        ):
            keys.add(call.args[0].value)
    return names, keys


def check(text: str, *, shell: bool = False, condition: bool = False) -> tuple[set[str], set[str]]:
    """Compile ``text`` as it will run (unknown filters and tests fail here too).

    Returns :func:`references`; raises :class:`TemplateError`.
    """
    names, keys = references(text, condition=condition)
    if condition:
        compile_condition(text)
    else:
        compile_template(text, shell=shell)
        if shell:
            try:
                _shell.check(text)
            except _shell.ShellTemplateError as exc:
                raise TemplateError(str(exc)) from None
    return names, keys
