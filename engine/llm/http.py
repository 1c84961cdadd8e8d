"""One JSON POST with the retries every LLM API wants: 429, 5xx and timeouts.

``Retry-After`` (seconds or an HTTP date) and OpenAI's ``retry-after-ms`` are
honoured. Every message this module makes, text the server sent back included,
is masked by the run's :class:`~flowrun.engine.secrets.Masker` (which knows the
API key) before it is cut to length, so no key, whole or in part, reaches the
database or logs.

A try whose request went out whole but brought back no usable reply (no reply
within the time left, the connection dropped after sending, a 2xx body that is not
a JSON object or is cut short) may well have been billed: ``on_lost`` hears of it
the moment the try gives up, before any backoff, so the ledger can count it. A
request that never went out (no connection, a connect timeout) is not billed.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..records import Flag
from ..secrets import Masker
from .base import ProviderError

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
MAX_TRIES = 4  # per node attempt; the node's own retry policy comes on top
BACKOFF_S = 0.25  # doubled per try: 0.25, 0.5, 1 s
MAX_WAIT_S = 120.0  # a longer Retry-After is left to the node's retry policy
DEFAULT_TIMEOUT_S = 600.0


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, if it said."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime or -0000: an HTTP date is GMT, never local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _server_message(response: httpx.Response, masker: Masker) -> str:
    """The error text of an OpenAI- or Anthropic-style error body, else the body's start.

    Masked whole before it is cut: a key the server echoed must not survive in part.
    """
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return _clip(masker.text(str(err["message"])), 300)
        if isinstance(err, str):
            return _clip(masker.text(err), 300)
        if isinstance(data.get("message"), str):
            return _clip(masker.text(str(data["message"])), 300)
    text = masker.text(response.text).strip().replace("\n", " ")
    return _clip(text, 200) or response.reason_phrase


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def post_json(
    client: httpx.Client,
    url: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any],
    deadline: float | None,
    stop: Flag,
    masker: Masker,
    who: str,
    on_lost: Callable[[ProviderError], None] | None = None,
) -> dict[str, Any]:
    """POST ``body``; return the JSON object of a 2xx reply or raise :class:`ProviderError`.

    ``masker`` masks the key in ``headers`` (and the run's other secrets).
    ``on_lost`` is called once per try that was sent but came back without a usable reply.
    """
    import httpx

    # sent whole, nothing usable back: the server may have done (and billed) the work
    after_sending = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)
    err: ProviderError | None = None
    for n in range(1, MAX_TRIES + 1):
        if stop.is_set():
            raise ProviderError(f"{who}: interrupted", retryable=False, reason="interrupted")
        left = DEFAULT_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise err or ProviderError(f"{who}: no time left", retryable=True, reason="timeout")
        try:
            # the whole try may take what is left, but a host that never answers
            # should not hold a connect for minutes
            timeout = httpx.Timeout(left, connect=min(10.0, left))
            response = client.post(url, headers=headers, json=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            err = ProviderError(
                f"{who}: no response within {left:.0f}s", retryable=True, reason="timeout"
            )
            if isinstance(exc, after_sending) and on_lost is not None:
                on_lost(err)
        except httpx.LocalProtocolError as exc:  # e.g. a key httpx cannot put in a header
            msg = masker.text(f"{who}: cannot send the request: {exc or type(exc).__name__}")
            raise ProviderError(msg, retryable=False, reason="config") from None
        except httpx.TransportError as exc:
            if isinstance(exc, after_sending):
                msg = masker.text(
                    f"{who}: the connection broke after the request was sent:"
                    f" {exc or type(exc).__name__}"
                )
                err = ProviderError(msg, retryable=True, reason="llm_reply")
                if on_lost is not None:
                    on_lost(err)
            else:
                msg = masker.text(f"{who}: cannot reach {url}: {exc or type(exc).__name__}")
                err = ProviderError(msg, retryable=True, reason="connect")
        else:
            status = response.status_code
            if 200 <= status < 300:
                try:
                    data = response.json()
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    return data
                err = ProviderError(
                    f"{who}: HTTP {status} reply is not a JSON object",
                    retryable=True,
                    reason="llm_reply",
                )
                if on_lost is not None:
                    on_lost(err)
            else:
                err = ProviderError(
                    f"{who}: HTTP {status}: {_server_message(response, masker)}",
                    retryable=status in RETRY_STATUSES or status >= 500,
                    retry_after=retry_after(response.headers),
                    reason=f"http_{status}",
                )
                if not err.retryable:
                    raise err
        if n == MAX_TRIES:
            break
        wait = err.retry_after if err.retry_after is not None else BACKOFF_S * 2 ** (n - 1)
        if wait > MAX_WAIT_S or (deadline is not None and time.monotonic() + wait >= deadline):
            break
        if stop.wait(wait):
            raise ProviderError(
                f"{who}: interrupted while waiting to retry ({err})",
                retryable=False,
                reason="interrupted",
            )
    assert err is not None
    raise err
