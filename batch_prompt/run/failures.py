"""What a failure means: the one place that decides what is done about an error.

    Verdict
    ├── RETRY         transient (408, 409, 5xx, timeouts, dropped connections, malformed bodies, an expired
    │                 or cancelled batch line): try again with backoff
    ├── RATE_LIMITED  a 429 that is a rate limit: the whole pool pauses for its retry-after, then tries again
    │                 (a retry-after past `MAX_SERVER_WAIT` is no rate limit to wait out: RETRY, waiting that)
    ├── CAPACITY      a 429 "resource unavailable": the flex tier has no capacity now (OpenAI's flex
    │                 processing; nothing is billed). Not our rate: the pool does not pause, and it costs no
    │                 attempt; the request waits with backoff (and may go at the default tier: `flex_fallback`)
    ├── FAIL          the server refused this prompt (other 4xx): the prompt fails with the error kept
    ├── FATAL         the server refused the run (401, 403, an exhausted quota): stop, rows left unfinished
    └── LOCAL         not an answer from the server at all: something on our side is broken; stop

A transient failure is an `outage` (the server down or unreachable: no connection, no response in time,
a 5xx) or not (it answered, badly: a malformed body, choices that cannot be mapped, headers and then
silence): only an outage feeds the circuit breaker, whose probes cost no attempt; a bad answer uses an
attempt every time, so no server can keep a prompt retrying for ever.

`classify(exc)` judges an exception raised by a live call; `classify_line(line)` a line of a Batch API
output or error file. Both return a `Failure`: the verdict and what to show and keep of it. Decisions
match exception types, status codes and the error body's `code`/`type`, never message strings. The
server may overrule the status with `x-should-retry: true|false` (as the openai SDK obeys it), except
that a refused key or an exhausted quota always stops the run.
"""

from __future__ import annotations

import email.utils
import enum
import errno
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..errors import RetryExhausted
from . import sdk

if TYPE_CHECKING:
    import openai

RETRIED_STATUS = frozenset({408, 409})
# A 429 whose error code or type says this: retrying cannot help, the run stops.
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
# A 429 whose error code or type says this: the flex service tier is out of capacity for now.
CAPACITY_CODES = frozenset({"resource_unavailable"})
# Batch line error codes after which the same request, sent again, can succeed.
BATCH_RETRY_CODES = frozenset({"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded", "timeout"})
# Of those, the provider's capacity or a cancel, not the request's fault: asked again at no attempt's cost.
BATCH_NOT_RUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
# Servers echo (partly masked) keys in auth errors; nothing key-like is ever stored or printed.
_KEY_LIKE = re.compile(r"\b(sk|key|api[-_]?key)[-_][A-Za-z0-9_*.\-]{6,}", re.IGNORECASE)
MESSAGE_LIMIT = 500
MAX_SERVER_WAIT = 60.0  # seconds: the longest `retry-after` obeyed as such (`retry-after: 1000000000` is not)


class Verdict(enum.Enum):
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    CAPACITY = "capacity"
    FAIL = "fail"
    FATAL = "fatal"
    LOCAL = "local"

    @property
    def retryable(self) -> bool:
        return self in (Verdict.RETRY, Verdict.RATE_LIMITED, Verdict.CAPACITY)


@dataclass(frozen=True)
class Failure:
    """A judged failure: what to do (`verdict`), its kind for grouping ("BadRequestError 400"), a one-line
    message (key-like text masked), the HTTP status if any, and the wait the server asked for if any."""

    verdict: Verdict
    kind: str
    message: str
    status: int | None = None
    retry_after: float | None = None
    # transient because the server is down or unreachable, or (a batch line) the provider never ran it:
    # costs no attempt (not: it answered badly)
    outage: bool = False


class MalformedResponse(Exception):
    """A 200 response whose body is not valid JSON or does not answer the request (retried)."""


class RequestTimeout(Exception):
    """The whole request (connect, send, every read) took longer than its timeout (retried)."""


class StalledResponse(RequestTimeout):
    """The response's headers came, its whole body not within the timeout (slowloris; retried, no outage)."""


def _is_capacity(answered: Any) -> bool:
    """A 429 that says the tier is out of capacity (OpenAI's flex "429 Resource Unavailable"), by its code or
    type, or by its message where a server gives neither."""
    if answered.code in CAPACITY_CODES or answered.type in CAPACITY_CODES:
        return True
    text = str(getattr(answered, "message", "") or "").lower()
    return "resource unavailable" in text or "resource_unavailable" in text


