"""Loopback LLM servers speaking the real wire protocols, for tests that cannot pay an API.

``OpenAIServer`` answers ``POST /v1/chat/completions`` as OpenAI does (bearer auth,
``usage.prompt_tokens_details.cached_tokens``); ``AnthropicServer`` answers
``POST /v1/messages`` as Anthropic does (``x-api-key``, ``anthropic-version``,
``cache_read_input_tokens``/``cache_creation_input_tokens``). Each serves a script
of :class:`Reply` objects first (429 with Retry-After, 500s, odd bodies), then
default answers, and logs every request and the usage it returned, so a test can
compare the cost ledger with what the "provider" actually billed.

Each can also keep its own bill: give it the providers' published prices
(:class:`RateCard` per model) and :attr:`_Server.billed_usd` is what it would charge
for the usage it returned (long-context tier, cache reads, 5-minute and 1-hour cache
writes, reasoning as output), computed here, apart from flowrun's pricing.

Only 127.0.0.1, on a free port; a server lives for a ``with`` block.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted response. ``text`` None: the default answer; ``usage`` None: computed."""

    status: int = 200
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # tokens_in/tokens_out/cached/cache_write, and cache_write_1h (of cache_write) and
    # reasoning (of tokens_out)
    usage: dict[str, int] | None = None
    omit_usage: bool = False
    raw: str | None = None  # send this body verbatim
    model: str | None = None  # the model the reply names (default: as the server names it)


@dataclass(frozen=True)
class RateCard:
    """A model's published prices in USD per million tokens (decimal strings), as the
    provider's bill applies them: above ``above`` prompt tokens (all input, cache reads
    and writes included) the whole call is billed at ``long``'s rates."""

    input: str
    output: str
    cached: str | None = None  # cache reads; default: input
    write: str | None = None  # 5-minute cache writes; default: input
    write_1h: str | None = None  # 1-hour cache writes; default: write
    above: int | None = None
    long: RateCard | None = None

    def bill(self, u: dict[str, int]) -> Fraction:
        if self.above is not None and self.long is not None and u["tokens_in"] > self.above:
            return self.long.bill(u)
        f = Fraction
        write = self.write or self.input
        hour = u.get("cache_write_1h", 0)
        plain = u["tokens_in"] - u["cached"] - u["cache_write"]
        return (
            plain * f(self.input)
            + u["cached"] * f(self.cached or self.input)
            + (u["cache_write"] - hour) * f(write)
            + hour * f(self.write_1h or write)
            + u["tokens_out"] * f(self.output)  # reasoning tokens are inside tokens_out
        ) / 1_000_000


