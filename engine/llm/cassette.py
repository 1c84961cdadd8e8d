"""Record and replay: a cassette is a JSON-lines file of request/reply pairs.

Each line is ``{"key", "request", "reply", "recorded_at"}`` plus, when flowrun
recorded it, ``"at"`` (the call site: step, node, foreach index, attempt) and, for
a reply that was billed but unusable (no text), ``"error"``. ``key`` is the
request's digest (:meth:`LLMRequest.digest`), so a reply recorded from any
provider answers the same request under ``provider: replay``. No header, URL or
key is ever written: only the neutral request and the reply with its usage, the
reply's text and failure masked by the run's secrets masker.

Which recording answers is a pure function of the request and its call site, never
of thread timing or of what this process asked before, so a resumed replay goes
on where the recorded run went on: the recording made at the same call site (the
later one if a resume repeated the call there), else the attempt-th recording of
the request (the last once they run out).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..jsonvalue import dumps
from ..records import Flag
from ..secrets import Masker
from .base import CallSite, LLMReply, LLMRequest, Provider, ProviderError, Usage


@dataclass(frozen=True, slots=True)
class Recording:
    """One cassette line: the reply, where it was asked, and the failure it caused if any."""

    reply: LLMReply
    at: CallSite | None = None
    error: dict[str, Any] | None = None  # {"message", "reason", "retryable"}: billed, unusable

    def replayed(self) -> LLMReply:
        """The reply as ``replay`` gives it; raises the recorded failure of an unusable one."""
        reply = LLMReply(self.reply.text, self.reply.model, self.reply.usage, ReplayProvider.name)
        if self.error is not None:
            raise ProviderError(
                str(self.error.get("message") or "replay: a recorded reply was unusable"),
                retryable=bool(self.error.get("retryable", True)),
                reason=str(self.error.get("reason") or "llm_reply"),
            ).with_reply(reply)
        return reply


class CassetteError(Exception):
    """A cassette file that cannot be read; ``line`` is 1-based when known."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class Cassette:
    """The recordings of one cassette file, by request digest, in recorded order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.recordings: dict[str, list[Recording]] = {}
        self._asked: dict[str, int] = {}  # only for callers that give no call site
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
                error = entry.get("error")
                if error is not None and not isinstance(error, dict):
                    raise TypeError("error is not an object")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CassetteError(c.path, f"not a cassette entry ({exc})", n) from None
            recording = Recording(parsed, CallSite.from_json(entry.get("at")), error)
            c.recordings.setdefault(str(key), []).append(recording)
        return c

    def find(self, request: LLMRequest, at: CallSite | None = None) -> Recording | None:
        """The recording that answers ``request`` asked at ``at``.

        The one recorded at the same call site (the later one if a resume repeated
        the call), else the attempt-th recording of the request, the last once they
        are used up. Without a call site: the next recording in order.
        """
        key = request.digest()
        with self._lock:
            recordings = self.recordings.get(key)
            if not recordings:
                return None
            if at is None:
                n = self._asked.get(key, 0)
                self._asked[key] = n + 1
            else:
                same = [r for r in recordings if r.at == at]
                if same:
                    return same[-1]
                n = at.attempt - 1
            return recordings[min(max(n, 0), len(recordings) - 1)]

    def record(
        self,
        request: LLMRequest,
        reply: LLMReply,
        *,
        at: CallSite | None = None,
        error: ProviderError | None = None,
        masker: Masker | None = None,
    ) -> None:
        """Append one pair (flushed at once, so a crash keeps what was recorded)."""
        mask = masker or Masker()
        entry: dict[str, Any] = {
            "key": request.digest(),
            "request": request.to_json(),
            "reply": {**reply.to_json(), "text": mask.text(reply.text)},
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if at is not None:
            entry["at"] = at.to_json()
        if error is not None:
            entry["error"] = {
                "message": mask.text(str(error)),
                "reason": error.reason,
                "retryable": error.retryable,
            }
        line = dumps(entry, compact=False)
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

    def __init__(self, cassette: Cassette, *, at: CallSite | None = None) -> None:
        self.cassette = cassette
        self.at = at

    def complete(self, request: LLMRequest, *, deadline: float | None, stop: Flag) -> LLMReply:
        found = self.cassette.find(request, self.at)
        if found is None:
            prompt = request.prompt if len(request.prompt) <= 60 else request.prompt[:57] + "..."
            raise ProviderError(
                f"replay: cassette {self.cassette.path} has no reply for this request"
                f" (model {request.model}, prompt {prompt!r}, key {request.digest()[:12]});"
                " record it with --llm-record FILE against a live provider",
                retryable=False,
                reason="replay_miss",
            )
        return found.replayed()


class Recorder:
    """Wraps a live provider and writes every billed reply it gets to a cassette.

    A reply that was billed but unusable (no text) is written with the failure it
    caused, so a replay fails that attempt the same way and counts its cost.
    """

    def __init__(
        self,
        inner: Provider,
        cassette: Cassette,
        *,
        at: CallSite | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.inner = inner
        self.cassette = cassette
        self.at = at
        self.masker = masker
        self.name = inner.name

    def complete(self, request: LLMRequest, *, deadline: float | None, stop: Flag) -> LLMReply:
        try:
            reply = self.inner.complete(request, deadline=deadline, stop=stop)
        except ProviderError as exc:
            if exc.reply is not None:
                self.cassette.record(request, exc.reply, at=self.at, error=exc, masker=self.masker)
            raise
        self.cassette.record(request, reply, at=self.at, masker=self.masker)
        return reply
