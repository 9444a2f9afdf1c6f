"""The rate limiter: when may the next request go? Shared by every worker of a run.

- Two token buckets, requests and tokens per minute (`--rpm`, `--tpm`). A request reserves its cost
  up front (levels may go negative) and sleeps once for the deficit: no polling.
- It learns from the server: `x-ratelimit-limit-*` sets a limit it was not told, and
  `x-ratelimit-remaining-*`, less what is still in flight, lowers the bucket to what the server says is left
  (read in its units: in a minute's, while the server enforces over about a second as OpenAI does, it says
  what the server is owed, and a second's window holds its capacity less that debt; see `server_level`).
  `x-ratelimit-reset-*` (when the allowance is whole again) agrees with a per-minute refill; when it says the
  server refills far slower (a daily cap in the same headers), the pool waits, once the allowance is spent,
  until the server will have refilled one request's worth, instead of collecting 429s.
- A careful start: unless told a limit, requests ramp up as TCP's slow start does: one in flight, then one
  more for every answer (the window doubles every round trip), instead of the whole concurrency at once
  into a limit enforced over a window shorter than a minute. A first answer with no `x-ratelimit-*`
  header at all (a server that declares no limit) ends it. A limit read from a header does not end it
  at once: the window grows on until it holds a whole bucket of requests (then the bucket alone decides).
  A bucket's worth sent at once reaches the server over the time it takes to send, while the server's
  window, full until the first arrives, refills nothing; ours refilled from the moment we reserved: the
  difference came back as 429s (3 to 5 at the start of a 3,000-prompt job, all in its first 0.2 s). Rounds
  that double instead are each answered, with the server's count in their headers, before the next goes.
- A learned limit follows the server: headers that say a higher limit raise it; answers that stop
  carrying the headers (the limit lifted, a proxy in between) for `forget_after` seconds, `FORGET_ANSWERS`
  answers at least, forget it: the told limits (`--rpm`, `--tpm`) alone apply again.
- A 429 pauses the whole pool until its `retry-after`, then the buckets start empty and refill: a ramp.
- A circuit breaker: after `breaker_threshold` transient failures in a row (an outage), the pool pauses
  with a doubling backoff, then lets one probe request through; the rest wait for its outcome. So a long
  outage costs a prompt a few attempts, not its whole budget.

Clock and sleep are injected so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

FORGET_ANSWERS = 10  # answers without x-ratelimit-* headers, at the least, before a learned limit is forgotten
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: '1s', '6m0s', '0.5s', '120ms', '1h2m3s'; None when unreadable."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


class Bucket:
    """A token bucket: `per_minute` refill, holding at most `burst_seconds` worth."""

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.burst_seconds = burst_seconds
        self.per_minute = per_minute
        self.level = self.capacity
        self.last = now

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.burst_seconds)

    def refill(self, now: float) -> None:
        if now > self.last:
            self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
            self.last = now

    def reserve(self, cost: float, now: float) -> float:
        """Take `cost` now; returns how long to wait until it may go (0 when at once).

        A request may go once the bucket holds its cost, or is full for a request bigger than the
        bucket; either way its whole cost is taken (a big one leaves a debt the next ones wait out).
        """
        self.refill(now)
        wait = max(0.0, (min(cost, self.capacity) - self.level) / self.rate)
        self.level -= cost
        return wait

    def drain(self, until: float) -> None:
        """Empty the bucket until `until` (a 429's pause): then it refills from zero, a ramp back up."""
        self.level = min(self.level, 0.0)
        self.last = max(self.last, until)


class Limiter:
    """Decides when each request may be sent. `acquire` before a call; report outcomes after it."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        learn: bool = True,
        slow_start: bool = True,
        burst_seconds: float = 1.0,
        breaker_threshold: int = 8,
        breaker_max_pause: float = 60.0,
        max_pause: float = 120.0,
        forget_after: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.clock, self.sleep = clock, sleep
        self.learn = learn
        self.burst_seconds = burst_seconds
        now = clock()
        self.requests = Bucket(rpm, burst_seconds, now) if rpm else None
        self.tokens = Bucket(tpm, burst_seconds, now) if tpm else None
        self.told = (rpm is not None, tpm is not None)
        self.pause_until = 0.0
        self.pauses = 0
        self.breaker_threshold = breaker_threshold
        self.breaker_max_pause = breaker_max_pause
        self.max_pause = max_pause
        self.failures_in_a_row = 0
        self.breaker_pause = 0.0
        self.half_open = False
        self._probe: asyncio.Future[None] | None = None
        self.in_flight = [0, 0.0]  # requests and tokens acquired and not yet released
        # the careful start: most requests in flight until the window holds a bucket (None: no such cap)
        self.window: float | None = 1.0 if slow_start and learn and rpm is None and tpm is None else None
        self.max_window = 10_000.0
        self._window_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.pause_reason = ""  # why the pool is paused: "rate limited", "server unreachable", "allowance spent"
        self.forget_after = forget_after
        # when headers were last seen, and how many answers have come without them since
        self.headerless: tuple[float, int] | None = None

    async def acquire(self, tokens: float) -> bool:
        """Wait until a request costing `tokens` may go. Returns True when it is the breaker's probe."""
        while self.window is not None and self.in_flight[0] >= self.window:
            waiter = asyncio.get_running_loop().create_future()
            self._window_waiters.append(waiter)
            await waiter
        now = self.clock()
        while True:
            now = self.clock()
            if self._probe is not None:
                await asyncio.shield(self._probe)
                continue
            if now < self.pause_until:
                await self.sleep(self.pause_until - now)
                continue
            if self.half_open:
                self._probe = asyncio.get_running_loop().create_future()
                self._count_in(tokens)
                return True
            break
        wait = 0.0
        if self.requests:
            wait = max(wait, self.requests.reserve(1, now))
        if self.tokens:
            wait = max(wait, self.tokens.reserve(tokens, now))
        if wait > 0:
            await self.sleep(wait)
        now = self.clock()
        if now < self.pause_until:  # a 429 arrived while we waited: honour it, reservation kept
            await self.sleep(self.pause_until - now)
        self._count_in(tokens)
        return False

    def _count_in(self, tokens: float) -> None:
        self.in_flight[0] += 1
        self.in_flight[1] += tokens

    def release(self, tokens: float) -> None:
        """The request `acquire` let through has its answer (whatever it was): no longer in flight."""
        self.in_flight[0] -= 1
        self.in_flight[1] -= tokens
        self._open_window()

    def _open_window(self) -> None:
        """Let through as many window waiters as the window now allows."""
        room = None if self.window is None else self.window - self.in_flight[0]
        while self._window_waiters and (room is None or room >= 1):
            waiter = self._window_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if room is not None:
                    room -= 1

    def _ramped(self) -> None:
        """Once the window holds what the requests bucket lets go at once (without one: `max_window`),
        the buckets govern from now on."""
        end = self.requests.capacity if self.requests is not None else self.max_window
        if self.window is not None and self.window >= end:
            self.window = None
            self._open_window()

    def observe(self, headers: Mapping[str, str], answer: bool = False) -> None:
        """Learn limits and remaining capacity from a response's `x-ratelimit-*` headers. An `answer` (a
        200) with none, before any limit was learnt, is a server that declares no limits (vLLM's,
        llama.cpp's): the careful start ends, as it would once a learnt limit's bucket fits the window."""
        if not self.learn:
            return
        declared = any(key.lower().startswith("x-ratelimit-") for key in headers)
        if answer and self.window is not None and self.requests is None and self.tokens is None and not declared:
            self.window = None
            self._open_window()
        now = self.clock()
        if answer and not declared:
            self._headerless(now)
            return
        if declared:
            self.headerless = (now, 0)
        for kind, told in (("requests", self.told[0]), ("tokens", self.told[1])):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            bucket = self.requests if kind == "requests" else self.tokens
            if limit and not told and (bucket is None or bucket.per_minute != limit):
                if bucket is None:
                    bucket = Bucket(limit, self.burst_seconds, now)
                    bucket.level = bucket.capacity
                    if kind == "requests":
                        self.requests = bucket
                    else:
                        self.tokens = bucket
                else:
                    bucket.refill(now)
                    bucket.per_minute = limit
            if bucket is not None and remaining is not None:
                # The server counted what it had received when it answered; what we sent since is
                # still in flight (an over-estimate of it: some of it had arrived). Call after `release`.
                in_flight = self.in_flight[0 if kind == "requests" else 1]
                bucket.refill(now)
                bucket.level = min(bucket.level, server_level(limit, remaining, bucket.capacity) - in_flight)
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}") or "")
                if limit and reset is not None:
                    self._slow_window(bucket, limit, remaining, in_flight, reset, now)
        self._ramped()

    def _headerless(self, now: float) -> None:
        """An answer without rate-limit headers: after `forget_after` seconds of them (and `FORGET_ANSWERS`),
        the limits learnt from earlier headers no longer hold."""
        since, count = self.headerless or (now, 0)
        self.headerless = (since, count + 1)
        if count + 1 < FORGET_ANSWERS or now - since < self.forget_after:
            return
        if not self.told[0]:
            self.requests = None
        if not self.told[1]:
            self.tokens = None
        self.headerless = None

    def _slow_window(
        self, bucket: Bucket, limit: float, remaining: float, in_flight: float, reset: float, now: float
    ) -> None:
        """The server refills `limit - remaining` in `reset` seconds. Within a factor 2 of the bucket's
        rate (a per-minute limit; short resets are too coarsely rounded to say more) the bucket is right.
        Far slower (the limit is per day, or per hour): once what is left is in flight, pause the pool
        until the server will have refilled enough for one more (at most `max_pause`; a 429 says more)."""
        if reset < 2.0:
            return
        server_rate = (limit - remaining) / reset
        needed = in_flight - remaining + 1  # units the server must refill before one more may go
        if not 0 < server_rate < bucket.rate / 2 or needed <= 0:
            return
        self.pause_until = max(self.pause_until, now + min(needed / server_rate, self.max_pause))
        self.pause_reason = "allowance spent"

    def rate_limited(self, retry_after: float | None) -> None:
        """A 429: pause the whole pool for `retry_after` (1 s when unsaid or unreadable, at most
        `max_pause`), then ramp up from empty."""
        now = self.clock()
        if retry_after is None or not math.isfinite(retry_after) or retry_after < 0:
            retry_after = 1.0
        self.pause_until = max(self.pause_until, now + min(retry_after, self.max_pause))
        self.pause_reason = "rate limited"
        self.pauses += 1
        if self.window is not None:  # limited during the careful start: halve, as TCP does
            self.window = max(1.0, self.window / 2)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.drain(self.pause_until)
        self._release_probe()

    def succeeded(self) -> None:
        """The server answered (any answer that is not transient): the outage, if any, is over; in the
        careful start, one more request may be in flight."""
        if self.window is not None:
            self.window += 1
            self._ramped()
            self._open_window()
        self.failures_in_a_row = 0
        self.breaker_pause = 0.0
        self.half_open = False
        self._release_probe()

    def failed(self, probe: bool = False) -> None:
        """A transient failure (5xx, timeout, dropped connection, malformed body).

        Opens the breaker after `breaker_threshold` in a row; once open, only the probe's failure
        doubles the pause (requests already in flight when it opened are still failing: not news).
        """
        self.failures_in_a_row += 1
        if probe or (not self.half_open and self.failures_in_a_row >= self.breaker_threshold):
            self.breaker_pause = min(self.breaker_max_pause, max(1.0, self.breaker_pause * 2))
            self.pause_until = max(self.pause_until, self.clock() + self.breaker_pause)
            self.pause_reason = "server unreachable"
            self.half_open = True
            self.pauses += 1
        if probe:
            self._release_probe()

    def abandon_probe(self) -> None:
        """The probe was cancelled before its answer: the next request becomes the probe."""
        self._release_probe()

    def _release_probe(self) -> None:
        if self._probe is not None:
            if not self._probe.done():
                self._probe.set_result(None)
            self._probe = None

    @property
    def breaker_open(self) -> bool:
        return self.half_open

    def health(self) -> str | None:
        """What holds the pool back right now, for a person: None when nothing does."""
        wait = self.pause_until - self.clock()
        if wait > 0:
            if self.pause_reason == "server unreachable":
                return f"paused: server unreachable, next probe in {wait:.0f} s"
            return f"{self.pause_reason or 'paused'}: waiting {wait:.0f} s"
        if self._probe is not None:
            return "paused: server unreachable, probing"
        return None


def server_level(limit: float | None, remaining: float, capacity: float) -> float:
    """What the server's enforcing window (of `capacity`, as ours) holds, from its headers.

    `remaining` comes in one of two units. In the window's own (`limit - remaining` more than a window
    holds), it is the level itself. In a minute's units while the server enforces over a window of about
    a second (OpenAI's headers; the fake's `headers_per_minute`), it is `limit` less the server's debt:
    what it took and has not refilled yet, the same in both units (both refill at `limit` per minute). A
    window then holds `capacity - debt`, not the thousands `remaining` says: a client trusting it bursts
    a whole window into a server that has only refilled part of it. For a server enforcing over a whole
    minute the two readings coincide, and `capacity - debt` only keeps bursts a little smaller.
    """
    debt = (limit - remaining) if limit else math.inf
    return capacity - debt if 0 <= debt <= capacity else remaining


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
