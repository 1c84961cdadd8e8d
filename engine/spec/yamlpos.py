"""Safe, bounded YAML loading that remembers where every key and value came from.

The common workflow file (mappings, lists and untagged scalars, no anchors) is
built straight from libyaml's events (:class:`_Direct`). Any other file, and every
error, is composed within bounds into PyYAML's node graph (:mod:`.yamlcompose`:
nothing is constructed, so no tag can execute code) and turned into plain Python
values by hand (:class:`_Builder`); both give the same values at the same
positions, and an error reads the same with or without libyaml.

Every value is one JSON can hold: a scalar that does not fit its tag (``!!int
abc``), a NaN or infinite float, a number past Python's digit limit or a lone
surrogate escape is an error at its line and column, as are control characters
and bytes that are not UTF-8 (:func:`decode`). A file is at most
:data:`MAX_BYTES`; the bounds on aliases, depth and values are
:mod:`.yamlcompose`'s.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import WorkflowError
from .yamlcompose import (
    MAX_ALIASES,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_VALUES,
    Refused,
    Unprintable,
    compose,
    measure,
)

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "Document",
    "Path",
    "Pos",
    "Positions",
    "decode",
    "dotted",
    "load",
    "show_tag",
]

Path = tuple[str | int, ...]
_PLAIN_KEY = re.compile(r"^[\w-]+$")

_YAML = "tag:yaml.org,2002:"
_STR = _YAML + "str"
_SEQ = _YAML + "seq"
_MAP = _YAML + "map"
_MERGE = _YAML + "merge"
_TIMESTAMP = _YAML + "timestamp"
_INT = _YAML + "int"
_NULL = _YAML + "null"
_SCALARS = {_STR, _INT, _YAML + "float", _YAML + "bool", _NULL, _TIMESTAMP}
_NULL_WORDS = ("", "~", "null", "Null", "NULL")

if yaml.__with_libyaml__:
    from yaml._yaml import CParser


@dataclass(frozen=True, slots=True)
class Pos:
    line: int  # 1-based
    column: int  # 1-based


def dotted(path: Path) -> str:
    """``("nodes", "a", "routes", 0, "to")`` → ``nodes.a.routes[0].to``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not _PLAIN_KEY.match(p):
            out += f"[{json.dumps(p, ensure_ascii=False)}]"  # keeps the message on one line
        else:
            out += f".{p}" if out else p
    return out


class Positions(Mapping[Path, Pos]):
    """Where each value (or key) of a document starts, by path.

    Kept as the parser's marks (``marks``, which the builder fills) and read as
    :class:`Pos` on lookup: a load notes about twenty per node, and only an error
    reads one.
    """

    __slots__ = ("marks",)

    def __init__(self) -> None:
        self.marks: dict[Path, Any] = {}

    def __getitem__(self, path: Path) -> Pos:
        return _pos(self.marks[path])

    def __contains__(self, path: object) -> bool:
        return path in self.marks

    def __iter__(self) -> Iterator[Path]:
        return iter(self.marks)

    def __len__(self) -> int:
        return len(self.marks)


