"""Loopback LLM servers speaking the real wire protocols, for tests that cannot pay an API.

``OpenAIServer`` answers ``POST /v1/chat/completions`` as OpenAI does (bearer auth,
``usage.prompt_tokens_details.cached_tokens``) and ``POST /v1/responses`` as its
Responses API does (``output[].content[].text``, ``usage.input_tokens_details``,
``output_tokens_details.reasoning_tokens``); ``AnthropicServer`` answers
``POST /v1/messages`` as Anthropic does (``x-api-key``, ``anthropic-version``,
``cache_read_input_tokens``/``cache_creation_input_tokens``). Each serves a script
of :class:`Reply` objects first (429 with Retry-After, 500s, odd bodies), then
default answers, and logs every request and the usage it returned, so a test can
compare the cost ledger with what the "provider" actually billed. A script may also
drop the connection after reading a request, cut a 200 body short, or answer late;
such a request is still billed (``Served.charged``) but its usage never reaches the
client (``Served.usage`` None), as with a real provider.

Each can also keep its own bill: give it the providers' published prices
(:class:`RateCard` per model) and :attr:`_Server.billed_usd` is what it would charge
for the usage it returned (long-context tier, cache reads, 5-minute and 1-hour cache
writes, reasoning as output), computed here, apart from flowrun's pricing.

Only 127.0.0.1, on a free port; a server lives for a ``with`` block.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
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
    raw: str | None = None  # send this body verbatim (with ``status``, an error body)
    message: str | None = None  # the error message of a non-200 reply (else "scripted <status>")
    drop: bool = False  # read the request, do the (billed) work, close without a reply
    cut: bool = False  # a 200 whose body stops halfway (the connection closes)
    delay: float = 0.0  # seconds before answering (past the client's timeout: it never sees it)
    served_model: str | None = None  # the model the reply names (default: the server's rule)
    reasoning: int = 0  # of tokens_out, reasoning tokens (the Responses API reports them)
    model: str | None = None  # the same as served_model (either may be given)


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
    usage: dict[str, int] | None  # what reached the client, normalised: tokens_in (all input),
    # tokens_out, cached, ...; None: no usage reached it
    charged: dict[str, int] | None = None  # what the provider billed, delivered or not
    model: str | None = None  # the model the reply named
    requested: str = ""  # the model the request named


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
        self._tl = threading.local()  # the usage billed for the request this thread handles
        self._busy = 0  # requests being handled (a late reply may outlive the client's wait)
        self._idle = threading.Condition()
        self._n = 0

    # lifecycle ----------------------------------------------------------------
    def __enter__(self) -> _Server:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                with server._idle:
                    server._busy += 1
                try:
                    self._post()
                finally:
                    with server._idle:
                        server._busy -= 1
                        server._idle.notify_all()

            def _post(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                status, headers, body, reply, served = server.handle(
                    self.path, dict(self.headers), raw
                )
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop or (reply.delay and _closed(self.connection)):
                    served.usage = None  # the work was done (and billed); nobody got it
                    self.close_connection = True
                    return
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if reply.cut:
                    served.usage = None
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up while the reply was late
                    served.usage = None

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
    def received(self) -> int:
        """Requests read in full (each one a call the client must count)."""
        with self._lock:
            return len(self.served)

    def settle(self, timeout: float = 30) -> None:
        """Wait until no request is being handled, so the ledger above is final."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._busy == 0, timeout):
                raise TimeoutError("the loopback server is still answering")

    @property
    def charged_unseen(self) -> int:
        """Requests billed whose usage never reached the client."""
        with self._lock:
            return sum(1 for s in self.served if s.usage is None and s.charged is not None)

    @property
    def billed_usd(self) -> Fraction:
        """What this provider would charge for the usage it returned, by its rate cards."""
        with self._lock:
            served = [s for s in self.served if s.usage is not None]
        return sum((self.rates[s.requested].bill(s.usage) for s in served if s.usage), Fraction(0))

    # one request ----------------------------------------------------------------
    def handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], str, Reply, Served]:
        headers = {k.lower(): v for k, v in headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self._lock:
            self._n += 1
            n = self._n
            reply = self.script.pop(0) if self.script else Reply()
        self._tl.charged = None
        status, out_headers, text, usage = self.respond(n, path, headers, body, reply)
        model = None
        with contextlib.suppress(ValueError, AttributeError):
            model = json.loads(text).get("model")
        served = Served(
            path,
            headers,
            body,
            time.monotonic(),
            status,
            usage,
            self._tl.charged or usage,
            model,
            str(body.get("model", "")),
        )
        with self._lock:
            self.served.append(served)
        return status, out_headers, text, reply, served

    def respond(
        self, n: int, path: str, headers: dict[str, str], body: dict[str, Any], reply: Reply
    ) -> tuple[int, dict[str, str], str, dict[str, int] | None]:
        raise NotImplementedError

    def _usage(self, reply: Reply, prompt: str, text: str) -> dict[str, int]:
        if reply.usage is not None:
            u = dict(reply.usage)
            u.setdefault("cached", 0)
            u.setdefault("cache_write", 0)
        else:
            u = {
                "tokens_in": 20 + words(prompt) + self.cached + self.cache_write,
                "tokens_out": words(text) + reply.reasoning,
                "cached": self.cached,
                "cache_write": self.cache_write,
            }
        self._tl.charged = u  # billed whatever happens to the reply
        return u


def _closed(conn: socket.socket) -> bool:
    """Whether the client closed its end (readable, and nothing to read)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class OpenAIServer(_Server):
    path = "/v1/chat/completions"
    responses_path = "/v1/responses"

    def _response(
        self, n: int, body: dict[str, Any], reply: Reply
    ) -> tuple[int, dict[str, str], str, dict[str, int] | None]:
        """A ``POST /v1/responses`` reply, as OpenAI's Responses API writes it."""
        user = body["input"] if isinstance(body["input"], str) else json.dumps(body["input"])
        prompt = f"{body.get('instructions') or ''} {user}"
        text = reply.text if reply.text is not None else self.answer(body["model"], user)
        usage = self._usage(reply, prompt, text)
        if reply.raw is not None:
            return 200, dict(reply.headers), reply.raw, None
        doc: dict[str, Any] = {
            "id": f"resp_{n:032x}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": reply.served_model or reply.model or f"{body['model']}-2025-04-14",
            "output": [
                {"type": "reasoning", "id": f"rs_{n:032x}", "summary": []},
                {
                    "type": "message",
                    "id": f"msg_{n:032x}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                },
            ],
            "parallel_tool_calls": True,
            "store": body.get("store", True),
        }
        if not reply.omit_usage:
            doc["usage"] = {
                "input_tokens": usage["tokens_in"],
                "input_tokens_details": {"cached_tokens": usage["cached"]},
                "output_tokens": usage["tokens_out"],
                "output_tokens_details": {"reasoning_tokens": reply.reasoning},
                "total_tokens": usage["tokens_in"] + usage["tokens_out"],
            }
        return 200, dict(reply.headers), json.dumps(doc), None if reply.omit_usage else usage

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def respond(
        self, n: int, path: str, headers: dict[str, str], body: dict[str, Any], reply: Reply
    ) -> tuple[int, dict[str, str], str, dict[str, int] | None]:
        def error(status: int, message: str, kind: str) -> tuple[int, dict[str, str], str, None]:
            doc = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            return status, dict(reply.headers), json.dumps(doc), None

        if path not in (self.path, self.responses_path):
            return error(404, f"Unknown request URL: POST {path}", "invalid_request_error")
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}":
                given = auth.removeprefix("Bearer ")
                # OpenAI echoes (part of) the key it got: the client must never log it.
                return error(401, f"Incorrect API key provided: {given}.", "invalid_request_error")
        if path == self.responses_path:
            if not body.get("model") or not isinstance(body.get("input"), str | list):
                return error(400, "Missing required parameter: 'input'.", "invalid_request_error")
            if "messages" in body:
                return error(400, "Unknown parameter: 'messages'.", "invalid_request_error")
        messages = body.get("messages")
        if path == self.path and (
            not body.get("model") or not isinstance(messages, list) or not messages
        ):
            return error(400, "you must provide a model parameter", "invalid_request_error")
        if reply.status != 200 and reply.raw is not None:
            return reply.status, dict(reply.headers), reply.raw, None
        if reply.status != 200:
            kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
            return error(reply.status, reply.message or f"scripted {reply.status}", kind)
        if path == self.responses_path:
            return self._response(n, body, reply)
        if reply.raw is not None:
            prompt = " ".join(str(m.get("content", "")) for m in messages)
            self._usage(reply, prompt, reply.raw)  # the work was done and billed
            return 200, dict(reply.headers), reply.raw, None
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        user = str(messages[-1].get("content", ""))
        text = reply.text if reply.text is not None else self.answer(body["model"], user)
        usage = self._usage(reply, prompt, text)
        doc: dict[str, Any] = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.served_model or reply.model or f"{body['model']}-2024-07-18",
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
        if reply.status != 200 and reply.raw is not None:
            return reply.status, dict(reply.headers), reply.raw, None
        if reply.status != 200:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(reply.status, "api_error")
            return error(reply.status, reply.message or f"scripted {reply.status}", kind)
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
            "model": reply.served_model or reply.model or body["model"],
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
