"""The rate limits a fake server enforces: token buckets for requests and tokens per minute, one pair for
the whole server (`rpm_limit`, `tpm_limit`) and one pair per model where `rpm_limits` / `tpm_limits` name
it, as OpenAI limits each model on its own (a model named there is held to its own limits only, and its
headers are its own; any other model shares the server-wide pair).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .api import FakeConfig, format_duration


class Bucket:
    """Continuously refilling token bucket; a request may overdraw a full bucket (debt).

    The bucket enforces over ``burst_seconds`` (capacity ``limit * burst_seconds / 60``).  With
    ``per_minute`` its headers count in a minute's units, as OpenAI's do while it enforces over
    shorter windows: a second level, of capacity ``limit``, is debited and refilled alongside, so
    ``remaining`` is the limit minus what was taken and not yet refilled at ``limit / 60`` per second
    (one request after a long pause: ``limit - 1``) and ``reset`` is the time until that level is full
    again (one request at 10,000 RPM: ``6ms``), whatever the burst window.  A client that trusts
    ``remaining`` alone overruns the short window and meets 429s.
    """

    __slots__ = ("capacity", "level", "limit", "minute_level", "per_minute", "rate", "stamp")

    def __init__(self, limit: int, burst_seconds: float, now: float, per_minute: bool = False) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = limit * burst_seconds / 60.0
        self.level = self.capacity
        self.per_minute = per_minute
        self.minute_level = float(limit)
        self.stamp = now

    def wait(self, cost: float, now: float) -> float:
        """Refill to ``now``; seconds until ``cost`` can be taken (0 = now)."""
        refill = (now - self.stamp) * self.rate
        self.level = min(self.capacity, self.level + refill)
        self.minute_level = min(self.limit, self.minute_level + refill)
        self.stamp = now
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need or self.rate <= 0 else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost
        self.minute_level -= cost

    def headers(self, kind: str) -> dict[str, str]:
        level, capacity = (self.minute_level, self.limit) if self.per_minute else (self.level, self.capacity)
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(level))),
            f"x-ratelimit-reset-{kind}": format_duration((capacity - level) / self.rate) if self.rate > 0 else "0s",
        }


class Refusal(NamedTuple):
    """Why a request was refused: which limit, its value, what the request asked, how long to wait."""

    kind: str  # "requests" or "tokens"
    limit: int
    cost: int
    wait: float


class Limits:
    """The buckets of one server's settings; called under the server's lock."""

    def __init__(self, config: FakeConfig, now: float) -> None:
        self.config, self.now = config, now
        self._pairs: dict[str | None, tuple[Bucket | None, Bucket | None]] = {None: self._pair(None)}
        self._models = set(config.rpm_limits or {}) | set(config.tpm_limits or {})

    def _pair(self, model: str | None) -> tuple[Bucket | None, Bucket | None]:
        c = self.config
        rpm = c.rpm_limit if model is None else (c.rpm_limits or {}).get(model)
        tpm = c.tpm_limit if model is None else (c.tpm_limits or {}).get(model)
        return (None if rpm is None else Bucket(rpm, c.burst_seconds, self.now, c.headers_per_minute),
                None if tpm is None else Bucket(tpm, c.burst_seconds, self.now, c.headers_per_minute))

    def buckets(self, model: str) -> tuple[Bucket | None, Bucket | None]:
        key = model if model in self._models else None
        if key not in self._pairs:
            self._pairs[key] = self._pair(key)
        return self._pairs[key]

    def admit(self, model: str, tokens: int, now: float) -> Refusal | None:
        """Take one request of `tokens` from `model`'s buckets, or say why it must wait (taking nothing)."""
        requests, token_bucket = self.buckets(model)
        wait_r = requests.wait(1, now) if requests else 0.0
        wait_t = token_bucket.wait(tokens, now) if token_bucket else 0.0
        if wait_r > 0 and requests is not None:
            return Refusal("requests", requests.limit, 1, max(wait_r, wait_t))
        if wait_t > 0 and token_bucket is not None:
            return Refusal("tokens", token_bucket.limit, tokens, wait_t)
        if requests:
            requests.take(1)
        if token_bucket:
            token_bucket.take(tokens)
        return None

    def headers(self, model: str) -> dict[str, str]:
        """`model`'s `x-ratelimit-*` headers (none for a server without limits)."""
        requests, tokens = self.buckets(model)
        headers: dict[str, str] = {}
        if requests:
            headers.update(requests.headers("requests"))
        if tokens:
            headers.update(tokens.headers("tokens"))
        return headers
