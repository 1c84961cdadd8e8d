"""What LLM calls of one run share: an HTTP connection pool and open cassettes.

A session belongs to a run's :class:`RunScope` and goes away with it. Providers
are built per call from the node's settings; building one is cheap.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..secrets import Masker
from .base import CallSite, LostCall, Provider, ProviderError
from .cassette import Cassette, CassetteError, Recorder, ReplayProvider

if TYPE_CHECKING:
    import httpx

PROVIDERS = ("openai", "anthropic", "replay")


class Session:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._cassettes: dict[tuple[str, str], Cassette] = {}

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    timeout=httpx.Timeout(600.0, connect=10.0),
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                    headers={"user-agent": "flowrun"},
                )
            return self._client

    def cassette(self, path: Path, mode: str) -> Cassette:
        """The run's cassette at ``path``, loaded once (``replay``) or opened to append."""
        key = (str(path.resolve()), mode)
        with self._lock:
            c = self._cassettes.get(key)
            if c is None:
                try:
                    c = Cassette.load(path) if mode == "replay" else Cassette(path)
                except CassetteError as exc:
                    raise ProviderError(
                        f"replay: {exc}", retryable=False, reason="config"
                    ) from None
                self._cassettes[key] = c
            return c

    def provider(
        self,
        name: str,
        *,
        base_url: str | None,
        api_key_env: str | None,
        cassette: Path | None,
        record: Path | None,
        at: CallSite | None = None,
        masker: Masker | None = None,
        on_lost: LostCall | None = None,
    ) -> Provider:
        """The provider for one call; ``at`` (the call's site) picks recordings on replay.

        ``masker`` masks the run's secrets (the provider adds its own key) in the
        provider's errors and in what it records; ``on_lost`` hears of each request
        sent but never usably answered (to be billed).
        """
        inner: Provider
        if name == "replay":
            if cassette is None:
                raise ProviderError(
                    "provider replay needs a cassette: set `cassette:` on the node"
                    " or pass --llm-replay FILE",
                    retryable=False,
                    reason="config",
                )
            return ReplayProvider(self.cassette(cassette, "replay"), at=at)
        if name == "openai":
            from .openai import OpenAIProvider

            openai = OpenAIProvider(
                self.client(),
                base_url=base_url,
                api_key_env=api_key_env,
                masker=masker,
                on_lost=on_lost,
            )
            inner, masker = openai, openai.masker  # the run's secrets and this key
        elif name == "anthropic":
            from .anthropic import AnthropicProvider

            anthropic = AnthropicProvider(
                self.client(),
                base_url=base_url,
                api_key_env=api_key_env,
                masker=masker,
                on_lost=on_lost,
            )
            inner, masker = anthropic, anthropic.masker
        else:
            raise ProviderError(
                f"unknown llm provider {name!r}",
                retryable=False,
                reason="config",
            )
        if record is not None:
            return Recorder(inner, self.cassette(record, "record"), at=at, masker=masker)
        return inner

    def close(self) -> None:
        with self._lock:
            for c in self._cassettes.values():
                c.close()
            self._cassettes.clear()
            if self._client is not None:
                self._client.close()
                self._client = None


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def session_for(scope: Any) -> Session:
    """The session of a run scope (made on first use, closed when the scope is collected)."""
    with _SESSIONS_LOCK:
        s = _SESSIONS.get(scope)
        if s is None:
            s = Session()
            _SESSIONS[scope] = s
            weakref.finalize(scope, s.close)
        return s
