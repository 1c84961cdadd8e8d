"""Record and replay: a cassette is a JSON-lines file of request/reply pairs.

Each line is ``{"key", "request", "reply", "recorded_at"}``; ``key`` is the
request's digest (:meth:`LLMRequest.digest`), so a reply recorded from any
provider answers the same request under ``provider: replay``. No header, URL or
key is ever written: only the neutral request and the reply with its usage.

A request asked several times (a retry after a reply that was not JSON, say) gets
its recorded replies in order, the last one again once they run out, so a replay
retraces the recorded run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import IO

from .base import LLMReply, LLMRequest, Provider, ProviderError, Usage


class CassetteError(Exception):
    """A cassette file that cannot be read; ``line`` is 1-based when known."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class Cassette:
    """The replies of one cassette file, by request digest, in recorded order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.replies: dict[str, list[LLMReply]] = {}
        self._asked: dict[str, int] = {}
        self._lock = threading.Lock()
        self._out: IO[str] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Cassette:
        c = cls(path)
        try:
            text = c.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CassetteError(c.path, "no such cassette file") from None
        except OSError as exc:
            raise CassetteError(c.path, exc.strerror or str(exc)) from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key, reply = entry["key"], entry["reply"]
                parsed = LLMReply(
                    str(reply["text"]),
                    str(reply.get("model") or entry.get("request", {}).get("model", "")),
                    Usage.from_json(reply.get("usage")),
                    str(reply.get("provider") or "replay"),
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CassetteError(c.path, f"not a cassette entry ({exc})", n) from None
            c.replies.setdefault(str(key), []).append(parsed)
        return c

    def find(self, request: LLMRequest) -> LLMReply | None:
        """The next recorded reply to ``request`` (the last again once they are used up)."""
        key = request.digest()
        with self._lock:
            replies = self.replies.get(key)
            if not replies:
                return None
            n = self._asked.get(key, 0)
            self._asked[key] = n + 1
            return replies[min(n, len(replies) - 1)]

    def record(self, request: LLMRequest, reply: LLMReply) -> None:
        """Append one pair (flushed at once, so a crash keeps what was recorded)."""
        line = json.dumps(
            {
                "key": request.digest(),
                "request": request.to_json(),
                "reply": reply.to_json(),
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        with self._lock:
            if self._out is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None


class ReplayProvider:
    """Answers from a cassette; a request it has not seen fails the attempt for good."""

    name = "replay"

    def __init__(self, cassette: Cassette) -> None:
        self.cassette = cassette

    def complete(
        self, request: LLMRequest, *, deadline: float | None, stop: threading.Event
    ) -> LLMReply:
        reply = self.cassette.find(request)
        if reply is None:
            prompt = request.prompt if len(request.prompt) <= 60 else request.prompt[:57] + "..."
            raise ProviderError(
                f"replay: cassette {self.cassette.path} has no reply for this request"
                f" (model {request.model}, prompt {prompt!r}, key {request.digest()[:12]});"
                " record it with --llm-record FILE against a live provider",
                retryable=False,
                reason="replay_miss",
            )
        return LLMReply(reply.text, reply.model, reply.usage, self.name)


class Recorder:
    """Wraps a live provider and writes every reply it gets to a cassette."""

    def __init__(self, inner: Provider, cassette: Cassette) -> None:
        self.inner = inner
        self.cassette = cassette
        self.name = inner.name

    def complete(
        self, request: LLMRequest, *, deadline: float | None, stop: threading.Event
    ) -> LLMReply:
        reply = self.inner.complete(request, deadline=deadline, stop=stop)
        self.cassette.record(request, reply)
        return reply