@dataclass(slots=True)
class Document:
    """A loaded YAML document: its data and the position of every value and key."""

    file: str
    data: Any
    values: Positions = field(default_factory=Positions)
    keys: Positions = field(default_factory=Positions)

    def where(self, path: Path, *, key: bool = False) -> Pos | None:
        """The position of ``path`` (its key if ``key``), else of its nearest ancestor."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if key and p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get(())

    def error(
        self,
        path: Path,
        message: str,
        *,
        key: bool = False,
        hint: str | None = None,
        label: Path | None = None,
    ) -> WorkflowError:
        """An error at ``path``; the message is prefixed with ``label`` (default ``path``)."""
        pos = self.where(path, key=key)
        name = dotted(path) or None
        prefix = dotted(path if label is None else label)
        return WorkflowError(
            f"{prefix}: {message}" if prefix else message,
            file=self.file,
            line=pos.line if pos else None,
            column=pos.column if pos else None,
            key=name,
            hint=hint,
        )


def _pos(mark: Any) -> Pos:
    return Pos(mark.line + 1, mark.column + 1)


def _refuse(file: str, mark: Any, what: str, hint: str | None = None) -> WorkflowError:
    p = _pos(mark) if mark is not None else None
    return WorkflowError(
        what,
        file=file,
        line=p.line if p else None,
        column=p.column if p else None,
        hint=hint,
    )


def show_tag(tag: str) -> str:
    """A tag as the user wrote it: ``!!python/name:os.system``, ``!custom``."""
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


def load(text: str, file: str) -> Document:
    """Compose ``text`` within the bounds and build plain values with their positions."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise WorkflowError(
            f"file is {size} bytes, more than the {MAX_BYTES // 1024} KiB a workflow may be",
            file=file,
            line=1,
            column=1,
            hint="a workflow is a small graph; keep large data in files it reads",
        )
    libyaml = yaml.__with_libyaml__ and not yaml.reader.Reader.NON_PRINTABLE.search(text)
    if libyaml:
        doc = _Direct(file).read(text)
        if doc is not None:
            return doc
    try:
        root, loader = compose(text, libyaml)
        if loader.aliases_seen:  # type: ignore[attr-defined]
            measure(root)  # without aliases, composing already bounded size and depth
    except Unprintable as exc:
        raise _unprintable(file, text, exc.exc) from None
    except Refused as exc:
        raise _refuse(file, exc.mark, exc.what, exc.hint) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context and "expected a single document" in exc.context:
            raise _refuse(
                file,
                mark,
                "invalid YAML: a workflow file holds one document, this one has more",
                "remove the second `---` and what follows it",
            ) from None
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        raise _refuse(file, mark, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise WorkflowError(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise WorkflowError("YAML nested too deeply", file=file) from None
    if root is None:
        raise WorkflowError(
            "the file is empty",
            file=file,
            line=1,
            column=1,
            hint="a workflow needs at least `name:` and `nodes:`",
        )
    doc = Document(file=file, data=None)
    doc.data = _Builder(doc, loader).build(root, ())
    return doc


def decode(raw: bytes, file: str) -> str:
    """A workflow file's bytes as text; bytes that are not UTF-8 are an error at their place."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        hint = "save the file as UTF-8"
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            hint = "the file looks like UTF-16: save it as UTF-8"
        raise WorkflowError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            file=file,
            line=raw.count(b"\n", 0, exc.start) + 1,
            column=len(raw[start : exc.start].decode("utf-8", "replace")) + 1,
            hint=hint,
        ) from None


def _unprintable(file: str, text: str, exc: yaml.reader.ReaderError) -> WorkflowError:
    """The reader found a character YAML does not allow (NUL, BEL, DEL, C1 controls...)."""
    at = exc.position
    start = text.rfind("\n", 0, at) + 1
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return WorkflowError(
        f"the file holds the control character U+{code:04X}, which YAML does not allow",
        file=file,
        line=text.count("\n", 0, at) + 1,
        column=at - start + 1,
        hint=f'remove it; inside a double-quoted string write it as "\\x{code:02x}"'
        if code < 0x100
        else "remove it",
    )


class _Builder:
    def __init__(self, doc: Document, loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.loader = loader

    def _fail(self, node: Any, path: Path, message: str, hint: str | None = None) -> WorkflowError:
        p = _pos(node.start_mark)
        prefix = dotted(path)
        return WorkflowError(
            f"{prefix}: {message}" if prefix else message,
            file=self.doc.file,
            line=p.line,
            column=p.column,
            key=prefix or None,
            hint=hint,
        )

    def _tag(self, node: Any, path: Path) -> WorkflowError:
        tag = show_tag(node.tag)
        hint = "remove the tag"
        if tag.startswith("!!python"):
            hint = "flowrun loads YAML safely; Python tags are never executed"
        return self._fail(node, path, f"unsupported YAML tag {tag}", hint)

    def build(self, node: Any, path: Path) -> Any:
        self.doc.values.marks.setdefault(path, node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self._tag(node, path)
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                raise self._tag(node, path)
            return self._mapping(node, path)
        raise self._fail(node, path, "unsupported YAML node")  # pragma: no cover

    def _scalar(self, node: Any, path: Path) -> Any:
        """A scalar as its tag reads it, if JSON can hold it; else an error at its place."""
        if node.tag not in _SCALARS:
            raise self._tag(node, path)
        text = node.value
        if node.tag == _STR:
            return self._unicode(node, path, text)
        tag = show_tag(node.tag)
        shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
        if node.tag == _INT and len(text) > sys.get_int_max_str_digits():
            raise self._fail(
                node,
                path,
                f"a number with more than {sys.get_int_max_str_digits()} digits",
                "quote it to keep it as text",
            )
        bad = (node.tag == _NULL and text not in _NULL_WORDS) or (
            node.tag == _TIMESTAMP and not self.loader.timestamp_regexp.match(text)
        )
        if not bad:
            try:
                value = self.loader.construct_object(node, deep=True)
            except (ValueError, KeyError, IndexError, TypeError, ArithmeticError):
                bad = True
        if bad:
            raise self._fail(
                node, path, f"{shown} is not a valid {tag}", f"write a {tag} value, or drop the tag"
            )
        if node.tag == _TIMESTAMP:
            return str(text)  # a date as written: JSON has no date type
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail(
                node,
                path,
                f"{text} is not a JSON number (JSON has no NaN/Infinity)",
                "quote it to keep it as text, or write a finite number",
            )
        return value

    def _unicode(self, node: Any, path: Path, text: str) -> str:
        """``text`` with escaped surrogate pairs joined; a lone surrogate is an error."""
        if text.isascii():
            return text
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
        try:  # YAML reads "\ud83d\ude00" as two halves; joined, they are one character
            return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            lone = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
            raise self._fail(
                node,
                path,
                f"lone surrogate \\u{ord(lone):04x} is not valid Unicode",
                "write the character itself, or \\U and its eight-digit code point",
            ) from None

    def _mapping(self, node: Any, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged = self.build(value_node, path)
                sources = merged if isinstance(merged, list) else [merged]
                for src in sources:
                    if not isinstance(src, dict):
                        raise self._fail(value_node, path, "a merge key (<<) needs a mapping")
                    for k, v in src.items():
                        out.setdefault(k, v)
                continue
            if key_node.tag not in _SCALARS | {_SEQ, _MAP}:
                raise self._tag(key_node, path)
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._fail(key_node, path, "mapping keys must be plain scalars")
            # A key is the text as written: `on:` is the name "on", `1:` the name "1".
            key = self._unicode(key_node, path, str(key_node.value))
            if key in explicit:
                raise self._fail(key_node, path, f"duplicate key {key!r}", "remove one of the two")
            explicit.add(key)
            self.doc.keys.marks[(*path, key)] = key_node.start_mark
            out[key] = self.build(value_node, (*path, key))
        return out


_MISS: Any = object()


class _Direct:
    """A document built straight from libyaml's events, where it is one of the common kind.

    Nearly every workflow file is mappings, lists and untagged scalars, without
    anchors: those are built here as the parser reads them, with the values and
    positions :class:`_Builder` gives them from the composed nodes, and no node
    graph in between. Anything else (an anchor or alias, a tag, a merge key, a
    key that is not a scalar, a duplicate key, a bound reached, a scalar the
    builder refuses, a syntax error, more than one document) makes :meth:`read`
    return None: the file is then composed, which builds it or words its error.
    """

    def __init__(self, file: str) -> None:
        self.doc = Document(file=file, data=None)
        self.builder = _Builder(self.doc, yaml.constructor.SafeConstructor())  # type: ignore[arg-type]
        self.resolver = yaml.resolver.Resolver()
        self.tags: dict[str, str] = {}  # a plain scalar's tag, by its text
        self.plain: dict[str, Any] = {}  # a plain scalar's value, by its text

    def read(self, text: str) -> Document | None:
        parser = CParser(text)
        try:
            return self._read(parser)
        except yaml.YAMLError:
            return None
        finally:
            parser.dispose()

    def _tag(self, text: str) -> str:
        """A plain scalar's tag (resolved once per text: a file repeats its words)."""
        tag = self.tags.get(text)
        if tag is None:
            tag = self.tags[text] = self.resolver.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        return tag

    def _value(self, event: Any, path: Path) -> Any:
        """A scalar's value as the builder reads it, or _MISS where the builder refuses it."""
        text = event.value
        plain = event.implicit[0]
        if not plain and text.isascii():  # quoted or a block: a string
            return text
        tag = self._tag(text) if plain else _STR
        node = yaml.ScalarNode(tag, text, event.start_mark, event.start_mark)
        try:
            value = self.builder._scalar(node, path)
        except WorkflowError:
            return _MISS
        if plain:
            self.plain[text] = value
        return value

    def _read(self, parser: Any) -> Document | None:
        get = parser.get_event
        get()  # the stream's start
        if type(get()) is not yaml.DocumentStartEvent:
            return None  # an empty file: composing says so
        values, keys = self.doc.values.marks, self.doc.keys.marks
        plain, tags = self.plain, self.tags
        scalar, mapping, sequence = (
            yaml.ScalarEvent,
            yaml.MappingStartEvent,
            yaml.SequenceStartEvent,
        )
        stack: list[tuple[Any, Path, Any]] = []  # the open collections: (value, path, key)
        container: Any = None  # the innermost open collection
        path: Path = ()
        key: Any = None  # in a mapping: the key read, or None when a key comes next
        root: Any = _MISS
        seen = 0
        while True:
            event = get()
            kind = type(event)
            if kind is not scalar and kind is not mapping and kind is not sequence:
                if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                    container, path, key = stack.pop()
                    continue
                if kind is yaml.DocumentEndEvent:
                    break
                return None  # an alias
            if event.anchor is not None or event.tag is not None:
                return None
            seen += 1
            if seen > MAX_VALUES or len(stack) >= MAX_DEPTH:
                return None
            if key is None and type(container) is dict:  # a key
                if kind is not scalar:
                    return None
                text = event.value
                if event.implicit[0] and (tags.get(text) or self._tag(text)) not in _SCALARS:
                    return None  # a merge key, or `=`
                if not text.isascii():
                    try:
                        text = self.builder._unicode(event, path, text)
                    except WorkflowError:
                        return None
                if text in container:
                    return None
                key = text
                keys[(*path, key)] = event.start_mark
                continue
            if key is not None:
                at: Path = (*path, key)
            elif container is not None:
                at = (*path, len(container))
            else:
                at = ()
            values[at] = event.start_mark
            if kind is scalar:
                value = plain.get(event.value, _MISS) if event.implicit[0] else _MISS
                if value is _MISS:
                    value = self._value(event, at)
                    if value is _MISS:
                        return None
            else:
                value = {} if kind is mapping else []
            if key is not None:
                container[key] = value
                key = None
            elif container is not None:
                container.append(value)
            else:
                root = value
            if kind is not scalar:
                stack.append((container, path, key))
                container, path, key = value, at, None
        if type(get()) is not yaml.StreamEndEvent:
            return None  # a second document: composing words the error
        self.doc.data = root
        return self.doc
