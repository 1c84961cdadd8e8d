"""Records shared across the engine's floors: a step's task, one billed LLM call, a flag.

They sit here, below ``runtime``, ``nodes``, ``costs``, ``metrics`` and ``events``,
so none of those imports another to learn a type. Every record is plain data (it
crosses process boundaries inside a ``TaskSpec`` or a ``TaskReport``).
"""

from __future__ import annotations

from dataclasses import dataclass
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
class Flag(Protocol):
    """A flag the coordinator sets and tasks poll, shaped like ``threading.Event``
    (a ``multiprocessing`` Manager's Event proxy and a ``distributed.Event`` fit too)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...
