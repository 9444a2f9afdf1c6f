"""What a failure means, decided in one place (`failures.classify` / `classify_line`): a table over every case."""

from __future__ import annotations

import asyncio
import email.utils
import json
from typing import Any

import httpx2
import openai
import pytest

from batch_prompt.errors import RetryExhausted
from batch_prompt.run.client import make_client, resolve_endpoint, split_choices, status_error
from batch_prompt.run.failures import (
    Failure,
    MalformedResponse,
    RequestTimeout,
    Verdict,
    classify,
    classify_line,
    describe,
    retry_after_from,
)
from batch_prompt.run.retry import RetryPolicy

REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
R, RL, F, X, L = Verdict.RETRY, Verdict.RATE_LIMITED, Verdict.FAIL, Verdict.FATAL, Verdict.LOCAL


def response(status: int, error: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> httpx2.Response:
    body = raw if raw is not None else json.dumps({"error": {"message": f"m{status}", "type": None, "code": None,
                                                             **(error or {})}}).encode()
    return httpx2.Response(status, headers=headers or {}, content=body, request=REQUEST)


def judged(status: int, error: dict[str, Any] | None = None, **headers: str) -> Failure:
    return classify(status_error(response(status, error, {k.replace("_", "-"): v for k, v in headers.items()})))


STATUS_CASES = [
    # status, error body fields, headers, verdict, SDK exception type
    (400, {}, {}, F, openai.BadRequestError),
    (401, {"code": "invalid_api_key"}, {}, X, openai.AuthenticationError),
    (403, {}, {}, X, openai.PermissionDeniedError),
    (404, {"code": "model_not_found"}, {}, F, openai.NotFoundError),
    (408, {}, {}, R, openai.APIStatusError),
    (409, {}, {}, R, openai.ConflictError),
    (422, {}, {}, F, openai.UnprocessableEntityError),
    (429, {"code": "rate_limit_exceeded", "type": "requests"}, {}, RL, openai.RateLimitError),
    (429, {"code": "insufficient_quota"}, {}, X, openai.RateLimitError),
    (429, {"type": "insufficient_quota"}, {}, X, openai.RateLimitError),
    (429, {"code": "billing_hard_limit_reached"}, {}, X, openai.RateLimitError),
    (500, {}, {}, R, openai.InternalServerError),
    (502, {}, {}, R, openai.InternalServerError),
    (503, {}, {}, R, openai.InternalServerError),
    (529, {}, {}, R, openai.InternalServerError),
    # the server overrules the status, as the SDK lets it
    (400, {}, {"x-should-retry": "true"}, R, openai.BadRequestError),
    (500, {}, {"x-should-retry": "false"}, F, openai.InternalServerError),
    (429, {}, {"x-should-retry": "false"}, F, openai.RateLimitError),
    # ... except that a refused key or an exhausted quota always stops the run
    (401, {}, {"x-should-retry": "true"}, X, openai.AuthenticationError),
    (429, {"code": "insufficient_quota"}, {"x-should-retry": "true"}, X, openai.RateLimitError),
]


@pytest.mark.parametrize(("status", "error", "headers", "verdict", "sdk_type"), STATUS_CASES)
def test_status_errors(status: int, error: dict[str, Any], headers: dict[str, str], verdict: Verdict,
                       sdk_type: type[openai.APIStatusError]) -> None:
    exc = status_error(response(status, error, headers))
    assert type(exc) is sdk_type and exc.status_code == status
    assert exc.message == f"Error code: {status} - m{status}"  # the SDK's own message shape
    failure = classify(exc)
    assert (failure.verdict, failure.status) == (verdict, status)
    assert failure.kind == f"{sdk_type.__name__} {status}"
    assert failure.message.startswith(f"{sdk_type.__name__} {status}") and failure.message.endswith(f"m{status}")


def test_a_429_out_of_flex_capacity_is_capacity_by_its_code_type_or_message() -> None:
    capacity = Verdict.CAPACITY
    assert judged(429, {"code": "resource_unavailable"}).verdict is capacity
    assert judged(429, {"type": "resource_unavailable"}).verdict is capacity
    assert judged(429, {"message": "Resource Unavailable: flex capacity is full"}).verdict is capacity
    assert judged(429, {"message": "Rate limit reached for requests"}).verdict is RL  # not capacity


def test_retry_after_in_milliseconds_seconds_and_as_a_date() -> None:
    assert judged(429, retry_after_ms="1500", retry_after="9").retry_after == 1.5  # milliseconds win
    assert judged(429, retry_after="7").retry_after == 7.0
    assert judged(503, retry_after="0.25").retry_after == 0.25
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_from({"retry-after": date}, now=now) == 30.0
    assert retry_after_from({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    for nonsense in ("soon", "-3", "inf", ""):
        assert retry_after_from({"retry-after": nonsense}, now=now) is None, nonsense
    assert judged(429).retry_after is None


def test_transport_and_body_failures() -> None:
    assert classify(openai.APITimeoutError(request=REQUEST)).verdict is R
    assert classify(openai.APIConnectionError(request=REQUEST)).verdict is R
    assert classify(RequestTimeout("no complete response within 5 s")).verdict is R
    malformed = status_free_malformed()
    assert classify(malformed).verdict is R and classify(malformed).kind == "MalformedResponse"
    with pytest.raises(MalformedResponse, match="3 choices"):
        split_choices({"choices": [{"index": i} for i in range(3)]}, 2, 1)  # one too many: which is whose?
    with pytest.raises(MalformedResponse, match="3 choices"):
        split_choices({"choices": [{"index": i} for i in (0, 1, 1)]}, 3, 1)  # a repeated index
    with pytest.raises(MalformedResponse, match="no choices"):
        split_choices({"id": "x"}, 1, 1)
    # packed: prompt i, sample j is index i*n + j; a prompt missing a choice is incomplete, the rest are kept
    parts = split_choices({"choices": [{"index": i} for i in (5, 0, 1, 4, 2)]}, 2, 3)
    assert parts == [[{"index": 0}, {"index": 1}], None, [{"index": 4}, {"index": 5}]]
    assert classify(ValueError("a bug of ours")).verdict is L
    assert classify(KeyError("x")).verdict is L


def status_free_malformed() -> MalformedResponse:
    try:
        json.loads("{trunc")
    except ValueError as exc:
        return MalformedResponse(f"response body is not valid JSON: {exc}")
    raise AssertionError


def test_an_error_body_that_is_not_json_still_classifies() -> None:
    exc = status_error(response(502, raw=b"<html>Bad gateway</html>"))
    assert type(exc) is openai.InternalServerError and exc.body == "<html>Bad gateway</html>"
    assert classify(exc).verdict is R and exc.message == "Error code: 502"


def test_a_code_that_repeats_the_status_is_not_repeated() -> None:
    exc = status_error(response(400, {"code": 400, "message": "bad"}))  # llama.cpp's shape
    assert describe(exc) == "BadRequestError 400: bad"
    exc = status_error(response(401, {"code": "invalid_api_key", "message": "no sk-abcdef123456 here"}))
    assert describe(exc) == "AuthenticationError 401 (invalid_api_key): no *** here"  # key-like text masked


def test_retry_exhausted_is_judged_by_its_last_error() -> None:
    last = status_error(response(503))
    failure = classify(RetryExhausted(last, 8))
    assert (failure.verdict, failure.kind) == (R, "InternalServerError 503")
    assert failure.message == "gave up after 8 attempts: InternalServerError 503: m503"


BATCH_LINES = [
    ({"custom_id": "1", "response": {"status_code": 200, "body": {"choices": []}}, "error": None}, None, None),
    ({"custom_id": "1", "response": None, "error": {"code": "batch_expired", "message": "w"}}, R,
     "batch batch_expired"),
    ({"custom_id": "1", "response": None, "error": {"code": "batch_cancelled", "message": "c"}}, R,
     "batch batch_cancelled"),
    ({"custom_id": "1", "response": None, "error": {"code": "invalid_request", "message": "no"}}, F,
     "batch invalid_request"),
    ({"custom_id": "1", "response": {"status_code": 400, "body": {"error": {"message": "bad prompt", "code": "x"}}}},
     F, "BadRequestError 400"),
    ({"custom_id": "1", "response": {"status_code": 429, "body": {"error": {"code": "rate_limit_exceeded"}}}},
     R, "RateLimitError 429"),
    ({"custom_id": "1", "response": {"status_code": 429, "body": {"error": {"code": "insufficient_quota"}}}},
     X, "RateLimitError 429"),
    ({"custom_id": "1", "response": {"status_code": 500, "body": {"error": {"message": "oops"}}}},
     R, "InternalServerError 500"),
    ({"custom_id": "1", "response": {"status_code": 404, "body": "not json"}}, F, "NotFoundError 404"),
    ({"custom_id": "1"}, R, "MalformedResponse"),
]


@pytest.mark.parametrize(("line", "verdict", "kind"), BATCH_LINES)
def test_batch_result_lines(line: dict[str, Any], verdict: Verdict | None, kind: str | None) -> None:
    failure = classify_line(line)
    if verdict is None:
        assert failure is None
    else:
        assert failure is not None and (failure.verdict, failure.kind) == (verdict, kind)


def test_a_batch_line_keeps_the_servers_message() -> None:
    line = {"response": {"status_code": 400, "body": {"error": {"message": "Invalid prompt: FAIL400", "code": "bad"}}}}
    failure = classify_line(line)
    assert failure is not None and failure.message == "BadRequestError 400 (bad): Invalid prompt: FAIL400"


def test_the_retry_policy_retries_what_its_predicate_says() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise status_error(response(500))
        return "ok"

    async def no_sleep(_: float) -> None:
        return None

    assert asyncio.run(RetryPolicy.no_wait().call(flaky, no_sleep)) == "ok" and len(calls) == 3
    calls.clear()
    never = RetryPolicy(max_attempts=8, initial=0, maximum=0, jitter=0, retryable=lambda exc: False)
    with pytest.raises(openai.InternalServerError):
        asyncio.run(never.call(flaky, no_sleep))
    assert len(calls) == 1  # not retried: raised as it is
    calls.clear()

    async def always_500() -> str:
        calls.append(1)
        raise status_error(response(500))

    with pytest.raises(RetryExhausted) as raised:
        asyncio.run(RetryPolicy.no_wait(max_attempts=3).call(always_500, no_sleep))
    assert raised.value.attempts == 3 == len(calls) and isinstance(raised.value.last, openai.InternalServerError)
    calls.clear()

    async def refused() -> str:
        calls.append(1)
        raise status_error(response(400))

    with pytest.raises(openai.BadRequestError):
        asyncio.run(RetryPolicy.no_wait().call(refused, no_sleep))
    assert len(calls) == 1


def test_a_refused_connection_is_reported_as_refused() -> None:
    """Through the real client: the aiohttp transport calls a refused connection a connect timeout."""

    async def go() -> BaseException:
        client = make_client(resolve_endpoint("http://127.0.0.1:9/v1", "sk-x"), 5.0, 1)  # port 9: discard, closed
        try:
            await client.send("chat", {"model": "m", "messages": []})
        except Exception as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("the call succeeded")

    exc = asyncio.run(go())
    assert type(exc) is openai.APIConnectionError and classify(exc).verdict is R
    assert describe(exc) == "APIConnectionError: connection refused by 127.0.0.1:9"


def test_the_retry_decision_is_one_pure_function_of_the_failure_and_the_attempt() -> None:
    from batch_prompt.run.failures import Failure, Verdict

    policy = RetryPolicy(max_attempts=3, initial=0.5, maximum=60.0, jitter=0.0, max_server_wait=60.0)
    transient = Failure(Verdict.RETRY, "InternalServerError", "500")
    assert [policy.decide(transient, attempt) for attempt in (1, 2, 3)] == [0.5, 1.0, None]  # backoff, then give up
    told = Failure(Verdict.RATE_LIMITED, "RateLimitError", "429", 429, retry_after=7.0)
    assert policy.decide(told, 1) == 7.0  # the server's wait, not the backoff
    absurd = Failure(Verdict.RATE_LIMITED, "RateLimitError", "429", 429, retry_after=1e9)
    assert policy.decide(absurd, 1) == 60.0  # capped
    assert policy.decide(Failure(Verdict.FAIL, "BadRequestError", "400", 400), 1) is None  # never asked again
    assert policy.decide(Failure(Verdict.FATAL, "AuthenticationError", "401", 401), 1) is None
    assert RetryPolicy.no_wait(8).decide(transient, 7) == 0.0 and RetryPolicy.no_wait(8).decide(transient, 8) is None
