"""The keys a workflow file may hold: one table for the validator and the schema.

Each section of the file (the top level, a state key, ``config``, a retry policy,
a node, a route, an ``llm`` body) is a tuple of :class:`Key`. The validator
(:mod:`.validate`, :mod:`.bodies`) takes its allowed key sets from here, and
:mod:`.schema` builds the JSON Schema from the same tuples, so a key cannot be
accepted by one and missing from the other.

Each node kind's own key (``run``, ``llm``, …) is on its entry in
:mod:`flowrun.engine.nodes.registry`, with the keys only that kind takes;
:data:`KIND_BODIES` lists them in the registry's order.

A key's ``type`` is one of :data:`TYPES`; what each means is the schema's
business. The validator checks more than the types say (node references,
templates, reducer defaults): the schema describes the shape, ``flowrun
validate`` the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import OUTPUTS, REDUCERS, Config, RetryPolicy

__all__ = [
    "COMMAND",
    "COMMON",
    "CONFIG",
    "ENV_NAME",
    "KIND_BODIES",
    "LLM",
    "NODE_NAME",
    "NO_DEFAULT",
    "POLICIES",
    "PYTHON_TARGET",
    "RETRY",
    "ROUTE",
    "STATE",
    "TOP",
    "TYPES",
    "Key",
    "names",
]

NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
POLICIES = ("fail", "last_writer_wins")
PYTHON_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NO_DEFAULT: Any = object()

TYPES = (
    "any",  # any JSON value
    "string",
    "integer",  # with ``minimum``
    "number",  # with ``minimum`` / ``maximum``
    "boolean",
    "choice",  # one of ``choices``
    "condition",  # a Jinja2 expression, or true/false
    "duration",  # 250ms, 30s, 5m, 1h, 2d or seconds; ``positive``: more than 0
    "node",  # a node name or a non-empty list of them (``END`` where ``end`` says)
    "mapping",  # a mapping of names to any values
    "argv",  # a non-empty list of strings or numbers
    "env_names",  # a list of environment variable names
    "python_target",  # module:function
    "list_or_template",  # a list, or a template that yields one
    "object",  # a mapping of the fixed ``keys``
    "state",  # a mapping of state key names to STATE
    "nodes",  # a mapping of node names to nodes
    "routes",  # a non-empty list of ROUTE
)


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    type: str
    doc: str
    default: Any = NO_DEFAULT  # a JSON value, as the file would write it
    required: bool = False
    nullable: bool = False  # null is accepted (and means the default, or "none")
    templated: bool = False  # a template string is accepted instead of the value
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    end: bool = False  # a node reference that may be END
    keys: tuple[Key, ...] = ()


def names(keys: tuple[Key, ...]) -> tuple[str, ...]:
    return tuple(k.name for k in keys)


_C = Config()
_R = RetryPolicy()

RETRY = (
    Key(
        "max_attempts",
        "integer",
        "Attempts in all, the first included.",
        _R.max_attempts,
        minimum=1,
    ),
    Key("backoff", "duration", "Wait before the second attempt; doubles each time.", "1s"),
    Key("max_backoff", "duration", "The longest wait between attempts.", "30s"),
    Key("jitter", "boolean", "Wait between half and all of the backoff.", _R.jitter),
)

STATE = (
    Key("default", "any", "The value before any node writes the key.", None),
    Key(
        "reducer", "choice", "How a write is combined with the value.", "replace", choices=REDUCERS
    ),
    Key("description", "string", "Free text for readers."),
)

CONFIG = (
    Key("max_concurrency", "integer", "Tasks running at once.", _C.max_concurrency, minimum=1),
    Key(
        "queue_depth",
        "integer",
        "Tasks handed to the executor beyond those running.",
        _C.queue_depth,
        minimum=0,
    ),
    Key("max_steps", "integer", "Steps a run may take before it fails.", _C.max_steps, minimum=1),
    Key(
        "conflict_policy",
        "choice",
        "Two writes of one replace key in a step: fail, or the later task wins.",
        _C.conflict_policy,
        choices=POLICIES,
    ),
    Key(
        "timeout",
        "duration",
        "Default time limit of one attempt; null: none.",
        "10m",
        nullable=True,
        positive=True,
    ),
    Key("retry", "object", "Default retry policy of every node.", keys=RETRY),
    Key("max_cost_usd", "number", "Budget of the run's LLM calls, in USD.", minimum=0),
)

ROUTE = (
    Key("when", "condition", "Condition (a Jinja2 expression); none: always taken."),
    Key("to", "node", "Where to go: a node, a list of nodes, or END.", required=True, end=True),
)

COMMON = (
    Key("next", "node", "The node(s) to run after this one, or END.", end=True),
    Key("routes", "routes", "Conditional next nodes; the first matching route is taken."),
    Key("needs", "node", "Wait until these nodes have all completed (a join)."),
    Key("foreach", "list_or_template", "Run one task per item, in parallel."),
    Key("save", "string", "The state key the result is written to."),
    Key("retry", "object", "Retry policy (defaults from config.retry).", keys=RETRY),
    Key(
        "timeout",
        "duration",
        "Time limit of one attempt (default: config.timeout); null: none.",
        nullable=True,
        positive=True,
    ),
    Key("description", "string", "Free text for readers."),
)

COMMAND = (  # the node keys of the kinds that run a command (see nodes/registry.py)
    Key("output", "choice", "How stdout becomes the result.", "text", choices=OUTPUTS),
    Key("env", "mapping", "Extra environment variables (values are templates).", nullable=True),
    Key("cwd", "string", "Working folder, relative to the workflow file's folder."),
)

LLM = (
    Key("model", "string", "The model name.", required=True),
    Key("prompt", "string", "The user message.", required=True),
    Key("system", "string", "The system message."),
    Key(
        "provider",
        "choice",
        "openai, anthropic or replay; default: anthropic for claude* models, else openai.",
        choices=("openai", "anthropic", "replay"),
        templated=True,
    ),
    Key(
        "api",
        "choice",
        "openai: chat (/chat/completions) or responses (/responses, the Responses API).",
        "chat",
        choices=("chat", "responses"),
    ),
    Key("temperature", "number", "Sampling temperature.", minimum=0, maximum=2, templated=True),
    Key("max_tokens", "integer", "Longest reply, in tokens.", minimum=1, templated=True),
    Key("json", "boolean", "Parse the reply as JSON.", False, templated=True),
    Key("base_url", "string", "The endpoint (openai: OPENAI_BASE_URL, then OpenAI)."),
    Key("api_key_env", "string", "The environment variable that holds the key."),
    Key("cassette", "string", "The replay provider's cassette, next to the workflow."),
)

TOP = (
    Key("name", "string", "The workflow's name.", required=True),
    Key("description", "string", "Free text for readers."),
    Key("state", "state", "The state keys, each with a default and a reducer.", nullable=True),
    Key("config", "object", "Run settings.", keys=CONFIG, nullable=True),
    Key(
        "secrets",
        "env_names",
        "Environment variables whose values are masked as *** in all output.",
        nullable=True,
    ),
    Key("start", "node", "The node(s) the run starts with (default: the first node)."),
    Key("nodes", "nodes", "The nodes, by name.", required=True),
)


if TYPE_CHECKING:
    KIND_BODIES: tuple[Key, ...]


def __getattr__(name: str) -> Any:
    if name == "KIND_BODIES":  # the kinds' own keys, from their registry entries
        from ..nodes.registry import KINDS

        return tuple(kind.body for kind in KINDS.values())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
