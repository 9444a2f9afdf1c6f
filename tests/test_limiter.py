"""The limiter's logic with a fake clock: bucket refill, learning from headers, global pause, breaker."""

from __future__ import annotations

import asyncio

import pytest

from batch_prompt.errors import RetryExhausted
from batch_prompt.run.limiter import Bucket, Limiter, parse_duration, server_level
from batch_prompt.run.retry import RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0  # as on a machine that booted a moment ago: nothing may assume a large clock
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        await asyncio.sleep(0)


def limiter(clock: FakeClock, **kw: object) -> Limiter:
    kw.setdefault("slow_start", False)  # tested on its own below
    return Limiter(clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    bucket = Bucket(per_minute=600, burst_seconds=1.0, now=0.0)  # 10/s, capacity 10
    assert [bucket.reserve(1, 0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.reserve(1, 0.0) == pytest.approx(0.1)
    assert bucket.reserve(1, 0.0) == pytest.approx(0.2)
    bucket.refill(100.0)
    assert bucket.level == 10  # never above capacity


def test_rpm_spaces_requests_evenly_after_the_burst() -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=60, burst_seconds=1.0)  # 1/s, capacity 1

    async def go() -> list[float]:
        sent = []
        for _ in range(5):
            await lim.acquire(1)
            sent.append(clock.now)
        return sent

    assert asyncio.run(go()) == pytest.approx([0, 1, 2, 3, 4])


def test_tpm_waits_for_token_cost() -> None:
    clock = FakeClock()
    lim = limiter(clock, tpm=6000, burst_seconds=1.0)  # 100 tokens/s, capacity 100

    async def go() -> None:
        await lim.acquire(100)
        await lim.acquire(50)

    asyncio.run(go())
    assert clock.sleeps == [0.5]


def test_learns_limits_and_remaining_from_headers() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    assert lim.requests is None
    lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "3",
                 "x-ratelimit-reset-requests": "10ms", "x-ratelimit-limit-tokens": "60000"})
    assert lim.requests is not None and lim.requests.per_minute == 6000
    assert lim.requests.level == 3  # what the server says is left, not our own idea
    assert lim.tokens is not None and lim.tokens.per_minute == 60000

    async def go() -> None:
        for _ in range(4):
            await lim.acquire(1)

    asyncio.run(go())
    assert clock.sleeps == [pytest.approx(0.01)]  # the 4th waits one interval of 100/s


@pytest.mark.parametrize(
    ("limit", "remaining", "reset", "sleeps"),
    [
        ("200", "0", "6h0m0s", [108.0]),  # a daily cap spent: wait for one request's refill (6 h / 200)
        ("100", "0", "24h", [120.0]),  # ... at most max_pause at a time
        ("200", "150", "6h0m0s", []),  # a daily cap not yet spent: go now
        ("6000", "0", "10s", [0.01]),  # per minute (6,000 in 10 s is fast): the bucket alone decides
        ("6000", "0", "1s", [0.01]),  # a short reset says nothing about the window
    ],
)
def test_reset_header_holds_the_pool_when_a_long_window_is_spent(
    limit: str, remaining: str, reset: str, sleeps: list[float]
) -> None:
    clock = FakeClock()
    lim = limiter(clock)
    lim.observe({"x-ratelimit-limit-requests": limit, "x-ratelimit-remaining-requests": remaining,
                 "x-ratelimit-reset-requests": reset})

    asyncio.run(lim.acquire(1))
    assert clock.sleeps == [pytest.approx(s) for s in sleeps]


