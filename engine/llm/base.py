"""What every LLM provider speaks: a request, a reply with its usage, the Provider protocol.

A request is provider-neutral (model, system, prompt, sampling settings), so a
reply recorded from one provider can be replayed for the same request by the
``replay`` provider; its :meth:`LLMRequest.digest` is the cassette key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..jsonvalue import dumps
from ..records import Flag


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    prompt: str
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    json: bool = False
    api: str = "chat"  # openai: chat (``/chat/completions``) or responses (``/responses``)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.api == "chat":
            del out["api"]  # requests of the chat API keep the keys they were recorded under
        return out

    def digest(self) -> str:
        """SHA-256 of the canonical request: the same question gives the same key anywhere."""
        text = dumps(self.to_json(), ensure_ascii=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_count(value: Any) -> bool:
    """A token count as providers send it: a number, not a bool (``null`` is unknown)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def token_count(value: Any) -> int:
    return int(value) if is_count(value) else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed tokens of one reply. ``tokens_in`` counts every input token, cached ones too."""

    tokens_in: int
    tokens_out: int
    cached: int = 0  # input tokens read from the provider's prompt cache
    cache_write: int = 0  # input tokens written to the cache (Anthropic bills these apart)
    cache_write_1h: int = 0  # of ``cache_write``, those written to the 1-hour cache
    reasoning: int = 0  # of ``tokens_out``, reasoning tokens (billed as output)

    def to_json(self) -> dict[str, int]:
        out = asdict(self)
        for k in ("cache_write_1h", "reasoning"):
            if not out[k]:
                del out[k]  # cassettes without them read as before
        return out

    @staticmethod
    def from_json(data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        try:
            return Usage(
                int(data["tokens_in"]),
                int(data["tokens_out"]),
                int(data.get("cached") or 0),
                int(data.get("cache_write") or 0),
                int(data.get("cache_write_1h") or 0),
                int(data.get("reasoning") or 0),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class CallSite:
    """Where a call is made: the task (step, node, foreach index) and its attempt.

    Deterministic for a run whatever the thread timing, and the same again when a
    resume re-runs the step, so replay chooses recordings by it.
    """

    step: int
    node: str
    index: int | None
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Any) -> CallSite | None:
        if not isinstance(data, dict):
            return None
        try:
            index = data.get("index")
            return CallSite(
                int(data["step"]),
                str(data["node"]),
                None if index is None else int(index),
                int(data["attempt"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class LLMReply:
    text: str
    model: str  # as the provider reported it (may name a dated snapshot)
    usage: Usage | None  # None: the response carried no usage (recorded as unknown, not zero)
    provider: str

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "usage": None if self.usage is None else self.usage.to_json(),
            "provider": self.provider,
        }


class ProviderError(Exception):
    """A call that did not produce a reply; ``retryable`` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        reason: str = "llm_error",
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason = reason
        self.reply: LLMReply | None = None  # a billed reply that was still unusable

    def with_reply(self, reply: LLMReply) -> ProviderError:
        self.reply = reply
        return self


LostCall = Callable[[ProviderError], None]  # hears of a request sent but never usably answered


class Provider(Protocol):
    """A chat-completion backend. ``complete`` gives up by ``deadline`` (monotonic seconds)."""

    name: str

    def complete(self, request: LLMRequest, *, deadline: float | None, stop: Flag) -> LLMReply: ...
