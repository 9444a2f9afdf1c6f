"""The retry policy: the one layer that retries (the SDK's own retries are off).

Plain parameters; exponential backoff with jitter; a server-directed wait (`retry-after-ms`,
`retry-after`) is used instead when given, capped at `max_server_wait`. Rate-limit retries (429) do not
use up a prompt's attempts: the limiter has already paused the pool for them; nor do failures the caller
calls free (the runner: an outage probe's failure is the outage's, not the prompt's). `RetryPolicy.no_wait()`
is the test mode: every wait is zero, so tests never sleep through backoff.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
import tenacity

from .client import RETRY, classify, retry_after

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial: float = 0.5
    maximum: float = 60.0
    jitter: float = 0.5  # each wait is scaled by a random factor in [1 - jitter, 1]
    max_server_wait: float = 120.0
    free_rate_limits: int = 4  # 429 retries per prompt that cost no attempt, per attempt allowed

    @classmethod
    def no_wait(cls, max_attempts: int = 8) -> RetryPolicy:
        return cls(max_attempts=max_attempts, initial=0.0, maximum=0.0, jitter=0.0, max_server_wait=0.0)

    def wait(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds before retry number `attempt` (1 = the first retry) after `exc`."""
        server = retry_after(exc) if exc is not None else None
        if server is not None:
            return float(min(server, self.max_server_wait))
        backoff: float = min(self.maximum, self.initial * 2.0 ** (attempt - 1))
        return backoff * (1 - self.jitter * random.random())

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        sleep: Callable[[float], Awaitable[None]],
        free: Callable[[BaseException], bool] = lambda exc: False,
    ) -> tuple[T, int]:
        """Call `fn` until it succeeds, fails permanently or runs out of attempts; (result, calls made).

        A failure for which `free(exc)` is true, or a retryable 429 (up to `free_rate_limits` x
        `max_attempts` of them), does not use up an attempt.
        The last exception is re-raised as it is; its `attempts` attribute says how many calls were made.
        """
        calls = 0
        free_calls = 0
        rate_limited = 0

        def stop(state: tenacity.RetryCallState) -> bool:
            return state.attempt_number - free_calls >= self.max_attempts

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.wait(max(1, state.attempt_number - free_calls), exc)

        retrying = tenacity.AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception(lambda e: classify(e) == RETRY),
            reraise=True,
            sleep=sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    calls += 1
                    try:
                        result = await fn()
                    except Exception as exc:
                        if classify(exc) == RETRY and free(exc):
                            free_calls += 1
                        elif isinstance(exc, openai.RateLimitError) and classify(exc) == RETRY:
                            # free, up to a bound: a prompt the server *always* rate-limits (a request
                            # too large for the limit) must fail some day
                            rate_limited += 1
                            free_calls += int(rate_limited <= self.free_rate_limits * self.max_attempts)
                        raise
        except BaseException as exc:
            _set_attempts(exc, calls)
            raise
        return result, calls


def _set_attempts(exc: BaseException, calls: int) -> None:
    with contextlib.suppress(AttributeError):
        exc.attempts = calls  # type: ignore[attr-defined]  # read back by the runner via getattr


def attempts_of(exc: BaseException) -> int:
    value: Any = getattr(exc, "attempts", 1)
    return int(value)