def classify(exc: BaseException) -> Failure:
    """Judge an exception from one live API call (or from the retry layer)."""
    if isinstance(exc, RetryExhausted):
        last = classify(exc.last)
        return Failure(last.verdict, last.kind, f"gave up after {exc.attempts} attempts: {last.message}", last.status)
    kind, message = error_kind(exc), describe(exc)
    if (answered := status_error_of(exc)) is not None:
        status = answered.status_code
        headers = answered.response.headers
        wait = retry_after_from(headers)
        if status in (401, 403) or (status == 429 and _is_quota(answered)):
            return Failure(Verdict.FATAL, kind, message, status, wait)
        if status == 429 and _is_capacity(answered):
            return Failure(Verdict.CAPACITY, kind, message, status, wait)
        says = headers.get("x-should-retry")
        if says == "false":
            return Failure(Verdict.FAIL, kind, message, status, wait)
        if wait is not None and wait > MAX_SERVER_WAIT:  # not a wait to obey: an attempt, after the longest
            return Failure(Verdict.RETRY if says != "false" else Verdict.FAIL, kind,
                           f"{message} (it asked to wait {wait:g} s)", status, MAX_SERVER_WAIT)
        if status == 429:
            return Failure(Verdict.RATE_LIMITED, kind, message, status, wait)
        if says == "true" or status in RETRIED_STATUS or status >= 500:
            return Failure(Verdict.RETRY, kind, message, status, wait, outage=status >= 500)
        return Failure(Verdict.FAIL, kind, message, status, wait)
    if isinstance(exc, MalformedResponse | StalledResponse):
        return Failure(Verdict.RETRY, kind, message)  # it answered, badly: an attempt each time
    if isinstance(exc, RequestTimeout) or is_connection_error(exc):
        return Failure(Verdict.RETRY, kind, message, outage=True)  # APITimeoutError is an APIConnectionError
    return Failure(Verdict.LOCAL, kind, message)


def classify_line(line: Mapping[str, Any]) -> Failure | None:
    """Judge a Batch API result line: None for a 200 answer (its body still has to be checked), else
    the failure. A line's `error` (the request never ran: `batch_expired`, `batch_cancelled`, ...) and a
    `response` whose `status_code` is not 200 are judged like the same outcome of a live call."""
    error = line.get("error")
    response = line.get("response")
    if isinstance(error, Mapping):
        code = str(error.get("code") or "")
        text = f"{code}: {error.get('message') or ''}".strip(": ")
        verdict = Verdict.RETRY if code in BATCH_RETRY_CODES else Verdict.FAIL
        return Failure(verdict, f"batch {code or 'error'}", redact(text)[:MESSAGE_LIMIT],
                       outage=code in BATCH_NOT_RUN_CODES)
    if not isinstance(response, Mapping) or not isinstance(response.get("status_code"), int):
        return Failure(Verdict.RETRY, "MalformedResponse", "batch line has neither a response nor an error")
    status: int = response["status_code"]
    if status == 200:
        return None
    body = response.get("body")
    data = body.get("error", body) if isinstance(body, Mapping) else body
    err_code = data.get("code") if isinstance(data, Mapping) else None
    type_ = data.get("type") if isinstance(data, Mapping) else None
    message = data.get("message") if isinstance(data, Mapping) else None
    kind = f"{_STATUS_NAMES.get(status, 'InternalServerError' if status >= 500 else 'APIStatusError')} {status}"
    text = redact(f"{kind}{_code_suffix(err_code, status)}: {message or body}")[:MESSAGE_LIMIT]
    if status in (401, 403) or (status == 429 and (err_code in QUOTA_CODES or type_ in QUOTA_CODES)):
        return Failure(Verdict.FATAL, kind, text, status)
    if status in RETRIED_STATUS or status == 429 or status >= 500:
        return Failure(Verdict.RETRY, kind, text, status)
    return Failure(Verdict.FAIL, kind, text, status)


_STATUS_NAMES = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    409: "ConflictError", 422: "UnprocessableEntityError", 429: "RateLimitError",
}


def status_error_of(exc: BaseException) -> openai.APIStatusError | None:
    """`exc` if it is the SDK's error for an error response, else None. (It can be one of the SDK's types
    only if the SDK is imported: a run whose calls all succeed never imports it.)"""
    module = sdk.loaded()
    return cast("openai.APIStatusError", exc) if module is not None and isinstance(exc, module.APIStatusError) else None


def connection_refused(exc: BaseException) -> bool:
    """True when a connection failure was a refusal (ECONNREFUSED anywhere in its causes): nothing listens
    on that host and port."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError) or (
                isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def is_connection_error(exc: BaseException) -> bool:
    """True for the SDK's `APIConnectionError` (its `APITimeoutError` included): no answer came."""
    module = sdk.loaded()
    return module is not None and isinstance(exc, module.APIConnectionError)


def _is_quota(exc: openai.APIStatusError) -> bool:
    return exc.code in QUOTA_CODES or exc.type in QUOTA_CODES


def retry_after_from(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, then `retry-after` in seconds or as an HTTP
    date (as the openai SDK reads them); None when unsaid or unreadable."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


def describe(exc: BaseException) -> str:
    """A one-line error for the database and the summary: type, status, and the server's message."""
    if (answered := status_error_of(exc)) is not None:
        message = answered.message
        if isinstance(answered.body, dict) and isinstance(answered.body.get("message"), str):
            message = answered.body["message"]
        status = answered.status_code
        text = f"{type(exc).__name__} {status}{_code_suffix(answered.code, status)}: {message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))[:MESSAGE_LIMIT]


def _code_suffix(code: Any, status: int) -> str:
    """" (invalid_api_key)", or nothing when the code only repeats the status (llama.cpp sends 400/400)."""
    return f" ({code})" if code not in (None, "", str(status), status) else ""


def error_kind(exc: BaseException) -> str:
    """A short key for grouping errors by type: "BadRequestError 400", "APIConnectionError", ..."""
    if (answered := status_error_of(exc)) is not None:
        return f"{type(exc).__name__} {answered.status_code}"
    return type(exc).__name__


def redact(text: str, key: str | None = None) -> str:
    """`text` with the API key, and anything shaped like one, masked."""
    if key:
        text = text.replace(key, "***")
    return _KEY_LIKE.sub("***", text)
