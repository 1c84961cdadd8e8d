"""The validated, immutable form of a workflow file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

END = "END"
REDUCERS = ("replace", "append", "extend", "merge", "add", "max", "min")
OUTPUTS = ("text", "json", "lines", "none")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff: float = 1.0
    max_backoff: float = 30.0
    jitter: bool = True

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        base = float(min(self.max_backoff, self.backoff * (2.0 ** (attempt - 1))))
        if self.jitter:
            return float(base * (0.5 + rand / 2))  # "equal jitter": between half and all of it
        return base


@dataclass(frozen=True, slots=True)
class StateKey:
    name: str
    default: Any
    reducer: str = "replace"


@dataclass(frozen=True, slots=True)
class Route:
    to: tuple[str, ...]
    when: str | None = None


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    kind: str  # a name in nodes/registry.py KINDS
    body: Any  # the kind's own value: argv list, shell text, "mod:fn", llm mapping, set mapping
    next: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    needs: tuple[str, ...] = ()
    foreach: Any = None
    save: str | None = None
    output: str = "text"
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = 600.0
    description: str | None = None

    def targets(self) -> tuple[str, ...]:
        out = list(self.next)
        for r in self.routes:
            out.extend(r.to)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Config:
    max_concurrency: int = 8
    queue_depth: int = 1024
    max_steps: int = 1000
    conflict_policy: str = "fail"
    timeout: float | None = 600.0
    retry: RetryPolicy = RetryPolicy()
    max_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    state: dict[str, StateKey]
    nodes: dict[str, Node]
    start: tuple[str, ...]
    config: Config = Config()
    description: str | None = None
    source: str = ""
    digest: str = ""
    path: str = "<workflow>"
    base_dir: Path = Path(".")
    joins: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> its needs
    secrets: tuple[str, ...] = ()  # environment variables whose values are masked as ***

    def initial_state(self) -> dict[str, Any]:
        import copy

        return {k: copy.deepcopy(v.default) for k, v in self.state.items()}
