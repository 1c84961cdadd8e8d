"""Node kinds by name: how each runs, what its raw result means, where it may run.

The runtime asks the registry and never names a kind. A kind declares:

- ``run(node, state, ctx, timeout) -> raw``: one attempt (imported on first use, so
  a run that has no LLM node never imports the LLM client);
- ``returns_delta(node)``: whether a raw result without ``save`` is a mapping of
  state keys (python, set, llm; a command whose ``output`` is ``json``) or nothing;
- ``inline``: a lone task of this kind may run on the coordinator's own thread (it
  watches the stop flag and touches no process-wide resource a pool would isolate);
- ``prints``: what an attempt prints is captured (commands' pipes, a python call's
  ``sys.stdout``/``sys.stderr``).

A raw result may be a :class:`Printed` value: the result plus the tails of what the
attempt printed, kept for ``flowrun show`` (commands return one).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..jsonvalue import JSONValueError, check, dumps, where
from ..spec.model import Node, Workflow
from .base import Context, TaskError


@dataclass(frozen=True, slots=True)
class Printed:
    """A raw result with the tails of its streams (a command's stdout and stderr)."""

    value: Any
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    runner: str  # "module:function" under engine.nodes, imported on first use
    returns_delta: Callable[[Node], bool]
    inline: bool = False
    prints: bool = False

    def run(self, node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
        fn = _runners.get(self.runner)
        if fn is None:
            module, _, name = self.runner.partition(":")
            fn = _runners[self.runner] = getattr(
                importlib.import_module(f".{module}", __package__), name
            )
        return fn(node, state, ctx, timeout)


_runners: dict[str, Callable[..., Any]] = {}


def _always(node: Node) -> bool:
    return True


def _json_output(node: Node) -> bool:
    return node.output == "json"


KINDS: dict[str, Kind] = {
    "run": Kind("run", "command:run_command", _json_output, prints=True),
    "shell": Kind("shell", "command:run_command", _json_output, prints=True),
    "python": Kind("python", "python:run_python", _always, inline=True, prints=True),
    "set": Kind("set", "set:run_set", _always, inline=True),
    "llm": Kind("llm", "llm:run_llm", _always),
}


def kind_of(node: Node) -> Kind:
    try:
        return KINDS[node.kind]
    except KeyError:
        raise TaskError(f"unknown node kind {node.kind}", retryable=False) from None


def to_delta(workflow: Workflow, node: Node, raw: Any) -> dict[str, Any]:
    """The state delta a node's raw result (``Printed`` already unwrapped) stands for."""
    if node.save:
        delta: Any = {node.save: raw}
    elif kind_of(node).returns_delta(node):
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise TaskError(
                f"node returned {type(raw).__name__}, not a mapping of state keys",
                retryable=False,
                reason="output",
            )
        delta = raw
    else:
        return {}
    for k in delta:
        if k not in workflow.state:
            raise TaskError(
                f"node wrote undeclared state key {k!r}", retryable=False, reason="output"
            )
    try:
        for k, v in delta.items():
            try:
                check(v)
            except JSONValueError as exc:
                exc.path = (k, *exc.path)
                raise
        normalised: dict[str, Any] = json.loads(dumps(delta, sort_keys=False, compact=False))
    except JSONValueError as exc:
        raise TaskError(
            f"state key {where(exc.path)}: {exc.problem}" + (f" ({exc.hint})" if exc.hint else ""),
            retryable=False,
            reason="output",
        ) from None
    except (TypeError, ValueError) as exc:
        raise TaskError(
            f"node result is not JSON-serialisable: {exc}", retryable=False, reason="output"
        ) from None
    return normalised
