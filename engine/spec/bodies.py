"""What each node kind's body may hold: ``run``, ``shell``, ``python``, ``set``, ``llm``.

The body is the value under the node's kind key. Settings that may come from the
state (any string of an ``llm`` body) are checked as templates at load and again
as values when the node runs (:mod:`flowrun.engine.nodes.llm`); a literal value
is checked here, so a typo fails ``flowrun validate`` rather than the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from . import templates
from .checks import Checker, describe, did_you_mean
from .keys import LLM, PYTHON_TARGET, names
from .model import StateKey
from .yamlpos import Path

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LLM_KEYS = names(LLM)
APIS = next(k.choices for k in LLM if k.name == "api")
MAX_TEMPERATURE = {"anthropic": 1.0}  # the Messages API refuses more; the others take 0-2
LIVE_ONLY = ("base_url", "api_key_env")  # settings of the providers that call an endpoint


def check_body(
    c: Checker, kind: str, body: Any, path: Path, state: Mapping[str, StateKey], foreach: bool
) -> Any:
    """The body of a ``kind`` node at ``path``, as the node will run it."""
    if kind == "run":
        return _argv(c, body, path, state, foreach)
    if kind == "shell":
        text = c.text(body, path)
        c.template(text, path, state, foreach=foreach, shell=True)
        return text
    if kind == "python":
        target = c.text(body, path)
        if not PYTHON_TARGET.match(target):
            c.err(path, f"bad python target {target!r}", hint="use module:function, e.g. lib:judge")
        return target
    if kind == "set":
        return _set(c, body, path, state, foreach)
    return _llm(c, body, path, state, foreach)


def _argv(
    c: Checker, body: Any, path: Path, state: Mapping[str, StateKey], foreach: bool
) -> list[str]:
    if isinstance(body, str):
        c.err(path, "run takes an argv list", hint='use `run: [cmd, arg]` or `shell: "..."`')
    if not isinstance(body, list) or not body:
        c.err(path, "run takes a non-empty argv list", hint="e.g. `run: [ls, -l]`")
    for i, a in enumerate(body):
        if isinstance(a, dict | list) or a is None:
            c.err((*path, i), "argv items must be strings or numbers")
    argv = [a if isinstance(a, str) else json.dumps(a) for a in body]
    c.templates_in(argv, path, state, foreach=foreach)
    return argv


def _set(
    c: Checker, body: Any, path: Path, state: Mapping[str, StateKey], foreach: bool
) -> dict[str, Any]:
    values = c.mapping(body, path, hint="e.g. `set: {count: 0}`")
    for k in values:
        if k not in state:
            c.err(
                (*path, k),
                f"set writes undeclared state key {k!r}",
                key=True,
                label=path,
                hint=did_you_mean(k, state) or "declare it under `state:`",
            )
    c.templates_in(values, path, state, foreach=foreach)
    return values


def default_provider(model: str) -> str:
    """The provider of a node without ``provider`` (as :mod:`..nodes.llm` picks it)."""
    return "anthropic" if model.startswith("claude") else "openai"


def _llm(
    c: Checker, body: Any, path: Path, state: Mapping[str, StateKey], foreach: bool
) -> dict[str, Any]:
    from ..llm.session import PROVIDERS  # only a workflow with an llm node pays for it

    spec = c.mapping(body, path, hint="e.g. `llm: {model: gpt-4o-mini, prompt: ...}`")
    c.known(spec, LLM_KEYS, path)
    for req in ("model", "prompt"):
        if req not in spec:
            c.err(path, f"llm needs {req!r}", key=True)

    for k in ("model", "prompt", "system", "provider", "base_url", "api_key_env", "cassette"):
        if k in spec:
            c.text(spec[k], (*path, k))
    # a template's value is known only when the node runs: check the template now, the value then
    templated = [k for k, v in spec.items() if isinstance(v, str) and templates.is_template(v)]
    for k in templated:
        c.template(spec[k], (*path, k), state, foreach=foreach)
    model = spec["model"]
    if not model.strip():
        c.err((*path, "model"), "the model is empty", hint="e.g. `model: gpt-4o-mini`")
    # the provider the node will call, if the file says: None when a template picks it
    provider: str | None = None
    if "provider" in spec:
        if "provider" not in templated:
            provider = c.choice(spec["provider"], (*path, "provider"), PROVIDERS, "llm provider")
    elif "model" not in templated:
        provider = default_provider(model)
    replay_possible = "provider" in spec and provider in (None, "replay")
    if "api" in spec:
        api = c.choice(spec["api"], (*path, "api"), APIS, "llm api")
        if api == "responses" and provider == "anthropic":
            c.err(
                (*path, "api"),
                "api responses is OpenAI's Responses API; provider anthropic speaks only"
                " its Messages API",
                hint="drop `api:` for anthropic models, or use provider openai",
            )

    if "temperature" in spec and "temperature" not in templated:
        t = _number(c, spec["temperature"], (*path, "temperature"), "temperature: 0.2")
        top = MAX_TEMPERATURE.get(provider or "", 2.0)
        if not 0 <= t <= top:
            c.err(
                (*path, "temperature"),
                f"expected a number from 0 to {top:g}, got {t:g}",
                hint=f"provider {provider} takes 0 to {top:g}"
                if provider in MAX_TEMPERATURE
                else "0 is the most deterministic; 2 is the most any provider takes",
            )
    if "max_tokens" in spec and "max_tokens" not in templated:
        if isinstance(spec["max_tokens"], str):
            _unquote(c, spec["max_tokens"], (*path, "max_tokens"), "max_tokens: 200")
        c.pos_int(spec["max_tokens"], (*path, "max_tokens"))
    if "json" in spec and "json" not in templated:
        v = spec["json"]
        if not isinstance(v, bool):
            c.err(
                (*path, "json"),
                f"expected true or false, not {v!r}",
                hint="write `json: true` (no quotes) to parse the reply as JSON",
            )
    if "base_url" in spec and "base_url" not in templated:
        url = urlsplit(spec["base_url"])
        if url.scheme not in ("http", "https") or not url.hostname:
            c.err(
                (*path, "base_url"),
                f"not an http(s) URL: {spec['base_url']!r}",
                hint="e.g. `base_url: http://localhost:8000/v1`",
            )
    if "api_key_env" in spec and "api_key_env" not in templated:
        name = spec["api_key_env"]
        if not _ENV_NAME.match(name):
            c.err(
                (*path, "api_key_env"),
                f"not an environment variable name: {_masked(name)}",
                hint="name the variable that holds the key (e.g. OPENAI_API_KEY), not the key",
            )
    if provider == "replay":
        for k in LIVE_ONLY:
            if k in spec:
                c.err(
                    (*path, k),
                    f"{k} is not used by provider replay",
                    key=True,
                    label=path,
                    hint="replay answers from its cassette; remove it or change the provider",
                )
    if "cassette" in spec and not replay_possible:
        which = f"provider {provider}" if provider else "this node's provider"
        c.err(
            (*path, "cassette"),
            f"cassette is read only by provider replay, not by {which}",
            key=True,
            label=path,
            hint="add `provider: replay`; to record a cassette, pass --llm-record FILE",
        )
    return spec


def _number(c: Checker, value: Any, path: Path, example: str) -> float:
    if isinstance(value, str):
        _unquote(c, value, path, example)
    if isinstance(value, bool) or not isinstance(value, int | float):
        c.err(path, f"expected a number, not {describe(value)}")
    return float(value)


def _unquote(c: Checker, value: str, path: Path, example: str) -> None:
    """A number written as a string: say so, since the node would fail on it."""
    c.err(
        path,
        f"expected a number, not the string {value!r}",
        hint=f"write it without quotes, e.g. `{example}`, or as a template `{{{{ ... }}}}`",
    )


def _masked(text: str) -> str:
    """Shown in an error: enough to recognise, never a whole pasted key."""
    return repr(text if len(text) <= 8 else text[:4] + "…")
