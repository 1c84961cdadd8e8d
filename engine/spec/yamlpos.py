"""Safe, bounded YAML loading that remembers where every key and value came from.

The document is composed with PyYAML's safe loader into a node graph (nothing is
constructed, so no tag can execute code), then turned into plain Python values by
hand. Three bounds keep hostile files cheap to reject: the file size, the number
of aliases, and the number of values produced once aliases are expanded (which is
what stops a "billion laughs" file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import WorkflowError

MAX_BYTES = 2 * 1024 * 1024
MAX_ALIASES = 100
MAX_VALUES = 200_000

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"
_SCALARS = {
    _STR,
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}


@dataclass(frozen=True, slots=True)
class Pos:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(slots=True)
class Document:
    """A loaded YAML document: its data and the position of every value and key."""

    file: str
    data: Any
    values: dict[Path, Pos] = field(default_factory=dict)
    keys: dict[Path, Pos] = field(default_factory=dict)

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
        self, path: Path, message: str, *, key: bool = False, hint: str | None = None
    ) -> WorkflowError:
        pos = self.where(path, key=key)
        name = ".".join(str(p) for p in path) or None
        return WorkflowError(
            message,
            file=self.file,
            line=pos.line if pos else None,
            column=pos.column if pos else None,
            key=name,
            hint=hint,
        )


class _BoundedLoader(yaml.SafeLoader):
    aliases_seen = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooMany(event.start_mark, f"more than {MAX_ALIASES} YAML aliases")
        return super().compose_node(parent, index)


class _TooMany(Exception):
    def __init__(self, mark: Any, what: str) -> None:
        super().__init__(what)
        self.mark = mark
        self.what = what


def _pos(mark: Any) -> Pos:
    return Pos(mark.line + 1, mark.column + 1)


def load(text: str, file: str) -> Document:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise WorkflowError(
            f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB",
            file=file,
            line=1,
            column=1,
            hint="a workflow is a small graph; keep large data in files it reads",
        )
    loader = _BoundedLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except _TooMany as exc:
            raise WorkflowError(
                exc.what,
                file=file,
                line=_pos(exc.mark).line,
                column=_pos(exc.mark).column,
                hint="expand the anchors by hand; flowrun bounds aliases",
            ) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            raise WorkflowError(
                f"invalid YAML: {problem}",
                file=file,
                line=mark.line + 1 if mark else None,
                column=mark.column + 1 if mark else None,
            ) from None
        except yaml.YAMLError as exc:
            raise WorkflowError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    doc = Document(file=file, data=None)
    if root is None:
        raise WorkflowError("the file is empty", file=file, line=1, column=1)
    builder = _Builder(doc, loader)
    doc.data = builder.build(root, ())
    return doc


class _Builder:
    def __init__(self, doc: Document, loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.loader = loader
        self.count = 0

    def _fail(self, node: Any, message: str, hint: str | None = None) -> WorkflowError:
        p = _pos(node.start_mark)
        return WorkflowError(message, file=self.doc.file, line=p.line, column=p.column, hint=hint)

    def build(self, node: Any, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self._fail(
                node,
                f"document expands to more than {MAX_VALUES} values (alias bomb?)",
                hint="flowrun bounds the expanded size of a workflow file",
            )
        self.doc.values.setdefault(path, _pos(node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALARS:
                raise self._fail(node, f"unsupported YAML tag {node.tag!r}", "remove the tag")
            if node.tag == "tag:yaml.org,2002:timestamp":
                return str(node.value)
            return self.loader.construct_object(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self._fail(node, f"unsupported YAML tag {node.tag!r}", "remove the tag")
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                raise self._fail(node, f"unsupported YAML tag {node.tag!r}", "remove the tag")
            out: dict[Any, Any] = {}
            explicit: set[str] = set()
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    merged = self.build(value_node, path)
                    sources = merged if isinstance(merged, list) else [merged]
                    for src in sources:
                        if not isinstance(src, dict):
                            raise self._fail(value_node, "a merge key (<<) needs a mapping")
                        for k, v in src.items():
                            out.setdefault(k, v)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._fail(key_node, "mapping keys must be plain scalars")
                key = self.build(key_node, (*path, "<key>"))
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise self._fail(key_node, "mapping keys must be plain scalars")
                key = str(key) if not isinstance(key, str) else key
                if key in explicit:
                    raise self._fail(key_node, f"duplicate key {key!r}", "remove one of them")
                explicit.add(key)
                self.doc.keys[(*path, key)] = _pos(key_node.start_mark)
                out[key] = self.build(value_node, (*path, key))
            return out
        raise self._fail(node, "unsupported YAML node")