def test_reset_pause_counts_what_is_in_flight() -> None:
    clock = FakeClock()
    lim = limiter(clock)

    async def go() -> None:
        lim.observe({"x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "2"})
        for _ in range(2):
            await lim.acquire(1)  # the last two of the day's allowance, both still in flight
        lim.observe({"x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "2",
                     "x-ratelimit-reset-requests": "10h"})
        await lim.acquire(1)

    asyncio.run(go())
    # 998 refilled in 10 h = one per 36.07 s; the third request needs the server to refill 1 beyond the 2
    # in flight: 36.07 s after the answer (bucket waits under it are absorbed by the pause)
    assert clock.sleeps[-1] == pytest.approx(36000 / 998, rel=1e-3) and len(clock.sleeps) == 1


def test_told_limits_are_not_overridden_by_headers() -> None:
    lim = limiter(FakeClock(), rpm=100)
    lim.observe({"x-ratelimit-limit-requests": "6000"})
    assert lim.requests is not None and lim.requests.per_minute == 100


def test_429_pauses_the_whole_pool_then_ramps_up() -> None:
    clock = FakeClock()
    lim = limiter(clock, rpm=600, burst_seconds=1.0)

    async def go() -> list[float]:
        lim.rate_limited(2.0)
        starts = []
        for _ in range(3):
            await lim.acquire(1)
            starts.append(clock.now)
        return starts

    # nobody goes before the pause ends, and the bucket refills from empty: a ramp at 10/s, not a burst
    assert asyncio.run(go()) == pytest.approx([2.1, 2.2, 2.3])
    assert lim.pauses == 1


def test_breaker_opens_after_consecutive_failures_and_probes() -> None:
    clock = FakeClock()
    lim = limiter(clock, breaker_threshold=3)
    for _ in range(3):
        lim.failed()
    assert lim.breaker_open and lim.pause_until == 1.0
    for _ in range(20):  # the rest of the requests in flight when it opened fail too: no escalation
        lim.failed()
    assert lim.pause_until == 1.0

    async def go() -> list[bool]:
        probe = await lim.acquire(1)
        assert clock.now == 1.0
        waiter = asyncio.ensure_future(lim.acquire(1))
        await asyncio.sleep(0)
        assert not waiter.done()  # the rest wait for the probe's outcome
        lim.failed(probe=True)  # probe failed: pause doubles
        assert lim.pause_until == pytest.approx(3.0)
        second_probe = await waiter
        lim.succeeded()
        third = await lim.acquire(1)
        return [probe, second_probe, third]

    assert asyncio.run(go()) == [True, True, False]
    assert not lim.breaker_open


def test_parse_duration() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1s") == 1
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("soon") is None


def test_retry_policy_waits() -> None:
    from batch_prompt.run.failures import Failure, Verdict

    transient = Failure(Verdict.RETRY, "InternalServerError", "500")
    policy = RetryPolicy(initial=0.5, maximum=4.0, jitter=0.0)
    assert [policy.decide(transient, a) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert RetryPolicy.no_wait().decide(transient, 5) == 0.0


def test_remaining_counts_what_is_still_in_flight() -> None:
    clock = FakeClock()
    lim = limiter(clock)

    async def go() -> None:
        for _ in range(100):  # a burst before any limit is known
            await lim.acquire(10)
        lim.release(10)  # the first answer arrives: the server had room for 99 more *when it answered*
        lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "99"})

    asyncio.run(go())
    assert lim.in_flight == [99, 990]
    assert lim.requests is not None and lim.requests.level == 0  # 99 left minus 99 already on their way


def test_token_estimator_calibrates_to_the_servers_count() -> None:
    from batch_prompt.spec.tokens import TokenEstimator

    estimator = TokenEstimator()
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 10}
    cost, ours = estimator.cost(body)
    assert (cost, ours) == (14 + 10, 14)  # 40 chars / 4 + 4 per message, + max_tokens
    for _ in range(TokenEstimator.WARMUP):
        estimator.observe(ours, {"prompt_tokens": 7})
    assert estimator.scale == 0.5
    assert estimator.cost(body) == (7 + 10, 14)
    estimator.observe(ours, {"no": "usage"})  # ignored
    assert estimator.responses == TokenEstimator.WARMUP


def test_a_cancelled_probe_hands_the_probe_on() -> None:
    clock = FakeClock()
    lim = limiter(clock, breaker_threshold=1)
    lim.failed()

    async def go() -> list[bool]:
        first = await lim.acquire(1)
        lim.release(1)
        lim.abandon_probe()  # the probe's task was cancelled before its answer
        second = await lim.acquire(1)  # without the hand-on this would wait forever
        return [first, second]

    assert asyncio.run(asyncio.wait_for(go(), 5)) == [True, True]


def test_pool_pause_is_capped_and_rejects_nonsense() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_pause=120)
    lim.rate_limited(float("inf"))
    assert lim.pause_until == 1.0  # unreadable: 1 s
    lim.rate_limited(86_400)
    assert lim.pause_until == 120.0


def test_a_request_bigger_than_the_bucket_is_charged_in_full() -> None:
    bucket = Bucket(per_minute=600, burst_seconds=1.0, now=0.0)  # 10 tokens/s, capacity 10
    assert bucket.reserve(50, 0.0) == 0.0  # a full bucket lets it go...
    assert bucket.reserve(1, 0.0) == pytest.approx(4.1)  # ...and the next waits out its whole cost


def test_a_prompt_the_server_always_rate_limits_fails_in_the_end() -> None:
    import httpx2
    import openai

    calls = 0

    async def always_429() -> None:
        nonlocal calls
        calls += 1
        request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
        response = httpx2.Response(429, request=request, json={"error": {"code": "rate_limit_exceeded"}})
        raise openai.RateLimitError("Request too large", response=response, body={"code": "rate_limit_exceeded"})

    async def no_sleep(_: float) -> None:
        return None

    policy = RetryPolicy.no_wait(max_attempts=2)
    with pytest.raises(RetryExhausted) as raised:
        asyncio.run(policy.call(always_429, no_sleep))
    assert calls == policy.free_rate_limits * 2 + 2  # the free 429 retries, then the attempts proper
    assert raised.value.attempts == calls and isinstance(raised.value.last, openai.RateLimitError)


