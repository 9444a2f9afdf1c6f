"""The API client: one openai `AsyncOpenAI` per run and endpoint, on the aiohttp transport, SDK retries off.

`ApiClient.send` makes exactly one HTTP call (through the `DefaultAioHttpClient` built here, the SDK's
own aiohttp transport) and returns the parsed JSON body and the response headers; it raises the SDK's
public exception types (status errors built with their public constructors, as the SDK builds them), or
`failures.MalformedResponse` / `failures.RequestTimeout`. What a failure means is `failures.classify`'s call.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import httpx2  # the openai SDK's HTTP layer (its aiohttp transport plugs in below it)
import openai

from ..spec.endpoints import Endpoint as Endpoint  # where it lives; imported from here by the runner
from ..spec.endpoints import resolve_endpoint as resolve_endpoint
from .clock import RunClock
from .failures import MalformedResponse, RequestTimeout, StalledResponse

# The SDK's exception class for each status (`openai._client._make_status_error`), built here the same way.
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def make_client(endpoint: Endpoint, timeout: float, connections: int, clock: RunClock | None = None) -> ApiClient:
    """One client per run and endpoint: aiohttp transport, pool sized to the concurrency, SDK retries off.
    With a `clock`, the whole-request deadline counts only time the process ran."""
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    http = openai.DefaultAioHttpClient(timeout=timeout, limits=limits)
    sdk = openai.AsyncOpenAI(
        api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=0, timeout=timeout, http_client=http
    )
    return ApiClient(sdk, http, timeout, clock or RunClock())


class ApiClient:
    """An `openai.AsyncOpenAI`, the `DefaultAioHttpClient` it sends through, and the hot path.

    `send` hands a prepared request to that HTTP client (the very call `AsyncOpenAI.request` ends in)
    and raises the SDK's public exception types. What it skips is the SDK's per-call request assembly
    (options model, header merge, URL parse), the same for every call of a run: the URL and headers (the
    SDK's default and auth headers) are worked out once here. Measured with the fake server at 500
    requests/s: 0.31 ms of CPU per request against 0.64 ms through `client.post`, which on a 2-core
    machine is the difference between the event loop keeping up with the answers and answers waiting
    for it (scripts/bench_throughput.py).
    """

    def __init__(
        self, sdk: openai.AsyncOpenAI, http: openai.DefaultAioHttpClient, timeout: float, clock: RunClock
    ) -> None:
        self.sdk = sdk
        self.timeout = timeout
        self.clock = clock
        # Only connecting has a timeout of its own (nothing is bought before the request is sent); the
        # rest is the whole-request deadline's, which does not count time the process was stopped.
        self._extensions = {"timeout": {"connect": timeout, "read": None, "write": None, "pool": None}}
        self._http = http
        base = str(sdk.base_url)  # the SDK keeps it with a trailing slash
        self._urls = {"chat": httpx2.URL(base + "chat/completions"), "completions": httpx2.URL(base + "completions")}
        headers = {**sdk.default_headers, **sdk.auth_headers}
        self._headers = {name: value for name, value in headers.items() if isinstance(value, str)}

    async def send(self, api: str, body: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, str]]:
        """One API call with `body` ({"model", "messages"|"prompt", **args}); returns (JSON body, headers).

        The body goes out as stored (it was rendered and validated at create time), and the response
        is parsed here, not into SDK models. `timeout` bounds connecting, and the whole request, so a
        body trickling in a byte at a time cannot hold a worker; time the process was stopped (Ctrl-Z,
        a laptop lid) does not count, so an answer that arrived meanwhile is read, not thrown away.
        """
        request = httpx2.Request(
            "POST",
            self._urls[api],
            headers=self._headers,
            content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            extensions=self._extensions,
        )
        headers_in = False
        try:
            async with self.clock.deadline(self.timeout):
                response = await self._http.send(request, stream=True)
                headers_in = True
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            if headers_in:  # it answers, but never all of it: a bad answer, not an outage
                raise StalledResponse(f"the response's headers came, its body not within {self.timeout:g} s") from None
            raise RequestTimeout(f"no complete response within {self.timeout:g} s") from None
        except _CONNECTION_ERRORS as exc:
            raise connection_error(exc, request) from exc
        if response.status_code >= 400:
            raise status_error(response)
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedResponse(f"response body is not valid JSON: {exc}") from None
        return data, response.headers

    async def close(self) -> None:
        await self.sdk.close()


# What the SDK turns into `APIConnectionError` (its anyio TLS shim does not apply to the aiohttp transport).
_CONNECTION_ERRORS = (httpx2.RequestError, ssl.SSLError)


def connection_error(exc: BaseException, request: httpx2.Request) -> openai.APIConnectionError:
    """The SDK's connection error for a failed send, saying what happened. (The aiohttp transport reports
    a refused connection as a connect *timeout*: the cause tells them apart.)"""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return openai.APIConnectionError(message=f"connection refused by {_host(request)}", request=request)
        if isinstance(cause, socket.gaierror):
            return openai.APIConnectionError(message=f"cannot resolve host {_host(request)}", request=request)
        if isinstance(cause, ssl.SSLError):
            return openai.APIConnectionError(message=f"TLS error with {_host(request)}: {cause}", request=request)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx2.TimeoutException):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(message=f"connection to {_host(request)} failed: {exc}", request=request)


def _host(request: httpx2.Request) -> str:
    port = f":{request.url.port}" if request.url.port else ""
    return f"{request.url.host}{port}"


def status_error(response: httpx2.Response) -> openai.APIStatusError:
    """The SDK's exception for an error response, built with its public constructor as the SDK builds it:
    the message `Error code: N - <the error's message>`, `body` the error object of the JSON body."""
    message = f"Error code: {response.status_code}"
    text = response.text.strip()
    body: object = text
    with contextlib.suppress(ValueError):
        body = json.loads(text)
    data = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
        message += f" - {data['message']}"
    cls = _STATUS_ERRORS.get(response.status_code)
    if cls is None:
        cls = openai.InternalServerError if response.status_code >= 500 else openai.APIStatusError
    return cls(message, response=response, body=data)


def split_choices(data: Any, n: int, prompts: int) -> list[list[dict[str, Any]] | None]:
    """Each prompt's choices (prompt i, sample j is index i*n + j), or None for a prompt whose n choices
    are not all there (a server may drop some: the rest of a packed answer is still good).

    Raises `MalformedResponse` when the body has no choices list, or an index that is not an integer,
    out of range or repeated: then which choice belongs to which prompt cannot be trusted at all.
    """
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise MalformedResponse("response has no choices list")
    choices = data["choices"]
    if not all(isinstance(c, dict) and type(c.get("index")) is int for c in choices):
        raise MalformedResponse("response choices lack an integer index")
    by_index = {c["index"]: c for c in choices}
    if len(by_index) != len(choices) or not all(0 <= i < n * prompts for i in by_index):
        indexes = sorted(c["index"] for c in choices)
        raise MalformedResponse(
            f"response has {len(choices)} choices with indexes {indexes[:6]}..., expected {n * prompts} (0..)"
        )
    parts: list[list[dict[str, Any]] | None] = []
    for i in range(prompts):
        own = [by_index.get(i * n + j) for j in range(n)]
        parts.append(None if None in own else [c for c in own if c is not None])
    return parts