@dataclass
class Served:
    """What one request got: its body, when it came, the status and the usage billed."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    status: int
    usage: dict[str, int] | None  # normalised: tokens_in (all input), tokens_out, cached, ...
    model: str = ""  # as the request named it


def words(text: str) -> int:
    return len(text.split())


class _Server:
    path = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        script: list[Reply] | None = None,
        answer: Callable[[str, str], str] | None = None,
        cached: int = 0,
        cache_write: int = 0,
        rates: dict[str, RateCard] | None = None,
    ) -> None:
        self.api_key = api_key
        self.rates = dict(rates or {})
        self.script = list(script or [])
        self.answer = answer or (lambda model, prompt: f"{model} says: {prompt[:48]}")
        self.cached = cached
        self.cache_write = cache_write
        self.served: list[Served] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._n = 0

    # lifecycle ----------------------------------------------------------------
    def __enter__(self) -> _Server:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                status, headers, body = server.handle(self.path, dict(self.headers), raw)
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def billed(self) -> list[dict[str, int]]:
        """Usage of every response that carried usage, in arrival order."""
        with self._lock:
            return [s.usage for s in self.served if s.usage is not None]

    @property
    def billed_usd(self) -> Fraction:
        """What this provider would charge for the usage it returned, by its rate cards."""
        with self._lock:
            served = [s for s in self.served if s.usage is not None]
        return sum((self.rates[s.model].bill(s.usage) for s in served if s.usage), Fraction(0))

    # one request ----------------------------------------------------------------
    def handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], str]:
        headers = {k.lower(): v for k, v in headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self._lock:
            self._n += 1
            n = self._n
            reply = self.script.pop(0) if self.script else Reply()
        status, out_headers, text, usage = self.respond(n, path, headers, body, reply)
        with self._lock:
            model = str(body.get("model", ""))
            self.served.append(Served(path, headers, body, time.monotonic(), status, usage, model))
        return status, out_headers, text

    def respond(
        self, n: int, path: str, headers: dict[str, str], body: dict[str, Any], reply: Reply
    ) -> tuple[int, dict[str, str], str, dict[str, int] | None]:
        raise NotImplementedError

    def _usage(self, reply: Reply, prompt: str, text: str) -> dict[str, int]:
        if reply.usage is not None:
            u = dict(reply.usage)
            u.setdefault("cached", 0)
            u.setdefault("cache_write", 0)
            return u
        return {
            "tokens_in": 20 + words(prompt) + self.cached + self.cache_write,
            "tokens_out": words(text),
            "cached": self.cached,
            "cache_write": self.cache_write,
        }


class OpenAIServer(_Server):
    path = "/v1/chat/completions"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def respond(
        self, n: int, path: str, headers: dict[str, str], body: dict[str, Any], reply: Reply
    ) -> tuple[int, dict[str, str], str, dict[str, int] | None]:
        def error(status: int, message: str, kind: str) -> tuple[int, dict[str, str], str, None]:
            doc = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            return status, dict(reply.headers), json.dumps(doc), None

        if path != self.path:
            return error(404, f"Unknown request URL: POST {path}", "invalid_request_error")
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}":
                given = auth.removeprefix("Bearer ")
                # OpenAI echoes (part of) the key it got: the client must never log it.
                return error(401, f"Incorrect API key provided: {given}.", "invalid_request_error")
        messages = body.get("messages")
        if not body.get("model") or not isinstance(messages, list) or not messages:
            return error(400, "you must provide a model parameter", "invalid_request_error")
        if reply.status != 200:
            kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
            return error(reply.status, f"scripted {reply.status}", kind)
        if reply.raw is not None:
            return 200, dict(reply.headers), reply.raw, None
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        user = str(messages[-1].get("content", ""))
        text = reply.text if reply.text is not None else self.answer(body["model"], user)
        usage = self._usage(reply, prompt, text)
        doc: dict[str, Any] = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or f"{body['model']}-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "system_fingerprint": "fp_loopback",
        }
        if not reply.omit_usage:
            doc["usage"] = {
                "prompt_tokens": usage["tokens_in"],
                "completion_tokens": usage["tokens_out"],
                "total_tokens": usage["tokens_in"] + usage["tokens_out"],
                # both already inside prompt_tokens / completion_tokens, as OpenAI sends them
                "prompt_tokens_details": {
                    "cached_tokens": usage["cached"],
                    "audio_tokens": 0,
                    **(
                        {"cache_write_tokens": usage["cache_write"]} if usage["cache_write"] else {}
                    ),
                },
                "completion_tokens_details": {
                    "reasoning_tokens": usage.get("reasoning", 0),
                    "audio_tokens": 0,
                },
            }
        return 200, dict(reply.headers), json.dumps(doc), None if reply.omit_usage else usage


class AnthropicServer(_Server):
    path = "/v1/messages"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(
        self, n: int, path: str, headers: dict[str, str], body: dict[str, Any], reply: Reply
    ) -> tuple[int, dict[str, str], str, dict[str, int] | None]:
        def error(status: int, message: str, kind: str) -> tuple[int, dict[str, str], str, None]:
            doc = {"type": "error", "error": {"type": kind, "message": message}}
            return status, dict(reply.headers), json.dumps(doc), None

        if path != self.path:
            return error(404, "Not found", "not_found_error")
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            return error(401, "invalid x-api-key", "authentication_error")
        if not headers.get("anthropic-version"):
            return error(400, "anthropic-version: header is required", "invalid_request_error")
        messages = body.get("messages")
        if not body.get("model") or not isinstance(messages, list) or "max_tokens" not in body:
            return error(400, "max_tokens: Field required", "invalid_request_error")
        if reply.status != 200:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(reply.status, "api_error")
            return error(reply.status, f"scripted {reply.status}", kind)
        if reply.raw is not None:
            return 200, dict(reply.headers), reply.raw, None
        user = str(messages[-1].get("content", ""))
        prompt = f"{body.get('system', '')} {user}"
        text = reply.text if reply.text is not None else self.answer(body["model"], user)
        usage = self._usage(reply, prompt, text)
        doc: dict[str, Any] = {
            "id": f"msg_{n:024d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
        }
        if not reply.omit_usage:
            doc["usage"] = {
                # input_tokens excludes cache reads and writes, as Anthropic reports it
                "input_tokens": usage["tokens_in"] - usage["cached"] - usage["cache_write"],
                "cache_creation_input_tokens": usage["cache_write"],
                "cache_read_input_tokens": usage["cached"],
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage["cache_write"]
                    - usage.get("cache_write_1h", 0),
                    "ephemeral_1h_input_tokens": usage.get("cache_write_1h", 0),
                },
                "output_tokens": usage["tokens_out"],
            }
        return 200, dict(reply.headers), json.dumps(doc), None if reply.omit_usage else usage
