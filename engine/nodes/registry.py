"""Node kinds by name: how each is written, checked and run, and what its result means.

The validator, the schema and the runtime ask this table and never name a kind, so
adding a kind is one module (how it runs, and how its body is checked) and one entry
here. A kind declares:

- ``body``: its own key in a node (``run: [ls, -l]``), as the schema describes it;
- ``keys``: the node keys only this kind takes besides the common ones (a command's
  ``output``, ``env``, ``cwd``);
- ``checker``: ``check(c, body, path, state, foreach, targets) -> body``, the body as
  the node will run it, errors reported through the checker ``c`` (validation);
- ``after``: a check of the whole node once its body passed, given the node's mapping
  (an ``llm`` node without ``save`` must reply with something the state can take);
- ``runner``: ``run(node, state, ctx, timeout) -> raw``, one attempt;
- ``returns_delta(node)``: whether a raw result without ``save`` is a mapping of
  state keys (python, set, llm; a command whose ``output`` is ``json``) or nothing;
- ``inline``: a lone task of this kind may run on the coordinator's own thread (it
  watches the stop flag and touches no process-wide resource a pool would isolate);
- ``prints``: what an attempt prints is captured (commands' pipes, a python call's
  ``sys.stdout``/``sys.stderr``);
- ``model_key``, ``key_env_key``: the body settings that name the model a node bills
  (metrics prime its series) and the environment variable of its API key (masked).

Hooks are ``"module:function"`` (``".spec.bodies:check_run"``: a module under
``flowrun.engine``), imported on first use: the validator imports only the spec-side
modules its kinds' checks live in (never the subprocess or LLM code), and a run that
has no LLM node never imports the LLM client.

A raw result may be a :class:`Printed` value: the result plus the tails of what the
attempt printed, kept for ``flowrun show`` (commands return one).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..jsonvalue import JSONValueError, check, dumps, where
from ..spec.keys import COMMAND, LLM, Key
from ..spec.model import Node, StateKey, Workflow

if TYPE_CHECKING:
    from ..spec.bodies import Site
    from ..spec.checks import Checker
    from ..spec.yamlpos import Path
    from .base import Context

    # the hooks' shapes
    BodyCheck = Callable[[Checker, Any, Site], Any]
    NodeCheck = Callable[[Checker, Mapping[str, Any], Any, Path, Mapping[str, StateKey]], None]
    Runner = Callable[[Node, Mapping[str, Any], Context, float | None], Any]

__all__ = ["KINDS", "Kind", "Printed", "kind_keys", "kind_of", "taken_by", "to_delta"]

_ENGINE = __name__.rsplit(".", 2)[0]  # flowrun.engine: what a hook's ".module" is under


@dataclass(frozen=True, slots=True)
class Printed:
    """A raw result with the tails of its streams (a command's stdout and stderr)."""

    value: Any
    stdout: str
    stderr: str


_hooks: dict[str, Any] = {}


def _hook(ref: str) -> Any:
    fn = _hooks.get(ref)
    if fn is None:
        module, _, name = ref.partition(":")
        fn = _hooks[ref] = getattr(importlib.import_module(module, _ENGINE), name)
    return fn


@dataclass(frozen=True, slots=True)
class Kind:
    body: Key  # its name is the kind's
    checker: str  # "module:function" (".module": under flowrun.engine): a BodyCheck
    runner: str  # "module:function": a Runner
    returns_delta: Callable[[Node], bool]
    keys: tuple[Key, ...] = ()
    after: str | None = None  # "module:function": a NodeCheck
    inline: bool = False
    prints: bool = False
    model_key: str | None = None
    key_env_key: str | None = None

    @property
    def name(self) -> str:
        return self.body.name

    def check_body(self, c: Checker, body: Any, site: Site) -> Any:
        """The body at ``site.path`` as the node will run it (errors through ``c``)."""
        return cast("BodyCheck", _hook(self.checker))(c, body, site)

    def after_validate(
        self,
        c: Checker,
        node: Mapping[str, Any],
        body: Any,
        path: Path,
        state: Mapping[str, StateKey],
    ) -> None:
        """Checks of the whole node (its mapping ``node``) once its ``body`` passed."""
        if self.after is not None:
            cast("NodeCheck", _hook(self.after))(c, node, body, path, state)

    def run(self, node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
        return cast("Runner", _hook(self.runner))(node, state, ctx, timeout)

    def setting(self, node: Node, key: str | None) -> Any:
        """The body's value of ``key`` (None: the kind has no such setting, or it is unset)."""
        if key is None or not isinstance(node.body, dict):
            return None
        return node.body.get(key)

    def model(self, node: Node) -> Any:
        """What the node names as the model it bills, as written (None: it bills none)."""
        return self.setting(node, self.model_key)

    def key_env(self, node: Node) -> Any:
        """What the node names as its API key's environment variable, as written."""
        return self.setting(node, self.key_env_key)


def _always(node: Node) -> bool:
    return True


def _json_output(node: Node) -> bool:
    return node.output == "json"


# the order is the docs' and the schema's (and the validator's "one of" hint)
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            Key("run", "argv", "A command and its arguments, run without a shell."),
            ".spec.bodies:check_run",
            ".nodes.command:run_argv",
            _json_output,
            COMMAND,
            prints=True,
        ),
        Kind(
            Key("shell", "string", "A /bin/sh -c script; substituted values are data."),
            ".spec.bodies:check_shell",
            ".nodes.command:run_shell",
            _json_output,
            COMMAND,
            prints=True,
        ),
        Kind(
            Key("python", "python_target", "A function module:function, called as fn(state, ctx)."),
            ".spec.bodies:check_python",
            ".nodes.python:run_python",
            _always,
            inline=True,
            prints=True,
        ),
        Kind(
            Key("llm", "object", "One chat completion.", keys=LLM),
            ".spec.bodies:check_llm",
            ".nodes.llm:run_llm",
            _always,
            after=".spec.bodies:reply_used",
            model_key="model",
            key_env_key="api_key_env",
        ),
        Kind(
            Key("set", "mapping", "State keys and the values (or templates) written to them."),
            ".spec.bodies:check_set",
            ".nodes.set:run_set",
            _always,
            inline=True,
        ),
    )
}


