"""The Jinja2 half of :mod:`.templates`: the sandbox, compiling, rendering, introspection.

Imported on the first template a workflow holds (a workflow without one never
loads Jinja2); everything else calls :mod:`.templates`, which holds the rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..jsonvalue import dumps
from . import bounds, nesting, rewrite
from . import shell as _shell
from .templates import TemplateError, as_text

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)
MAX_SIZE = bounds.MAX_SIZE
_MAPPING_METHODS = frozenset({"get", "keys", "values", "items"})


def _tojson(value: Any) -> str:
    return dumps(value, ensure_ascii=True)


def _text(value: Any) -> str:
    """:func:`.templates.as_text`, where an undefined name fails (StrictUndefined raises)."""
    return str(value) if isinstance(value, jinja2.Undefined) else as_text(value)


class _Template(jinja2.Template):
    """A compiled template whose ``~`` is bounded like every other way to build text."""

    @classmethod
    def _from_namespace(cls, environment: Any, namespace: Any, globals: Any) -> jinja2.Template:
        namespace["str_join"] = bounds.str_join
        namespace["markup_join"] = _markup_join
        return super()._from_namespace(environment, namespace, globals)


def _markup_join(seq: Any) -> Any:
    items = list(seq)
    bounds.str_join(items)
    return jinja2.runtime.markup_join(items)


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox: mapping items before attributes, every value bounded (:mod:`.bounds`)."""

    template_class = _Template
    intercepted_binops = frozenset({"*", "**", "%", "+", "-"})
    concat = staticmethod(bounds.concat)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        bounds.check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        return bounds.checked(result, f"the result of `{operator}`")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        bounds.step()
        if "caller" in kwargs and not isinstance(__obj, jinja2.runtime.Macro):
            # A {% call %} block writes its callee's result unquoted: only a macro's
            # output is template text and placeholders (see :mod:`.rewrite`).
            raise jinja2.exceptions.SecurityError(
                "{% call %} can only call a macro, and this callee is not one"
            )
        bounds.check_method(__obj, args, kwargs)
        return bounds.checked(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        format_ = super().wrap_str_format(value)
        if format_ is None:
            return None
        template = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> Any:
            bounds.check_format_string(template)
            return bounds.checked(format_(*args, **kwargs))

        return bounded


# Values collected while a shell template renders (one list per render, per thread).
_SHELL_VALUES: ContextVar[list[_shell.Value] | None] = ContextVar("flowrun_shell", default=None)


def _unwrap(text: str, values: list[_shell.Value]) -> str:
    """Put the text of earlier placeholders back (a block captured them)."""

    def back(m: re.Match[str]) -> str:
        n = int(m.group(1))
        return values[n][0] if n < len(values) else m.group(0)

    return _shell.PLACEHOLDER.sub(back, text)


@jinja2.pass_context  # a finalize that needs the context is never run at compile time
def _finalize(context: Any, value: Any) -> str:
    return bounds.emitted(_text(value))


@jinja2.pass_context
def _collect(context: Any, value: Any) -> str:
    values = _SHELL_VALUES.get()
    text = bounds.emitted(_text(value))
    if values is None:  # rendered outside render_shell: plain text
        return text
    words = None
    if isinstance(value, list | tuple):
        words = [_unwrap(_text(v), values) for v in value]
    values.append((_unwrap(text, values), words))
    return f"\x00{len(values) - 1}\x00"


def _block_text(value: Any) -> str:
    """A captured block's text with its values' text put back (see :mod:`.rewrite`)."""
    values = _SHELL_VALUES.get()
    text = str(value)
    return text if values is None else _unwrap(text, values)


def _make_env(finalize: Any) -> _Env:
    env = _Env(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
        optimized=False,  # constant folding is cubic in a filter chain and runs filters early
    )
    env.filters["tojson"] = _tojson
    env.filters["json"] = _tojson
    env.filters = {name: bounds.bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters[rewrite.TEXT] = _block_text
    env.filters[rewrite.STEPS] = bounds.steps
    env.globals["lipsum"] = _lipsum
    return env


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    for what, count in ((f"lipsum({n})", n), (f"lipsum(max={max})", max)):
        if isinstance(count, int) and count * 20 > MAX_SIZE:
            raise bounds.too_big(what)
    return str(jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max))


_ENV = _make_env(_finalize)
_SHELL_ENV = _make_env(_collect)
_GLOBALS = frozenset(_ENV.globals)
FILTERS = frozenset(f for f in _ENV.filters if not f.startswith(rewrite.HIDDEN))
TESTS = frozenset(_ENV.tests)


@dataclass(frozen=True, slots=True)
class Compiled:
    source: str
    expr: Any | None  # compiled native expression, when the string is one {{ expr }}
    template: jinja2.Template | None


def _syntax(exc: jinja2.TemplateSyntaxError, what: str = "template") -> TemplateError:
    return TemplateError(f"{what} syntax error: {exc.message}")


def _parse(env: _Env, source: str) -> nodes.Template:
    """Parse ``source`` after checking how deep it nests, and check the tree too."""
    try:
        nesting.check_tokens(env.lexer.tokeniter(source, None))
        tree = env.parse(source)
        nesting.check_tree(tree)
        return tree
    except nesting.NestingError as exc:
        raise TemplateError(str(exc), hint=nesting.HINT) from None
    except RecursionError:  # pragma: no cover - the checks above come first
        raise TemplateError("template nested too deeply", hint=nesting.HINT) from None


def _condition_source(text: str) -> str:
    m = _SINGLE.match(text)
    expr = m.group("expr") if m else text
    return "{{ " + expr.strip() + " }}"


@lru_cache(maxsize=4096)
def compile_template(text: str, *, shell: bool = False) -> Compiled:
    env = _SHELL_ENV if shell else _ENV
    try:
        m = _SINGLE.match(text)
        if m and not shell and "{{" not in m.group("expr") and "}}" not in m.group("expr"):
            rewrite.rewrite(_parse(env, text), shell=False)  # its checks
            return Compiled(text, env.compile_expression(m.group("expr").strip(), False), None)
        tree = rewrite.rewrite(_parse(env, text), shell=shell)
        return Compiled(text, None, env.from_string(tree))
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax(exc) from None
    except (RecursionError, SyntaxError):  # pragma: no cover - nesting.py refuses these first
        raise TemplateError("template too complex to compile", hint=nesting.HINT) from None
    except rewrite.RewriteError as exc:
        raise TemplateError(str(exc)) from None


@lru_cache(maxsize=4096)
def compile_condition(text: str) -> Any:
    try:
        rewrite.rewrite(_parse(_ENV, _condition_source(text)), shell=False)  # its checks
        return _ENV.compile_expression(_condition_source(text)[3:-3], False)
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax(exc, "condition") from None
    except rewrite.RewriteError as exc:
        raise TemplateError(str(exc)) from None


def _failed(exc: Exception, text: str) -> TemplateError:
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(f"{exc.message} in {text!r}")
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return TemplateError(f"unsafe template {text!r}: {exc}")
    if isinstance(exc, _shell.ShellTemplateError):
        return TemplateError(f"{exc} in {text!r}")
    return TemplateError(f"{type(exc).__name__}: {exc} in {text!r}")


def render(text: str, scope: Mapping[str, Any]) -> Any:
    """:func:`.templates.render` of a template."""
    c = compile_template(text)
    try:
        with bounds.rendering():
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
    """:func:`.templates.render_shell` of a template."""
    c = compile_template(text, shell=True)
    assert c.template is not None
    values: list[_shell.Value] = []
    token = _SHELL_VALUES.set(values)
    try:
        with bounds.rendering():
            script = c.template.render(**scope)
        return _shell.substitute(script, values)
    except Exception as exc:
        raise _failed(exc, text) from None
    finally:
        _SHELL_VALUES.reset(token)


def evaluate(condition: str, scope: Mapping[str, Any]) -> bool:
    """:func:`.templates.evaluate`."""
    try:
        with bounds.rendering():
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


class _Tracker(meta.TrackingCodeGenerator):
    """Jinja2's introspection, without its constant folding (cubic in a filter chain)."""

    def __init__(self, environment: jinja2.Environment) -> None:
        CodeGenerator.__init__(
            self, environment, "<introspection>", "<introspection>", optimized=False
        )
        self.undeclared_identifiers: set[str] = set()


def _undeclared(tree: nodes.Template) -> set[str]:
    tracker = _Tracker(_ENV)
    tracker.visit(tree)
    return tracker.undeclared_identifiers


def references(text: str, *, condition: bool = False) -> tuple[set[str], set[str]]:
    """:func:`.templates.references` (read once per text: a file repeats its templates)."""
    names, keys = _references(text, condition)
    return set(names), set(keys)


@lru_cache(maxsize=4096)
def _references(text: str, condition: bool) -> tuple[frozenset[str], frozenset[str]]:
    try:
        ast = _parse(_ENV, _condition_source(text) if condition else text)
        names = _undeclared(ast) - _GLOBALS
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
    return frozenset(names), frozenset(keys)


def check(text: str, *, shell: bool = False, condition: bool = False) -> tuple[set[str], set[str]]:
    """:func:`.templates.check`."""
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
