"""Records shared across the engine's floors: a step's task, a frontier and its entries,
one billed LLM call, a flag.

They sit here, below ``runtime``, ``nodes``, ``costs``, ``metrics`` and ``events``,
so none of those imports another to learn a type. Every record is plain data (it
crosses process boundaries inside a ``TaskSpec`` or a ``TaskReport``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a step: a frontier entry, or one item of its ``foreach``."""

    node: str
    parent: str  # the order key of the task that routed here ("" at the start)
    edge: int  # the edge index, or the item's index under ``foreach``
    key: str  # order_key(parent, node, edge): tasks run and merge in this order
    item: Any = None  # the ``foreach`` item
    index: int | None = None  # the ``foreach`` index
    skip: bool = False  # an empty ``foreach``: completes without running

    @property
    def label(self) -> str:
        """How messages name a task: ``node``, or ``node[index]`` under ``foreach``."""
        return self.node if self.index is None else f"{self.node}[{self.index}]"


@dataclass(frozen=True, slots=True)
class Entry:
    """A node a frontier runs next: routed to by the task with order key ``parent`` along
    its edge ``edge`` (the start nodes: parent ``""``, edge their position in ``start``)."""

    node: str
    parent: str
    edge: int

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "parent": self.parent, "edge": self.edge}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Entry:
        return cls(value["node"], value["parent"], value["edge"])


@dataclass(frozen=True, slots=True)
class Frontier:
    """Which nodes run in the next superstep, in tree order.

    ``entries`` run next (a ``foreach`` entry becomes one task per item when its step
    starts); ``held`` are joins (``needs``) still waiting; ``since`` records, per join,
    which of the nodes it needs completed since it last ran. Stored as JSON
    ``{"entries": [...], "held": [...], "since": {join: [nodes]}}``; a frontier stored
    without ``held`` or ``since`` reads as having none.
    """

    entries: tuple[Entry, ...] = ()
    held: tuple[Entry, ...] = ()
    since: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def nodes(self) -> list[str]:
        """The nodes of its entries, then of its held joins."""
        return [e.node for e in (*self.entries, *self.held)]

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [e.to_json() for e in self.entries],
            "held": [e.to_json() for e in self.held],
            "since": {j: list(nodes) for j, nodes in self.since.items()},
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Frontier:
        return cls(
            tuple(Entry.from_json(e) for e in value.get("entries", ())),
            tuple(Entry.from_json(e) for e in value.get("held", ())),
            {j: tuple(nodes) for j, nodes in value.get("since", {}).items()},
        )


@dataclass(slots=True)
class LLMUsage:
    """One billed LLM call, as the node saw it."""

    model: str
    tokens_in: int | None
    tokens_out: int | None
    cached: int | None = 0
    cache_write: int | None = 0
    provider: str = "python"
    attempt: int = 1
    cache_write_1h: int | None = 0  # of cache_write, 1-hour cache writes (Anthropic)
    served_model: str | None = None  # the model the reply named, when it named one
    # unknown usage: at most this many input and output tokens were billed (None: no bound)
    bound_in: int | None = None
    bound_out: int | None = None
    reasoning: int | None = 0  # of tokens_out, reasoning tokens (billed as output)


@runtime_checkable
class CountedTasks(Protocol):
    """A sequence of tasks that counts them per node without making each
    (``runtime/tasks.py`` ``StepTasks``)."""

    def node_counts(self) -> dict[str, tuple[int, bool]]: ...


@runtime_checkable
class Flag(Protocol):
    """A flag the coordinator sets and tasks poll, shaped like ``threading.Event``
    (a ``multiprocessing`` Manager's Event proxy and a ``distributed.Event`` fit too)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...
