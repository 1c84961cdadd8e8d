"""What each node kind's body may hold: ``run``, ``shell``, ``python``, ``set``, ``llm``.

The body is the value under the node's kind key. Each check here is a hook of its
kind's entry in :mod:`flowrun.engine.nodes.registry`, which the validator calls.
Settings that may come from the state (any string of an ``llm`` body) are checked as
templates at load and again as values when the node runs
(:mod:`flowrun.engine.nodes.llm`); a literal value is checked here, so a typo fails
``flowrun validate`` rather than the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from . import pytarget, templates
from .checks import Checker, describe, did_you_mean, masked
from .keys import ENV_NAME, LLM, PYTHON_TARGET, names
from .model import StateKey
from .yamlpos import Path

LLM_KEYS = names(LLM)
APIS = next(k.choices for k in LLM if k.name == "api")
MAX_TEMPERATURE = {"anthropic": 1.0}  # the Messages API refuses more; the others take 0-2
LIVE_ONLY = ("base_url", "api_key_env")  # settings of the providers that call an endpoint


class Site(NamedTuple):
    """What a body check reads besides the body: where the body is, the state keys
    declared, whether its node has ``foreach``, and where python targets are found.

    A named tuple, not a frozen dataclass: one is made per node, in half the time."""

    path: Path
    state: Mapping[str, StateKey]
    foreach: bool
    targets: pytarget.Targets


def check_run(c: Checker, body: Any, site: Site) -> list[str]:
    """``run: [cmd, arg, ...]``: a non-empty argv of strings and numbers (templates)."""
    path, state, foreach = site.path, site.state, site.foreach
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


def check_shell(c: Checker, body: Any, site: Site) -> str:
    """``shell: script``: a template whose substituted values are data."""
    path, state, foreach = site.path, site.state, site.foreach
    text = c.text(body, path)
    c.template(text, path, state, foreach=foreach, shell=True)
    return text


def check_python(c: Checker, body: Any, site: Site) -> str:
    """``python: module:function``, looked up through ``targets`` (the workflow's folder)."""
    path, targets = site.path, site.targets
    target = c.text(body, path)
    if not PYTHON_TARGET.match(target):
        c.err(path, f"bad python target {target!r}", hint="use module:function, e.g. lib:judge")
    problem = targets.problem(target)
    if problem is not None:
        c.report(path, problem.message, hint=problem.hint)
    return target


def check_set(c: Checker, body: Any, site: Site) -> dict[str, Any]:
    """``set: {key: value-or-template}``: declared state keys only."""
    path, state, foreach = site.path, site.state, site.foreach
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


def check_llm(c: Checker, body: Any, site: Site) -> dict[str, Any]:
    """``llm: {model, prompt, ...}``: every literal setting as the provider takes it."""
    path, state, foreach = site.path, site.state, site.foreach
    from ..llm.session import PROVIDERS  # only a workflow with an llm node pays for it

    spec = c.mapping(body, path, hint="e.g. `llm: {model: gpt-4o-mini, prompt: ...}`")
    c.known(spec, LLM_KEYS, path)
    for req in ("model", "prompt"):
        if req not in spec:
            c.report(path, f"llm needs {req!r}", key=True)

    given = dict(spec)  # the settings left to check: a wrong one is reported once, then dropped
    for k in ("model", "prompt", "system", "provider", "base_url", "api_key_env", "cassette"):
        if k in spec:
            with c.collect() as section:
                c.text(spec[k], (*path, k))
            if section.failed:
                del given[k]
    # a template's value is known only when the node runs: check the template now, the value then
    templated = [k for k, v in given.items() if isinstance(v, str) and templates.is_template(v)]
    for k in templated:
        c.template(spec[k], (*path, k), state, foreach=foreach)
    model = given.get("model")
    if model is not None and not model.strip():
        c.report((*path, "model"), "the model is empty", hint="e.g. `model: gpt-4o-mini`")
    # the provider the node will call, if the file says: None when a template picks it
    provider: str | None = None
    if "provider" in spec:
        if "provider" in given and "provider" not in templated:
            with c.collect():
                provider = c.choice(
                    given["provider"], (*path, "provider"), PROVIDERS, "llm provider"
                )
    elif model is not None and "model" not in templated:
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
        with c.collect():
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
        with c.collect():
            if isinstance(spec["max_tokens"], str):
                _unquote(c, spec["max_tokens"], (*path, "max_tokens"), "max_tokens: 200")
            c.pos_int(spec["max_tokens"], (*path, "max_tokens"))
    if "json" in spec and "json" not in templated:
        v = spec["json"]
        if not isinstance(v, bool):
            c.report(
                (*path, "json"),
                f"expected true or false, not {v!r}",
                hint="write `json: true` (no quotes) to parse the reply as JSON",
            )
    if "base_url" in given and "base_url" not in templated:
        url = urlsplit(given["base_url"])
        if url.scheme not in ("http", "https") or not url.hostname:
            c.report(
                (*path, "base_url"),
                f"not an http(s) URL: {given['base_url']!r}",
                hint="e.g. `base_url: http://localhost:8000/v1`",
            )
    if "api_key_env" in given and "api_key_env" not in templated:
        name = given["api_key_env"]
        if not ENV_NAME.match(name):
            c.report(
                (*path, "api_key_env"),
                f"not an environment variable name: {masked(name)}",
                hint="name the variable that holds the key (e.g. OPENAI_API_KEY), not the key",
            )
    if provider == "replay":
        for k in LIVE_ONLY:
            if k in spec:
                c.report(
                    (*path, k),
                    f"{k} is not used by provider replay",
                    key=True,
                    label=path,
                    hint="replay answers from its cassette; remove it or change the provider",
                )
    if "cassette" in spec and not replay_possible:
        which = f"provider {provider}" if provider else "this node's provider"
        c.report(
            (*path, "cassette"),
            f"cassette is read only by provider replay, not by {which}",
            key=True,
            label=path,
            hint="add `provider: replay`; to record a cassette, pass --llm-record FILE",
        )
    return spec


def reply_used(
    c: Checker,
    node: Mapping[str, Any],
    body: Any,
    path: Path,
    state: Mapping[str, StateKey],
) -> None:
    """Report an ``llm`` node without ``save`` whose reply could never reach the state.

    Without ``save`` a node's result is merged as a delta, so it must be a JSON object
    of declared state keys: the reply text never is, so such a node needs ``json: true``
    (or a template that may give it), and a workflow without state keys has nothing
    the reply could write. Only ``json: true`` replies' keys are left to the run.
    """
    if "save" in node or not isinstance(body, dict):
        return
    as_json = body.get("json", False)
    if as_json is True or (isinstance(as_json, str) and templates.is_template(as_json)):
        if not state:
            c.report(
                path,
                "the reply is never used: without `save` it must be a JSON object of state"
                " keys, and the workflow declares none",
                key=True,
                hint="declare the key under `state:` and add `save: KEY` to the node",
            )
        return
    if as_json is False:
        c.report(
            path,
            "the reply is never used: an llm node without `save` merges its result as"
            " state keys, and reply text is not a mapping",
            key=True,
            hint="add `save: KEY` to store the reply, or `json: true` for a JSON object"
            " of state keys",
        )


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
