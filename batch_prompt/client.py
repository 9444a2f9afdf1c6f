"""The API client: one openai `AsyncOpenAI` per run and endpoint, on the aiohttp transport, SDK retries off.

`ApiClient.send` makes exactly one HTTP call (through the SDK's own HTTP client; see `ApiClient`) and
returns the parsed JSON body and the response headers; it raises the SDK's own exception types, or
`MalformedResponse` when a 200 body is not what was asked for.
`classify` turns an exception into what the runner does about it: retry it, fail the prompt, or stop.
Retry decisions match exception types and status codes, never message strings.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Mapping
from typing import Any

import httpx2  # the openai SDK's HTTP layer (its aiohttp transport plugs in below it)
import openai

from .endpoints import Endpoint as Endpoint  # where it lives now; imported from here by the runner
from .endpoints import resolve_endpoint as resolve_endpoint

RETRIED_STATUS = frozenset({408, 409, 429})
# A 429 whose error code or type says this: retrying cannot help, stop the run.
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})

RETRY, FAIL, FATAL, LOCAL = "retry", "fail", "fatal", "local"
# Servers echo (partly masked) keys in auth errors; nothing key-like is ever stored or printed.
_KEY_LIKE = re.compile(r"\b(sk|key|api[-_]?key)[-_][A-Za-z0-9_*.\-]{6,}", re.IGNORECASE)


class MalformedResponse(Exception):
    """A 200 response whose body is not valid JSON or does not answer the request (retried)."""


class RequestTimeout(Exception):
    """The whole request (connect, send, every read) took longer than its timeout (retried)."""


# What the SDK turns into `APIConnectionError` (openai._httpx2.request_exceptions; its anyio TLS shim does
# not apply to the aiohttp transport).
_CONNECTION_ERRORS = (httpx2.RequestError, ssl.SSLError)


def make_client(endpoint: Endpoint, timeout: float, connections: int) -> ApiClient:
    """One client per run and endpoint: aiohttp transport, pool sized to the concurrency, SDK retries off."""
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    sdk = openai.AsyncOpenAI(
        api_key=endpoint.api_key,
        base_url=endpoint.base_url,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(timeout=timeout, limits=limits),
    )
    return ApiClient(sdk, timeout)


class ApiClient:
    """An `openai.AsyncOpenAI` and the hot path that sends through it.

    `send` hands a prepared request to the SDK client's own HTTP client (httpx2 on the SDK's aiohttp
    transport: the very call `AsyncOpenAI.request` makes) and raises the SDK's own exception types
    (status errors built by the SDK from the response). What it skips is the SDK's per-call request
    assembly (options model, header merge, URL parse), which is the same for every call of a run:
    the URL and headers (the SDK's default and auth headers) are worked out once here. Measured with
    the fake server at 500 requests/s: 0.31 ms of CPU per request against 0.64 ms through
    `client.post`, which on a 2-core machine is the difference between the event loop keeping up
    with the answers and answers waiting for it (scripts/bench_throughput.py).
    """

    def __init__(self, sdk: openai.AsyncOpenAI, timeout: float) -> None:
        self.sdk = sdk
        self.timeout = timeout
        self._extensions = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)}
        self._http = sdk._client  # the httpx2 client (DefaultAioHttpClient) the SDK sends through
        base = str(sdk.base_url)  # the SDK keeps it with a trailing slash
        self._urls = {"chat": httpx2.URL(base + "chat/completions"), "completions": httpx2.URL(base + "completions")}
        headers = {**sdk.default_headers, **sdk.auth_headers}
        self._headers = {name: value for name, value in headers.items() if isinstance(value, str)}

    async def send(self, api: str, body: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, str]]:
        """One API call with `body` ({"model", "messages"|"prompt", **args}); returns (JSON body, headers).

        The body goes out as stored (it was rendered and validated at create time), and the response
        is parsed here, not into SDK models. `timeout` bounds each phase (connect, each read) and also
        the whole request, so a body trickling in a byte at a time cannot hold a worker.
        """
        request = httpx2.Request(
            "POST",
            self._urls[api],
            headers=self._headers,
            content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            extensions=self._extensions,
        )
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http.send(request)
        except TimeoutError:
            raise RequestTimeout(f"no complete response within {self.timeout:g} s") from None
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except _CONNECTION_ERRORS as exc:
            raise openai.APIConnectionError(request=request) from exc
        if response.status_code >= 400:
            raise self.sdk._make_status_error_from_response(response)
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedResponse(f"response body is not valid JSON: {exc}") from None
        return data, response.headers

    async def close(self) -> None:
        await self.sdk.close()


def check_choices(data: Any, expected: int) -> list[dict[str, Any]]:
    """The response's choices, sorted by index, when there are exactly `expected` with indexes 0..expected-1."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise MalformedResponse("response has no choices list")
    choices = data["choices"]
    if not all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        raise MalformedResponse("response choices lack an integer index")
    indexes = sorted(c["index"] for c in choices)
    if indexes != list(range(expected)):
        raise MalformedResponse(f"response has {len(choices)} choices (indexes {indexes[:5]}...), expected {expected}")
    return sorted(choices, key=lambda c: int(c["index"]))


def classify(exc: BaseException) -> str:
    """RETRY (transient), FAIL (the server refused this prompt), FATAL (the server refused the run), or
    LOCAL (not the server's answer at all: something on our side is broken, so the run stops)."""
    if isinstance(
        exc, MalformedResponse | RequestTimeout | openai.APIConnectionError | openai.APIResponseValidationError
    ):
        return RETRY  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            return FATAL
        if status == 429 and (exc.code in QUOTA_CODES or exc.type in QUOTA_CODES):
            return FATAL
        if status in RETRIED_STATUS or status >= 500:
            return RETRY
        return FAIL
    return LOCAL


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, then `retry-after`), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return retry_after_from(headers) if headers is not None else None


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def describe(exc: BaseException) -> str:
    """A one-line error for the database and the summary: type, status, and the server's message."""
    if isinstance(exc, openai.APIStatusError):
        message = exc.message
        if isinstance(exc.body, dict) and isinstance(exc.body.get("message"), str):
            message = exc.body["message"]
        code = f" ({exc.code})" if exc.code else ""
        return redact(f"{type(exc).__name__} {exc.status_code}{code}: {message}")[:500]
    return redact(f"{type(exc).__name__}: {exc}")[:500]


def redact(text: str, key: str | None = None) -> str:
    """`text` with the API key, and anything shaped like one, masked."""
    if key:
        text = text.replace(key, "***")
    return _KEY_LIKE.sub("***", text)


def error_kind(exc: BaseException) -> str:
    """A short key for summaries of errors by type."""
    if isinstance(exc, openai.APIStatusError):
        return f"{type(exc).__name__} {exc.status_code}"
    return type(exc).__name__
