"""LLM providers over httpx (openai-compatible, anthropic) and record/replay cassettes."""

from __future__ import annotations

from .base import CallSite, LLMReply, LLMRequest, Provider, ProviderError, Usage
from .cassette import Cassette, CassetteError, Recorder, ReplayProvider
from .session import PROVIDERS, Session, session_for

__all__ = [
    "PROVIDERS",
    "CallSite",
    "Cassette",
    "CassetteError",
    "LLMReply",
    "LLMRequest",
    "Provider",
    "ProviderError",
    "Recorder",
    "ReplayProvider",
    "Session",
    "Usage",
    "session_for",
]
