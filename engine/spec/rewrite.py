"""Rewrites of a parsed template before it compiles.

Every template: each ``{% for %}`` loop's items pass through a hidden filter that
charges them to the render's step budget (:mod:`.bounds`).

A ``shell:`` template is rendered with each ``{{ }}`` output replaced by a
placeholder, which :mod:`.shell` turns into a quoted variable. Jinja2 has other
ways to emit text, and each is either made a value here or refused:

- ``{% filter f(...) %}body{% endfilter %}`` writes ``f(body)`` unfinalized, so
  its arguments (``replace("T", state.title)``) would become code. It is rewritten
  to ``{% set tmp %}body{% endset %}{{ tmp | f(...) }}``: the whole result is one
  value.
- ``{% set x %}body{% endset %}`` captures the body's text with the
  placeholders put back, so filters on it see the real text; ``{{ x }}`` is a value.
  With filters (``{% set x | f(a) %}``) it is split the same way, in every template,
  because Jinja2 does not resolve names used in a block's filter arguments.
- ``{% block %}`` and macros write what their bodies wrote: template text and
  placeholders, nothing else. ``caller()``, ``self.b()``, ``super()`` and ``m()``
  used in ``{{ }}`` are outputs like any other.
- ``{% call f(...) %}`` writes what ``f`` returns, unfinalized, so ``f`` must be a
  macro: in every template its callee must name a macro defined in the template
  (or ``caller``), and at render time :class:`~.sandbox._Env` refuses a call
  block on anything that is not a macro (a name rebound by ``{% set %}``).
- ``{% include %}``, ``{% import %}``, ``{% extends %}`` (no loader) and any
  statement not listed in :data:`_SHELL_STATEMENTS` are refused at validate time.
"""

from __future__ import annotations

import itertools

from jinja2 import nodes

TEXT = "_flowrun_text"  # hidden filter: a block's placeholders back to their text
STEPS = "_flowrun_steps"  # hidden filter: a loop's items, charged to the render
HIDDEN = "_flowrun_"

# Statements whose output is only what their bodies output, or nothing.
_SHELL_STATEMENTS: tuple[type[nodes.Node], ...] = (
    nodes.Output,
    nodes.If,
    nodes.For,
    nodes.Macro,
    nodes.CallBlock,
    nodes.Assign,
    nodes.AssignBlock,
    nodes.With,
    nodes.Scope,
    nodes.OverlayScope,
    nodes.ScopedEvalContextModifier,
    nodes.EvalContextModifier,
    nodes.Block,
    nodes.FilterBlock,  # rewritten below
)
_LOADING = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
}


class RewriteError(Exception):
    """A construct a template cannot use, with its line in the template."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"{message} (template line {line})")


def _hidden_filter(name: str, node: nodes.Expr | None, lineno: int) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=lineno)


def rewrite(tree: nodes.Template, *, shell: bool) -> nodes.Template:
    """Check and rewrite ``tree`` in place; raises :class:`RewriteError`."""
    macros = {m.name for m in tree.find_all(nodes.Macro)} | {"caller"}
    for node in list(tree.find_all(nodes.Node)):
        for kind, tag in _LOADING.items():
            if isinstance(node, kind):
                raise RewriteError(f"{tag} is not supported: a template is one string", node.lineno)
        if isinstance(node, nodes.Name) and node.name.startswith(HIDDEN):
            raise RewriteError(f"names starting with {HIDDEN!r} are reserved", node.lineno)
        if isinstance(node, nodes.Getitem) and _scalar(node.node):
            raise RewriteError("a number, boolean or none has no items to index", node.lineno)
        if isinstance(node, nodes.CallBlock) and not _calls_a_macro(node, macros):
            raise RewriteError(
                "{% call %} can only call a macro defined in this template", node.lineno
            )
        if isinstance(node, nodes.For) and isinstance(node.iter, nodes.Expr):
            node.iter = _hidden_filter(STEPS, node.iter, node.lineno)
        if shell and isinstance(node, nodes.Stmt) and not isinstance(node, _SHELL_STATEMENTS):
            raise RewriteError(
                f"{{% {type(node).__name__.lower()} %}} cannot be used in a shell command",
                node.lineno,
            )
    _split_blocks(tree, shell=shell)
    return tree


def _calls_a_macro(block: nodes.CallBlock, macros: set[str]) -> bool:
    callee = block.call.node
    return isinstance(callee, nodes.Name) and callee.name in macros


def _scalar(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Const) and not isinstance(node.value, str | bytes)


def _applied_to(chain: nodes.Filter, name: str, line: int) -> nodes.Filter:
    """``chain`` (a block's filters, innermost taking the body) applied to variable ``name``."""
    innermost = chain
    while isinstance(innermost.node, nodes.Filter):
        innermost = innermost.node
    innermost.node = nodes.Name(name, "load", lineno=line)
    return chain


def _split_blocks(tree: nodes.Template, *, shell: bool) -> None:
    """Capture block bodies with a plain ``{% set %}``; apply the filters in an expression.

    ``{% set x | f(a) %}body{% endset %}`` becomes ``{% set tmp %}body{% endset %}
    {% set x = tmp | f(a) %}`` (Jinja2 does not resolve names in a block's filter
    arguments). In a shell template, ``{% filter f(a) %}body{% endfilter %}``
    becomes ``{% set tmp %}body{% endset %}{{ tmp | f(a) }}`` and every captured body
    has its values' text put back (:data:`TEXT`).
    """
    counter = itertools.count()
    for node in [tree, *tree.find_all(nodes.Node)]:
        for field in node.fields:
            body = getattr(node, field)
            if not isinstance(body, list) or not any(
                isinstance(n, nodes.AssignBlock | nodes.FilterBlock) for n in body
            ):
                continue
            out: list[nodes.Node] = []
            for child in body:
                is_filter_block = shell and isinstance(child, nodes.FilterBlock)
                if not (is_filter_block or isinstance(child, nodes.AssignBlock)):
                    out.append(child)
                    continue
                line = child.lineno
                chain = child.filter
                if isinstance(child, nodes.AssignBlock) and chain is None:
                    if shell:
                        child.filter = _hidden_filter(TEXT, None, line)
                    out.append(child)
                    continue
                assert chain is not None
                name = f"{HIDDEN}block_{next(counter)}"
                text = _hidden_filter(TEXT, None, line) if shell else None
                target = nodes.Name(name, "store", lineno=line)
                out.append(nodes.AssignBlock(target, text, child.body, lineno=line))
                value = _applied_to(chain, name, line)
                if isinstance(child, nodes.AssignBlock):
                    out.append(nodes.Assign(child.target, value, lineno=line))
                else:
                    out.append(nodes.Output([value], lineno=line))
            body[:] = out  # in place: a body moved into an AssignBlock keeps its list
