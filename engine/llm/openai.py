"""Provider ``openai``: any OpenAI-compatible chat-completions endpoint, or the Responses API.

OpenAI itself, vLLM, Ollama, llama.cpp's server, a LiteLLM proxy. A request with
``api: responses`` goes to ``POST /responses`` (OpenAI's newer API) instead of
``POST /chat/completions``. ``base_url``
defaults to ``OPENAI_BASE_URL`` and then to OpenAI; the key comes from the
environment variable ``api_key_env`` names (default ``OPENAI_API_KEY``), as the
OpenAI SDK reads them. A local server needs no key.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..records import Flag
from ..secrets import Masker
from .base import LLMReply, LLMRequest, LostCall, ProviderError, Usage, is_count, token_count
from .http import post_json

if TYPE_CHECKING:
    import httpx

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def parse_usage(data: Any) -> Usage | None:
    """``usage`` of a chat completion.

    ``prompt_tokens`` already includes the cache reads (``prompt_tokens_details.
    cached_tokens``) and writes (``cache_write_tokens``), and ``completion_tokens`` the
    reasoning tokens (``completion_tokens_details.reasoning_tokens``), so none of them
    is counted twice. Without both counts the usage is unknown (None), never zero.
    """
    if not isinstance(data, dict) or not (
        is_count(data.get("prompt_tokens")) and is_count(data.get("completion_tokens"))
    ):
        return None
    prompt = data.get("prompt_tokens_details")
    prompt = prompt if isinstance(prompt, dict) else {}
    completion = data.get("completion_tokens_details")
    completion = completion if isinstance(completion, dict) else {}
    return Usage(
        token_count(data.get("prompt_tokens")),
        token_count(data.get("completion_tokens")),
        token_count(prompt.get("cached_tokens")),
        token_count(prompt.get("cache_write_tokens")),
        0,
        token_count(completion.get("reasoning_tokens")),
    )


def parse_responses_usage(data: Any) -> Usage | None:
    """``usage`` of a Responses API reply: ``input_tokens`` includes the cached ones
    (``input_tokens_details.cached_tokens``); ``output_tokens`` includes the reasoning
    tokens (``output_tokens_details.reasoning_tokens``), billed at the output rate.

    Without both counts the usage is unknown (None), never zero.
    """
    if not isinstance(data, dict) or not (
        is_count(data.get("input_tokens")) and is_count(data.get("output_tokens"))
    ):
        return None
    details = data.get("input_tokens_details") or {}
    cached = token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        token_count(data.get("input_tokens")), token_count(data.get("output_tokens")), cached
    )


def responses_text(data: dict[str, Any]) -> str | None:
    """The reply text of a Responses API reply: its ``output_text`` parts, in order.

    None when the output holds no message text (a refusal, or only reasoning).
    """
    output = data.get("output")
    if not isinstance(output, list):
        return None
    parts = [
        str(part.get("text") or "")
        for item in output
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    return "".join(parts) if parts else None


def _refusal(data: dict[str, Any]) -> str | None:
    for item in data.get("output") or []:
        for part in (item.get("content") or []) if isinstance(item, dict) else []:
            if isinstance(part, dict) and part.get("type") == "refusal":
                return str(part.get("refusal") or "")
    return None


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        client: httpx.Client,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        masker: Masker | None = None,
        on_lost: LostCall | None = None,
    ) -> None:
        self.client = client
        self.on_lost = on_lost
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        env = api_key_env or "OPENAI_API_KEY"
        # a key read from a file often ends in a newline, which no header may carry
        self.api_key = (os.environ.get(env) or "").strip() or None
        self.masker = (masker or Masker()).including([self.api_key or ""])
        official = self.base_url.startswith(DEFAULT_BASE_URL)
        if self.api_key is None and (api_key_env or official):
            raise ProviderError(
                f"openai: the environment variable {env} is not set",
                retryable=False,
                reason="config",
            )

    def _post(
        self, path: str, body: dict[str, Any], deadline: float | None, stop: Flag
    ) -> dict[str, Any]:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return post_json(
            self.client,
            f"{self.base_url}/{path}",
            headers=headers,
            body=body,
            deadline=deadline,
            stop=stop,
            masker=self.masker,
            who="openai",
            on_lost=self.on_lost,
        )

    def complete(self, request: LLMRequest, *, deadline: float | None, stop: Flag) -> LLMReply:
        if request.api == "responses":
            return self._respond(request, deadline, stop)
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            # OpenAI's newer models only take max_completion_tokens; compatible servers
            # (vLLM, Ollama, llama.cpp) know max_tokens.
            official = self.base_url.startswith(DEFAULT_BASE_URL)
            body["max_completion_tokens" if official else "max_tokens"] = request.max_tokens
        data = self._post("chat/completions", body, deadline, stop)
        choices = data.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        usage = parse_usage(data.get("usage"))
        model = str(data.get("model") or request.model)
        if not isinstance(content, str):
            refusal = message.get("refusal") if isinstance(message, dict) else None
            raise ProviderError(
                f"openai: the reply has no text{f' (refusal: {refusal})' if refusal else ''}",
                retryable=True,
                reason="llm_reply",
            ).with_reply(LLMReply("", model, usage, self.name))
        return LLMReply(content, model, usage, self.name)

    def _respond(self, request: LLMRequest, deadline: float | None, stop: Flag) -> LLMReply:
        """One ``POST /responses``: stateless (``store: false``), the prompt as its input."""
        body: dict[str, Any] = {"model": request.model, "input": request.prompt, "store": False}
        if request.system:
            body["instructions"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        data = self._post("responses", body, deadline, stop)
        usage = parse_responses_usage(data.get("usage"))
        model = str(data.get("model") or request.model)
        text = responses_text(data)
        if text is None:
            refusal = _refusal(data)
            raise ProviderError(
                f"openai: the reply has no text{f' (refusal: {refusal})' if refusal else ''}",
                retryable=True,
                reason="llm_reply",
            ).with_reply(LLMReply("", model, usage, self.name))
        return LLMReply(text, model, usage, self.name)