def taken_by(key: str) -> tuple[str, ...]:
    """The kinds that take the kind-only node key ``key``, in KINDS order (asked of KINDS
    as it is now, so a kind added later counts)."""
    return tuple(kind.name for kind in KINDS.values() if any(k.name == key for k in kind.keys))


def kind_keys() -> frozenset[str]:
    """The node keys only some kinds take (a command's output, an llm's options…)."""
    return frozenset(k.name for kind in KINDS.values() for k in kind.keys)


def _refused(message: str, reason: str = "error") -> Exception:
    """A TaskError that no retry helps (``.base`` is imported where tasks run, not here:
    the validator reads this table too)."""
    from .base import TaskError

    return TaskError(message, retryable=False, reason=reason)


def kind_of(node: Node) -> Kind:
    try:
        return KINDS[node.kind]
    except KeyError:
        raise _refused(f"unknown node kind {node.kind}") from None


def _own_json(value: Any) -> bool:
    """Whether a value that passed :func:`check` reads back from its JSON as itself: a
    plain string, bool, None, finite float or int of up to 64 bits (not a subclass, a
    container, or an int too long to print)."""
    t = type(value)
    if t is int:
        return bool(value.bit_length() <= 64)
    return t is str or t is float or t is bool or value is None


def to_delta(workflow: Workflow, node: Node, raw: Any) -> dict[str, Any]:
    """The state delta a node's raw result (``Printed`` already unwrapped) stands for."""
    if node.save:
        delta: Any = {node.save: raw}
    elif kind_of(node).returns_delta(node):
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise _refused(
                f"node returned {type(raw).__name__}, not a mapping of state keys", "output"
            )
        delta = raw
    else:
        return {}
    for k in delta:
        if k not in workflow.state:
            raise _refused(f"node wrote undeclared state key {k!r}", "output")
    try:
        for k, v in delta.items():
            try:
                check(v)
            except JSONValueError as exc:
                exc.path = (k, *exc.path)
                raise
        if all(map(_own_json, delta.values())):
            return dict(delta)  # the usual delta (a count, a name, a flag): nothing to convert
        normalised: dict[str, Any] = json.loads(dumps(delta, sort_keys=False, compact=False))
    except JSONValueError as exc:
        raise _refused(
            f"state key {where(exc.path)}: {exc.problem}" + (f" ({exc.hint})" if exc.hint else ""),
            "output",
        ) from None
    except (TypeError, ValueError) as exc:
        raise _refused(f"node result is not JSON-serialisable: {exc}", "output") from None
    return normalised
