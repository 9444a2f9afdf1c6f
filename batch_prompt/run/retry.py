"""The retry policy: the one layer that retries (the SDK's own retries are off).

Plain parameters; exponential backoff with jitter; a server-directed wait (`retry-after-ms`,
`retry-after` in seconds or as a date) is used instead when given, capped at `max_server_wait`. What is
retried is the `retryable` predicate's call (by default `failures.classify`'s verdict). Rate-limit
retries (429) do not use up a prompt's attempts, up to a bound: the limiter has already paused the pool
for them; nor do failures the caller calls free (the runner: an outage probe's failure is the outage's,
not the prompt's), nor a flex capacity 429 (`Verdict.CAPACITY`: never given up on; its backoff grows
with each one). `RetryPolicy.decide(failure, attempt)` is the decision itself, pure: wait this long and
ask again, or give up; `call` drives it for live requests, the batch engine for a batch's lines (which
are asked again in a later batch). `RetryPolicy.no_wait()` is the test mode: every wait is zero, so tests never sleep
through backoff.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from ..errors import RetryExhausted
from .failures import MAX_SERVER_WAIT, Failure, Verdict, classify

T = TypeVar("T")


def retryable(exc: BaseException) -> bool:
    """The default predicate: what `failures.classify` calls transient or a rate limit."""
    return classify(exc).verdict.retryable


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial: float = 0.5
    maximum: float = 60.0
    jitter: float = 0.5  # each wait is scaled by a random factor in [1 - jitter, 1]
    max_server_wait: float = MAX_SERVER_WAIT
    free_rate_limits: int = 4  # 429 retries per prompt that cost no attempt, per attempt allowed
    retryable: Callable[[BaseException], bool] = retryable

    @classmethod
    def no_wait(cls, max_attempts: int = 8) -> RetryPolicy:
        return cls(max_attempts=max_attempts, initial=0.0, maximum=0.0, jitter=0.0, max_server_wait=0.0)

    @classmethod
    def for_run(cls, policy: RetryPolicy | None, max_attempts: int | None) -> RetryPolicy:
        """A run's one policy, live and batch (`RunOptions.retry` and `max_attempts`): `policy` (or the
        default), with `max_attempts` when given."""
        policy = policy or cls()
        if max_attempts is None or max_attempts == policy.max_attempts:
            return policy
        return dataclasses.replace(policy, max_attempts=max_attempts)

    def decide(self, failure: Failure, attempt: int) -> float | None:
        """After `failure` on a prompt's `attempt`-th attempt that counts (1: its first), the seconds to wait
        before asking again, or None: give up (the failure is not one to retry, or no attempt is left).
        A server-directed wait is used when given (capped at `max_server_wait`), else exponential backoff
        with jitter."""
        if not failure.verdict.retryable or (attempt >= self.max_attempts and failure.verdict is not Verdict.CAPACITY):
            return None
        if failure.retry_after is not None:
            return float(min(failure.retry_after, self.max_server_wait))
        backoff: float = min(self.maximum, self.initial * 2.0 ** (max(1, attempt) - 1))
        return backoff * (1 - self.jitter * random.random())

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        sleep: Callable[[float], Awaitable[None]],
        free: Callable[[BaseException], bool] = lambda exc: False,
        most: Callable[[BaseException], float | None] = lambda exc: None,
    ) -> T:
        """Call `fn` until it succeeds, fails permanently or runs out of attempts.

        A failure that is not `retryable` is raised as it is, at once. When the attempts run out on
        retryable failures, raises `RetryExhausted` carrying the last error and the number of calls. A
        failure for which `free(exc)` is true, or a rate limit (up to `free_rate_limits` x
        `max_attempts` of them), does not use up an attempt. `most(exc)`: the longest wait after `exc`
        (None: no bound), whatever the server asked.
        """
        calls = free_calls = rate_limited = capacity = 0

        def decision(state: tenacity.RetryCallState) -> float | None:
            exc = state.outcome.exception() if state.outcome else None
            failure = classify(exc) if exc is not None else Failure(Verdict.RETRY, "", "")
            # (a failure the `retryable` predicate retries is retried as transient, whatever classify says)
            failure = failure if failure.verdict.retryable else Failure(Verdict.RETRY, failure.kind, failure.message)
            if failure.verdict is Verdict.CAPACITY:  # its backoff grows with each, whatever the attempts
                wait = self.decide(failure, capacity)
            else:
                wait = self.decide(failure, state.attempt_number - free_calls)
            bound = most(exc) if exc is not None and wait is not None else None
            return wait if bound is None or wait is None else min(wait, max(0.0, bound))

        def stop(state: tenacity.RetryCallState) -> bool:
            return decision(state) is None

        def wait(state: tenacity.RetryCallState) -> float:
            return decision(state) or 0.0

        retrying = tenacity.AsyncRetrying(
            stop=stop, wait=wait, retry=tenacity.retry_if_exception(self.retryable), reraise=True, sleep=sleep
        )
        try:
            async for attempt in retrying:
                with attempt:
                    calls += 1
                    try:
                        return await fn()
                    except Exception as exc:
                        verdict = classify(exc).verdict
                        if self.retryable(exc) and verdict is Verdict.CAPACITY:
                            capacity += 1
                            free_calls += 1
                        elif self.retryable(exc) and free(exc):
                            free_calls += 1
                        elif self.retryable(exc) and verdict is Verdict.RATE_LIMITED:
                            # free, up to a bound: a prompt the server *always* rate-limits (a request
                            # too large for the limit) must fail some day
                            rate_limited += 1
                            free_calls += int(rate_limited <= self.free_rate_limits * self.max_attempts)
                        raise
        except Exception as exc:
            if self.retryable(exc):
                raise RetryExhausted(exc, calls) from exc
            raise
        raise AssertionError("unreachable: tenacity either returned or raised")  # pragma: no cover
