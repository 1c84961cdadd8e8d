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
- ``{% call %}``, ``{% block %}`` and macros write what their bodies wrote:
  template text and placeholders, nothing else. ``caller()``, ``self.b()``,
  ``super()`` and ``m()`` used in ``{{ }}`` are outputs like any other.
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


def _text_first(chain: nodes.Filter | None, lineno: int) -> nodes.Filter:
    """A block filter chain that first puts the body's placeholders back."""
    if chain is None:
        return _hidden_filter(TEXT, None, lineno)
    innermost = chain
    while isinstance(innermost.node, nodes.Filter):
        innermost = innermost.node
    if innermost.node is None:
        innermost.node = _hidden_filter(TEXT, None, lineno)
    return chain


def rewrite(tree: nodes.Template, *, shell: bool) -> nodes.Template:
    """Check and rewrite ``tree`` in place; raises :class:`RewriteError`."""
    counter = itertools.count()
    for node in list(tree.find_all(nodes.Node)):
        for kind, tag in _LOADING.items():
            if isinstance(node, kind):
                raise RewriteError(f"{tag} is not supported: a template is one string", node.lineno)
        if isinstance(node, nodes.Name) and node.name.startswith(HIDDEN):
            raise RewriteError(f"names starting with {HIDDEN!r} are reserved", node.lineno)
        if isinstance(node, nodes.For) and isinstance(node.iter, nodes.Expr):
            node.iter = _hidden_filter(STEPS, node.iter, node.lineno)
        if not shell:
            continue
        if isinstance(node, nodes.Stmt) and not isinstance(node, _SHELL_STATEMENTS):
            raise RewriteError(
                f"{{% {type(node).__name__.lower()} %}} cannot be used in a shell command",
                node.lineno,
            )
        if isinstance(node, nodes.AssignBlock):
            node.filter = _text_first(node.filter, node.lineno)
    if shell:
        _values_from_filter_blocks(tree, counter)
    return tree


def _values_from_filter_blocks(tree: nodes.Node, counter: itertools.count[int]) -> None:
    """Replace each ``{% filter %}`` block by a ``{% set %}`` block and one output."""
    for node in [tree, *tree.find_all(nodes.Node)]:
        for field in node.fields:
            body = getattr(node, field)
            if not isinstance(body, list) or not any(
                isinstance(n, nodes.FilterBlock) for n in body
            ):
                continue
            out: list[nodes.Node] = []
            for child in body:
                if not isinstance(child, nodes.FilterBlock):
                    out.append(child)
                    continue
                name = f"{HIDDEN}block_{next(counter)}"
                line = child.lineno
                target = nodes.Name(name, "store", lineno=line)
                text = _hidden_filter(TEXT, None, line)
                out.append(nodes.AssignBlock(target, text, child.body, lineno=line))
                innermost = child.filter
                while isinstance(innermost.node, nodes.Filter):
                    innermost = innermost.node
                innermost.node = nodes.Name(name, "load", lineno=line)
                out.append(nodes.Output([child.filter], lineno=line))
            body[:] = out  # in place: a block moved into an AssignBlock keeps its list
