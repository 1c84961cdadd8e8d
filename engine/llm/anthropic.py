"""Provider ``anthropic``: the Messages API (``POST /v1/messages``).

The key comes from ``ANTHROPIC_API_KEY`` (or the variable ``api_key_env`` names);
``base_url`` defaults to ``ANTHROPIC_BASE_URL`` and then to Anthropic.
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

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # the API requires max_tokens


def parse_usage(data: Any) -> Usage | None:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; ``tokens_in`` counts all.

    ``cache_creation_input_tokens`` counts every cache write; ``cache_creation`` splits
    them into 5-minute and 1-hour writes, which are billed at different rates.
    Without both counts the usage is unknown (None), never zero.
    """
    if not isinstance(data, dict) or not (
        is_count(data.get("input_tokens")) and is_count(data.get("output_tokens"))
    ):
        return None
    read = token_count(data.get("cache_read_input_tokens"))
    split = data.get("cache_creation")
    split = split if isinstance(split, dict) else {}
    hour = token_count(split.get("ephemeral_1h_input_tokens"))
    total = data.get("cache_creation_input_tokens")
    write = (
        token_count(total)
        if is_count(total)
        else token_count(split.get("ephemeral_5m_input_tokens")) + hour  # only the split sent
    )
    return Usage(
        token_count(data.get("input_tokens")) + read + write,
        token_count(data.get("output_tokens")),
        read,
        write,
        min(hour, write),
    )


class AnthropicProvider:
    name = "anthropic"

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
        base = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        env = api_key_env or "ANTHROPIC_API_KEY"
        key = (os.environ.get(env) or "").strip()  # no header may carry a trailing newline
        if not key:
            raise ProviderError(
                f"anthropic: the environment variable {env} is not set",
                retryable=False,
                reason="config",
            )
        self.api_key = key
        self.masker = (masker or Masker()).including([key])

    def complete(self, request: LLMRequest, *, deadline: float | None, stop: Flag) -> LLMReply:
        if request.api != "chat":
            raise ProviderError(
                f"anthropic: api {request.api!r} is OpenAI's; the Messages API is the only one",
                retryable=False,
                reason="config",
            )
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        data = post_json(
            self.client,
            self.url,
            headers={
                "content-type": "application/json",
                "x-api-key": self.api_key,
                "anthropic-version": API_VERSION,
            },
            body=body,
            deadline=deadline,
            stop=stop,
            masker=self.masker,
            who="anthropic",
            on_lost=self.on_lost,
        )
        usage = parse_usage(data.get("usage"))
        model = str(data.get("model") or request.model)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise ProviderError(
                "anthropic: the reply has no content", retryable=True, reason="llm_reply"
            ).with_reply(LLMReply("", model, usage, self.name))
        text = "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text"
        )
        return LLMReply(text, model, usage, self.name)
