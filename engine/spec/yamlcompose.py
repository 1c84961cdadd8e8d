"""Composing a YAML document into PyYAML's node graph, within bounds.

Nothing is constructed, so no tag can execute code. Where PyYAML has libyaml, its
C parser reads the events (with the same line/column marks) and only the composing
is Python; a file the C parser refuses is composed again by the pure-Python parser,
whose messages flowrun shows, so an error reads the same with or without libyaml.

The bounds keep hostile files cheap to reject: the number of aliases, the nesting
depth, and the number of values the document would expand to once aliases are
followed (:func:`measure`, on the node graph before anything is built, which is
what stops a "billion laughs" file at once). A bound reached is :class:`Refused`,
which :mod:`.yamlpos` turns into an error at its place.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_VALUES = 100_000


class Refused(Exception):
    """A bound was hit while composing; carries where."""

    def __init__(self, mark: Any, what: str, hint: str) -> None:
        super().__init__(what)
        self.mark = mark
        self.what = what
        self.hint = hint


class _Bounds:
    """Composes only (never constructs), counting aliases, depth and nodes as it goes.

    Mixed in before a loader's composer, whichever parser feeds it events.
    """

    aliases_seen = 0
    nodes_seen = 0
    depth = 0

    def count(self, event: Any, alias: bool) -> None:
        """Count the node ``event`` starts (an alias if ``alias``) against the bounds."""
        if alias:
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                raise Refused(
                    event.start_mark,
                    f"more than {MAX_ALIASES} YAML aliases",
                    "expand the anchors by hand; flowrun bounds aliases",
                )
        else:
            self.nodes_seen += 1
            if self.nodes_seen > MAX_VALUES:
                raise Refused(
                    event.start_mark,
                    f"more than {MAX_VALUES} YAML values",
                    "a workflow is a small graph; keep large data in files it reads",
                )
        if self.depth >= MAX_DEPTH:
            raise Refused(
                event.start_mark,
                f"YAML nested more than {MAX_DEPTH} levels deep",
                "flatten the structure",
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[attr-defined]
        self.count(event, isinstance(event, yaml.AliasEvent))
        self.depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self.depth -= 1


class _BoundedLoader(_Bounds, yaml.SafeLoader):
    """PyYAML's pure-Python reader, scanner and parser: the one whose errors are shown."""


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastLoader(
        _Bounds,
        yaml.composer.Composer,
        CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """libyaml's C parser feeding the Python composer: the same nodes, ~10x sooner.

        It composes the files :mod:`.yamlpos` does not build from events (anchors,
        aliases, tags, merge keys), and sends a file it refuses to the pure-Python
        loader for its message."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self.resolved: dict[str, str] = {}

        def compose_node(self, parent: Any, index: Any) -> Any:
            """PyYAML's ``Composer.compose_node`` and the bounds of :class:`_Bounds` in one
            call per node: the same checks in the same order, the
            same nodes. The safe loader has no path resolvers (a scalar's tag depends on
            its text alone), so none is kept. A composer error is raised as PyYAML's; the
            file is then read again by the pure-Python loader for its message."""
            event: Any = self.get_event()  # one of yaml.events' classes
            kind = type(event)
            self.count(event, kind is yaml.AliasEvent)
            anchor = event.anchor
            if kind is yaml.AliasEvent:
                if anchor not in self.anchors:
                    raise yaml.composer.ComposerError(
                        None, None, f"found undefined alias {anchor!r}", event.start_mark
                    )
                return self.anchors[anchor]
            if anchor is not None and anchor in self.anchors:
                raise yaml.composer.ComposerError(
                    f"found duplicate anchor {anchor!r}; first occurrence",
                    self.anchors[anchor].start_mark,
                    "second occurrence",
                    event.start_mark,
                )
            tag = event.tag
            node: Any
            if kind is yaml.ScalarEvent:
                if tag is None or tag == "!":
                    tag = self._scalar_tag(event.value, event.implicit)
                node = yaml.ScalarNode(
                    tag, event.value, event.start_mark, event.end_mark, style=event.style
                )
                if anchor is not None:
                    self.anchors[anchor] = node
                return node
            if kind is yaml.SequenceStartEvent:
                if tag is None or tag == "!":
                    tag = self.resolve(yaml.SequenceNode, None, event.implicit)  # type: ignore[no-untyped-call]
                node = yaml.SequenceNode(
                    tag, [], event.start_mark, None, flow_style=event.flow_style
                )
                end: type[Any] = yaml.SequenceEndEvent
            else:  # a mapping: the parser gives nothing else here
                if tag is None or tag == "!":
                    tag = self.resolve(yaml.MappingNode, None, event.implicit)  # type: ignore[no-untyped-call]
                node = yaml.MappingNode(
                    tag, [], event.start_mark, None, flow_style=event.flow_style
                )
                end = yaml.MappingEndEvent
            if anchor is not None:
                self.anchors[anchor] = node
            self.depth += 1
            try:
                items = node.value
                if end is yaml.SequenceEndEvent:
                    while not self.check_event(end):
                        items.append(self.compose_node(node, len(items)))
                else:
                    while not self.check_event(end):
                        key = self.compose_node(node, None)
                        items.append((key, self.compose_node(node, key)))
            finally:
                self.depth -= 1
            end_event: Any = self.get_event()
            node.end_mark = end_event.end_mark
            return node

        def _scalar_tag(self, value: str, implicit: Any) -> str:
            """An untagged scalar's tag, remembered by text (a file repeats its words)."""
            if not implicit[0]:
                return self.resolve(yaml.ScalarNode, value, implicit)  # type: ignore[no-any-return, no-untyped-call]
            tag = self.resolved.get(value)
            if tag is None:
                tag = self.resolved[value] = self.resolve(yaml.ScalarNode, value, implicit)  # type: ignore[no-untyped-call]
            return tag


def compose(text: str, libyaml: bool) -> tuple[Any, yaml.SafeLoader]:
    """The root node of ``text`` and the loader that composed it (for its constructor).

    libyaml (if ``libyaml``: PyYAML has it and the text has no control character)
    composes a file it accepts; a file it refuses (bad syntax) is composed again by
    PyYAML's own parser, which raises the error flowrun words. The bounds are the
    same on both paths.
    """
    if libyaml:
        fast = _FastLoader(text)
        try:
            return fast.get_single_node(), fast  # type: ignore[return-value]
        except yaml.YAMLError:
            pass  # read again below, for PyYAML's message at its place
        finally:
            fast.dispose()
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here
    except yaml.reader.ReaderError as exc:
        raise Unprintable(exc) from None
    try:
        return loader.get_single_node(), loader
    finally:
        loader.dispose()


class Unprintable(Exception):
    """The reader found a character YAML does not allow; carries PyYAML's error."""

    def __init__(self, exc: yaml.reader.ReaderError) -> None:
        self.exc = exc


def measure(root: Any) -> None:
    """Reject a node graph whose expansion is too big, too deep or recursive.

    Each distinct node is measured once (aliases share nodes), so this costs the
    size of the file, not of its expansion.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    open_: set[int] = set()

    def visit(node: Any, depth: int) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is None:
            if id(node) in open_:
                raise Refused(node.start_mark, "a YAML alias refers to itself", "remove the cycle")
            open_.add(id(node))
            size, height = 1, 1
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            for child in children:
                s, h = visit(child, depth + 1)
                size += s
                height = max(height, h + 1)
                if size > MAX_VALUES:
                    break
            open_.discard(id(node))
            known = sizes[id(node)] = (size, height)
        if depth + known[1] > MAX_DEPTH:
            raise Refused(
                node.start_mark,
                f"YAML nested more than {MAX_DEPTH} levels deep once aliases are expanded",
                "flatten the structure",
            )
        if known[0] > MAX_VALUES:
            raise Refused(
                node.start_mark,
                f"document expands to more than {MAX_VALUES} values (an alias bomb?)",
                "flowrun bounds the expanded size of a workflow file",
            )
        return known

    visit(root, 0)
