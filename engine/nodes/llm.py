"""``llm:`` nodes: one chat completion; the reply text (or parsed JSON) is the result.

String settings are templates (``prompt`` and ``system`` above all, but ``model``
or ``provider`` may come from the state too). Usage is reported to the cost
ledger the moment a reply arrives, before anything can fail the attempt, so an
attempt that fails afterwards (say, a reply that is not JSON) is still counted;
so is every request that was sent and never usably answered, the moment that try
gives up, as a call of unknown usage.

A call of unknown usage carries bounds for the budget: input tokens at most the
UTF-8 bytes of the system and user text plus ``FRAMING_TOKENS`` (a byte-level BPE
token is at least one byte), output tokens at most ``max_tokens`` (the provider's
default for Anthropic, which requires one; no bound for OpenAI without it).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import jsonvalue
from ..llm import PROVIDERS, CallSite, LLMReply, LLMRequest, ProviderError, session_for
from ..llm.anthropic import DEFAULT_MAX_TOKENS
from ..records import LLMUsage
from ..spec import templates
from ..spec.model import Node
from .base import Context, TaskError, TaskTimeout, template_scope

APIS = ("chat", "responses")
FRAMING_TOKENS = 64  # role markers and message framing around the texts, generously
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(?P<body>.*?)\n?```\s*$", re.DOTALL)


def default_provider(model: str) -> str:
    return "anthropic" if model.startswith("claude") else "openai"


def _config_error(message: str) -> TaskError:
    return TaskError(message, retryable=False, reason="config")


def _text(body: Mapping[str, Any], key: str, scope: dict[str, Any]) -> str | None:
    raw = body.get(key)
    if raw is None:
        return None
    try:
        value = templates.render_text(raw, scope) if isinstance(raw, str) else raw
    except templates.TemplateError as exc:
        raise TaskError(f"llm.{key}: {exc}", retryable=False, reason="template") from None
    if not isinstance(value, str):
        raise _config_error(f"llm.{key} must be a string, got {value!r}")
    return value


def _native(body: Mapping[str, Any], key: str, scope: dict[str, Any]) -> Any:
    raw = body.get(key)
    if isinstance(raw, str):
        try:
            return templates.render(raw, scope)
        except templates.TemplateError as exc:
            raise TaskError(f"llm.{key}: {exc}", retryable=False, reason="template") from None
    return raw


def build_request(body: Mapping[str, Any], scope: dict[str, Any]) -> LLMRequest:
    model = _text(body, "model", scope)
    prompt = _text(body, "prompt", scope)
    if not model or prompt is None:
        raise _config_error("llm needs a model and a prompt")
    temperature = _native(body, "temperature", scope)
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        raise _config_error(f"llm.temperature must be a number, got {temperature!r}")
    max_tokens = _native(body, "max_tokens", scope)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _config_error(f"llm.max_tokens must be a positive integer, got {max_tokens!r}")
    as_json = _native(body, "json", scope)
    if as_json is not None and not isinstance(as_json, bool):
        raise _config_error(f"llm.json must be true or false, got {as_json!r}")
    api = _text(body, "api", scope) or "chat"
    if api not in APIS:
        raise _config_error(f"llm.api must be one of {', '.join(APIS)}, got {api!r}")
    return LLMRequest(
        model=model,
        prompt=prompt,
        system=_text(body, "system", scope),
        temperature=None if temperature is None else float(temperature),
        max_tokens=max_tokens,
        json=bool(as_json),
        api=api,
    )


def token_bounds(request: LLMRequest, provider: str) -> tuple[int, int | None]:
    """At most how many input and output tokens ``request`` can be billed (None: no bound)."""
    texts = (request.system or "") + request.prompt
    bound_in = len(texts.encode("utf-8")) + FRAMING_TOKENS
    bound_out = request.max_tokens
    if bound_out is None and provider == "anthropic":
        bound_out = DEFAULT_MAX_TOKENS  # what the provider sends when the node sets none
    return bound_in, bound_out


def parse_json_reply(text: str) -> Any:
    """The reply as JSON; a Markdown code fence around it is tolerated."""
    body = text.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group("body").strip()
    try:
        return jsonvalue.loads(body)
    except jsonvalue.JSONValueError as exc:
        raise TaskError(
            f"the reply is not usable JSON: {exc}", retryable=True, reason="llm_json"
        ) from None
    except json.JSONDecodeError as exc:
        shown = body if len(body) <= 80 else body[:77] + "..."
        raise TaskError(
            f"the reply is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {shown!r}",
            retryable=True,
            reason="llm_json",
        ) from None


def report(
    ctx: Context,
    reply: LLMReply | None,
    request: LLMRequest,
    provider: str,
    bounds: tuple[int, int | None],
) -> None:
    """Hand a billed call to the cost ledger: a reply's usage, or (``reply`` None: sent,
    never usably answered) unknown usage; unknown usage stays unknown, with its bounds."""
    u = None if reply is None else reply.usage
    served = None if reply is None else reply.model or None
    ctx.report_usage(
        LLMUsage(
            model=request.model,
            tokens_in=None if u is None else u.tokens_in,
            tokens_out=None if u is None else u.tokens_out,
            cached=None if u is None else u.cached,
            cache_write=None if u is None else u.cache_write,
            provider=provider if reply is None else reply.provider,
            attempt=ctx.attempt,
            cache_write_1h=None if u is None else u.cache_write_1h,
            served_model=served,
            bound_in=bounds[0] if u is None else None,
            bound_out=bounds[1] if u is None else None,
            reasoning=None if u is None else u.reasoning,
        )
    )


def run_llm(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
    body: Mapping[str, Any] = node.body
    scope = template_scope(state, ctx)
    request = build_request(body, scope)
    settings = ctx.scope.settings
    replay_all = settings.get("llm_replay")
    name = "replay" if replay_all else (_text(body, "provider", scope) or "")
    name = name or default_provider(request.model)
    if name not in PROVIDERS:
        raise _config_error(f"unknown llm provider {name!r} (one of: {', '.join(PROVIDERS)})")
    base = Path(ctx.scope.base_dir)
    cassette = _text(body, "cassette", scope)
    record = settings.get("llm_record")
    if ctx.scope.over_budget.is_set():
        raise TaskError("not called: the run's budget is spent", retryable=False, reason="budget")
    session = session_for(ctx.scope)
    live = _text(body, "provider", scope) or default_provider(request.model)  # even on replay
    bounds = token_bounds(request, live)

    def lost(exc: ProviderError) -> None:  # sent, never usably answered: billed all the same
        report(ctx, None, request, name, bounds)
        if ctx.scope.over_budget.is_set():  # no retry inside the attempt either
            raise TaskError(
                f"{exc}; not tried again: the run's budget is spent",
                retryable=False,
                reason="budget",
            )

    try:
        provider = session.provider(
            name,
            base_url=_text(body, "base_url", scope),
            api_key_env=_text(body, "api_key_env", scope),
            cassette=Path(replay_all) if replay_all else (base / cassette if cassette else None),
            record=Path(record) if record and name != "replay" else None,
            at=CallSite(ctx.step, ctx.node, ctx.index, ctx.attempt),
            masker=ctx.scope.masker,
            on_lost=lost,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        reply = provider.complete(request, deadline=deadline, stop=ctx.scope.stop)
    except ProviderError as exc:
        if exc.reply is not None:
            report(ctx, exc.reply, request, name, bounds)
        if exc.reason == "timeout" and timeout is not None:
            raise TaskTimeout(f"timed out after {timeout:g}s: {exc}") from None
        raise TaskError(
            str(exc), retryable=exc.retryable, retry_after=exc.retry_after, reason=exc.reason
        ) from None
    report(ctx, reply, request, name, bounds)
    text = ctx.scope.masker.text(reply.text)  # before a parse error can quote it cut short
    if request.json:
        return parse_json_reply(text)
    return text
