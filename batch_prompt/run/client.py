"""The API client: the live hot path on aiohttp, and the openai SDK's `AsyncOpenAI` for the Batch API.

`ApiClient.send` makes exactly one HTTP call with aiohttp (the transport the SDK's `DefaultAioHttpClient`
sends through), with the headers the SDK sends (`sdk.request_headers`), and returns the parsed JSON body
and the response headers; it raises the SDK's public exception types (built with their public
constructors, as the SDK builds them), or `failures.MalformedResponse` / `failures.RequestTimeout`. What
a failure means is `failures.classify`'s call.

The SDK itself (0.5-1 s to import, 30-40 MB) is imported only when it is needed: to build the exception
for a failed call, or for the Batch API (`ApiClient.sdk`). A live run whose calls succeed never imports
it, so its first request goes out that much sooner.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from ..spec.endpoints import Endpoint as Endpoint  # where it lives; imported from here by the runner
from ..spec.endpoints import resolve_endpoint as resolve_endpoint
from .clock import RunClock
from .failures import MalformedResponse, RequestTimeout, StalledResponse
from .sdk import request_headers

if TYPE_CHECKING:
    import httpx2
    import openai

# The SDK's exception class for each status (`openai._client._make_status_error`), built here the same way.
_STATUS_ERRORS = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    409: "ConflictError", 422: "UnprocessableEntityError", 429: "RateLimitError",
}
KEEPALIVE_SECONDS = 5.0  # how long an idle connection is kept (the SDK's httpx default)


def make_client(endpoint: Endpoint, timeout: float, connections: int, clock: RunClock | None = None) -> ApiClient:
    """One client per run and endpoint: a connection pool sized to the concurrency, no retries of its own.
    With a `clock`, the whole-request deadline counts only time the process ran."""
    return ApiClient(endpoint, timeout, connections, clock or RunClock())


class ApiClient:
    """The hot path (an aiohttp session, opened on the first call) and, built on first use, the SDK client.

    `send` posts a prepared body: the URL and headers, the same for every call of a run, are worked out
    once here, and the answer is parsed as JSON, not into SDK models. Measured with the fake server,
    client-bound: 0.31 ms of CPU per request through the SDK's `DefaultAioHttpClient` (httpx2 over
    aiohttp) with its request assembly skipped, 0.64 ms through `client.post`, and less again with
    aiohttp alone (scripts/bench_throughput.py).
    """

    def __init__(self, endpoint: Endpoint, timeout: float, connections: int, clock: RunClock) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connections = connections
        self.clock = clock
        base = endpoint.base_url.rstrip("/") + "/"
        self._urls = {"chat": base + "chat/completions", "completions": base + "completions",
                      "responses": base + "responses"}
        self._headers = request_headers(endpoint.api_key)
        # Only connecting has a timeout of its own (nothing is bought before the request is sent); the
        # rest is the whole-request deadline's, which does not count time the process was stopped.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._sdk: openai.AsyncOpenAI | None = None

    @property
    def sdk(self) -> openai.AsyncOpenAI:
        """The SDK's client for the same endpoint (files, batches): aiohttp transport, pool sized to the
        concurrency, SDK retries off. Built, and the SDK imported, on first use."""
        if self._sdk is None:
            import httpx2
            import openai

            limits = httpx2.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            http = openai.DefaultAioHttpClient(timeout=self.timeout, limits=limits)
            self._sdk = openai.AsyncOpenAI(
                api_key=self.endpoint.api_key, base_url=self.endpoint.base_url, max_retries=0,
                timeout=self.timeout, http_client=http,
            )
        return self._sdk

    def _open(self) -> aiohttp.ClientSession:
        tls: ssl.SSLContext | bool = True
        if self.endpoint.base_url.startswith("https:"):
            import httpx2  # the SDK's own certificate store: the same trust as its client

            tls = httpx2.create_ssl_context()
        connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=KEEPALIVE_SECONDS, ssl=tls)
        # The proxy the environment names is read once, here: aiohttp's `trust_env` would read it (and
        # ~/.netrc) in a worker thread for every request, two thread round trips a request.
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, proxy=_env_proxy(self.endpoint.base_url)
        )
        return self._session

    async def send(self, api: str, body: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, str]]:
        """One API call with `body` ({"model", "messages"|"prompt"|"input", **args}); returns (JSON body, headers).

        The body goes out as stored (it was rendered and validated at create time). `timeout` bounds
        connecting, and the whole request, so a body trickling in a byte at a time cannot hold a worker;
        time the process was stopped (Ctrl-Z, a laptop lid) does not count, so an answer that arrived
        meanwhile is read, not thrown away.
        """
        session = self._session or self._open()
        url = self._urls[api]
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers_in = False
        try:
            async with self.clock.deadline(self.timeout):
                try:
                    async with session.post(url, data=content, timeout=self._timeout, allow_redirects=False) as got:
                        headers_in = True
                        status, headers, text = got.status, got.headers, await got.read()
                except _CONNECTION_ERRORS as exc:
                    raise connection_error(exc, url) from exc
        except TimeoutError:
            if headers_in:  # it answers, but never all of it: a bad answer, not an outage
                raise StalledResponse(f"the response's headers came, its body not within {self.timeout:g} s") from None
            raise RequestTimeout(f"no complete response within {self.timeout:g} s") from None
        if status >= 400:
            raise status_error(_response(url, status, headers, text))
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedResponse(f"response body is not valid JSON: {exc}") from None
        return data, headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._sdk is not None:
            await self._sdk.close()


# What the SDK turns into `APIConnectionError` (aiohttp's timeouts are `ClientError`s too: caught here
# first, they are the SDK's `APITimeoutError`, not the whole request's deadline).
_CONNECTION_ERRORS = (aiohttp.ClientError, ssl.SSLError)
# Headers that described the body on the wire, not the body as read (aiohttp decompresses it).
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _env_proxy(url: str) -> str | None:
    """The proxy `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name for `url`, unless `NO_PROXY` exempts it."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def _response(url: str, status: int, headers: Mapping[str, str], content: bytes) -> httpx2.Response:
    """The error response as the SDK's exceptions carry it (an `httpx2.Response`)."""
    import httpx2

    kept = [(name, value) for name, value in headers.items() if name.lower() not in _WIRE_HEADERS]
    return httpx2.Response(status, headers=kept, content=content, request=httpx2.Request("POST", url))


def connection_error(exc: BaseException, url: str) -> openai.APIConnectionError:
    """The SDK's connection error for a failed send, saying what happened (the cause tells a refused
    connection, an unknown host and a TLS failure apart)."""
    import httpx2
    import openai

    request = httpx2.Request("POST", url)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return openai.APIConnectionError(message=f"connection refused by {_host(request)}", request=request)
        if isinstance(cause, socket.gaierror):
            return openai.APIConnectionError(message=f"cannot resolve host {_host(request)}", request=request)
        if isinstance(cause, ssl.SSLError):
            return openai.APIConnectionError(message=f"TLS error with {_host(request)}: {cause}", request=request)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, TimeoutError):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(message=f"connection to {_host(request)} failed: {exc}", request=request)


def _host(request: httpx2.Request) -> str:
    port = f":{request.url.port}" if request.url.port else ""
    return f"{request.url.host}{port}"


def status_error(response: httpx2.Response) -> openai.APIStatusError:
    """The SDK's exception for an error response, built with its public constructor as the SDK builds it:
    the message `Error code: N - <the error's message>`, `body` the error object of the JSON body."""
    import openai

    message = f"Error code: {response.status_code}"
    text = response.text.strip()
    body: object = text
    with contextlib.suppress(ValueError):
        body = json.loads(text)
    data = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
        message += f" - {data['message']}"
    name = _STATUS_ERRORS.get(response.status_code)
    if name is None:
        name = "InternalServerError" if response.status_code >= 500 else "APIStatusError"
    cls: type[openai.APIStatusError] = getattr(openai, name)
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