@pytest.mark.parametrize(
    ("limit", "remaining", "level"),
    [
        (6000, 5901, 1),  # a minute's units, enforced over a second: 99 taken and not refilled, 1 of 100 left
        (6000, 6000, 100),  # a minute's units, nothing owed: the whole window
        (6000, 40, 40),  # the window's own units: the level itself
        (6000, 0, 0),
        (None, 7, 7),  # no limit said: the level itself
    ],
)
def test_remaining_is_read_in_its_units(limit: float | None, remaining: float, level: float) -> None:
    assert server_level(limit, remaining, capacity=100) == level


def test_per_minute_remaining_holds_back_a_burst_the_short_window_cannot_take() -> None:
    clock = FakeClock()
    lim = limiter(clock)  # not told: 6,000/min learnt, a bucket of one second (100)
    lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5950"})
    assert lim.requests is not None and lim.requests.level == 50  # not min(100, 5950): 50 owed
    told = limiter(clock, rpm=6000)
    told.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5990"})
    assert told.requests is not None and told.requests.level == 90  # a told bucket reads it the same way


def test_careful_start_ramps_up_until_the_window_holds_a_bucket() -> None:
    clock = FakeClock()
    lim = Limiter(clock=clock, sleep=clock.sleep)

    async def go() -> list[int]:
        sent: list[int] = []  # requests let through in each round trip
        tasks = [asyncio.create_task(lim.acquire(1)) for _ in range(40)]
        for _ in range(4):
            await asyncio.sleep(0)
            done = [t for t in tasks if t.done()]
            sent.append(len(done) - sum(sent))
            for _ in range(sent[-1]):  # every request of this round is answered
                lim.release(1)
                lim.succeeded()
        lim.rate_limited(0.0)  # a 429 in the careful start: the window halves (16 -> 8)
        assert lim.window == 8
        # a limit read from a header (600/min: a bucket of 10) does not end it: a bucket's worth at
        # once would reach the server over the time it takes to send, and the server refills nothing
        # while its own window is full
        lim.observe({"x-ratelimit-limit-requests": "600"})
        assert lim.window == 8
        lim.succeeded()
        assert lim.window == 9
        lim.succeeded()  # the window holds a bucket: the bucket alone decides from now on
        assert lim.window is None
        await asyncio.gather(*tasks)
        return sent

    assert asyncio.run(go()) == [1, 2, 4, 8]  # one, then one more per answer: doubling per round trip
    assert lim.in_flight[0] == 40 - 15


def test_a_header_saying_a_small_limit_ends_the_careful_start() -> None:
    lim = Limiter()
    lim.observe({"x-ratelimit-limit-requests": "30"})  # a bucket of one request: the window of 1 holds it
    assert lim.window is None and lim.requests is not None and lim.requests.capacity == 1


def test_a_told_limit_starts_at_full_speed() -> None:
    assert Limiter(rpm=600).window is None and Limiter(tpm=10_000).window is None
    assert Limiter().window == 1 and Limiter(learn=False).window is None


def test_a_learned_limit_rises_when_headers_say_more_and_is_forgotten_when_they_stop() -> None:
    clock = FakeClock()
    lim = limiter(clock, forget_after=60.0)
    told = {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "119"}
    lim.observe(told, answer=True)
    assert lim.requests is not None and lim.requests.per_minute == 120
    lim.observe({**told, "x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5999"}, answer=True)
    assert lim.requests.per_minute == 6000  # the server says more: more it is
    lim.observe(told, answer=True)
    for _ in range(30):  # the limit lifted: answers without any header, for 59 s
        clock.now += 59 / 30
        lim.observe({}, answer=True)
    assert lim.requests is not None  # not yet: a minute of them first
    clock.now += 2.0
    lim.observe({}, answer=True)
    assert lim.requests is None and lim.tokens is None

    async def burst() -> float:
        start = clock.now
        for _ in range(500):
            await lim.acquire(1)
            lim.release(1)
        return clock.now - start

    assert asyncio.run(burst()) == 0.0  # no longer held to 120 a minute
    # a limit the user gave is kept whatever the headers do
    told_lim = limiter(clock, rpm=60, forget_after=1.0)
    for _ in range(20):
        clock.now += 1.0
        told_lim.observe({}, answer=True)
    assert told_lim.requests is not None and told_lim.requests.per_minute == 60
