"""How deep a template may nest: refused before it is parsed or compiled.

Jinja2 parses and compiles templates recursively and compiles them to Python,
which has its own limits (200 nested parentheses, 20 nested loops, 100
indentation levels). A template past them fails with ``RecursionError`` or
``SyntaxError`` from deep inside Jinja2. Both walks here are iterative and
linear in the template, so every such template is a :class:`NestingError`
naming the line and the limit instead.

- :func:`check_tokens` runs on the token stream, before parsing: brackets
  (plus runs of prefix ``not``/``-``/``+``) and block tags.
- :func:`check_tree` runs on the parsed tree, before compiling: the depth of
  expressions, where a filter chain ``x | f | g`` or ``a + b + c`` nests one level
  per link without any bracket.
"""

from __future__ import annotations

from collections.abc import Iterable

from jinja2 import nodes

MAX_EXPRESSION = 40  # brackets, prefix operators, filter-chain links, operands
MAX_BLOCKS = 16  # {% if %}, {% for %}, {% macro %}, ... inside each other

_OPENERS = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape", "set"})
_OPEN = frozenset({"(", "[", "{"})
_CLOSE = frozenset({")", "]", "}"})
_PREFIX = frozenset({"-", "+"})
HINT = "split it up: compute parts with {% set %} or in a python node"


class NestingError(Exception):
    """A template nests deeper than Jinja2 or Python can compile."""

    def __init__(self, what: str, limit: int, line: int) -> None:
        super().__init__(f"{what} nested deeper than {limit} (template line {line})")
        self.line = line


def check_tokens(tokens: Iterable[tuple[int, str, str]]) -> None:
    """Refuse too-deep brackets and block tags in a raw token stream."""
    brackets = prefix = blocks = 0
    tag: list[tuple[int, str, str]] | None = None  # the tokens of the current {% %}
    prefix_position = True
    for line, kind, value in tokens:
        if kind == "whitespace":
            continue
        if kind == "block_begin":
            tag = []
            continue
        if kind == "block_end" and tag is not None:
            name = tag[0][2] if tag and tag[0][1] == "name" else ""
            inline_set = name == "set" and any(t[1:] == ("operator", "=") for t in tag)
            if name in _OPENERS and not inline_set:
                blocks += 1
                if blocks > MAX_BLOCKS:
                    raise NestingError("blocks", MAX_BLOCKS, line)
            elif name.startswith("end"):
                blocks = max(0, blocks - 1)
            tag = None
        elif tag is not None:
            tag.append((line, kind, value))
        if kind in ("variable_begin", "block_begin", "variable_end", "block_end"):
            brackets = prefix = 0
            prefix_position = True
            continue
        is_prefix = prefix_position and (
            (kind == "operator" and value in _PREFIX) or (kind == "name" and value == "not")
        )
        prefix = prefix + 1 if is_prefix else 0
        if kind == "operator" and value in _OPEN:
            brackets += 1
        elif kind == "operator" and value in _CLOSE:
            brackets = max(0, brackets - 1)
        if brackets + prefix > MAX_EXPRESSION:
            raise NestingError("an expression", MAX_EXPRESSION, line)
        prefix_position = (kind == "operator" and value not in _CLOSE) or is_prefix
        prefix_position = prefix_position or (kind == "name" and value in ("not", "and", "or"))


def check_tree(tree: nodes.Template) -> None:
    """Refuse expressions nested deeper than :data:`MAX_EXPRESSION` (iteratively)."""
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, nodes.Expr):
            depth += 1
            if depth > MAX_EXPRESSION:
                raise NestingError("an expression", MAX_EXPRESSION, node.lineno)
        elif isinstance(node, nodes.Stmt | nodes.Template):
            depth = 0
        stack.extend((child, depth) for child in node.iter_child_nodes())
