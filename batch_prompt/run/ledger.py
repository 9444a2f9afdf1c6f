"""The ledger: every answer of a run, from its arrival to its committed row, and the one count of it.

Live calls and Batch API results both end here. An answer is written to the response cache at once
(so a crash after this point loses nothing: a resume finds it there), then its row's outcome is queued
and committed with others in a small batch through the store's thread, together with the charges
(every response paid for, whatever became of its answer). The tallies here, per job and model, are the
only count of what the run did: the progress display and the run summary read them.

Rows asking exactly what another row of this run is already asking, at the same endpoint (the same
request in two jobs, or `dedupe`), follow it: they get its answer, counted as shared, not paid again.

When a place to keep answers fails, the other one keeps them: a cache that cannot be written leaves the
answers to the database; a database that cannot be written leaves them in the cache (a resume finds
them there). Either way `failure` is set, the run stops claiming and starting requests, lets what is in
flight arrive, and then reports the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BatchPromptError, CacheError
from ..reports.prices import Prices
from ..results.responses import chat_usage, usage_of
from ..store.asyncstore import AsyncStore
from ..store.cache import ResponseCache
from ..store.database import Charge, Claimed, JobRow, Outcome


@dataclass
class Tally:
    """What a run did for one job's model."""

    done: int = 0  # answered this run: by a call, from the cache, or shared
    cached: int = 0  # of done: taken from the cache
    shared: int = 0  # of done: the answer of another row of this run asking the same
    failed: int = 0
    in_flight: int = 0  # prompts in requests sent and not yet answered
    requests: int = 0  # calls made (every attempt)
    retries: int = 0  # of requests: attempts after a request's first
    paid: int = 0  # responses paid for
    prompt_tokens: int = 0  # of the responses paid for
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: cached input (usage.prompt_tokens_details)
    reasoning_tokens: int = 0  # of completion_tokens (usage.completion_tokens_details)
    flex_paid: int = 0  # of paid: answered at the flex service tier
    capacity_waits: int = 0  # flex requests answered 429 "resource unavailable" (no attempt used)
    fell_back: int = 0  # requests sent at the default tier after waiting `flex_fallback` on flex capacity
    cost_usd: float = 0.0  # of the responses paid for, at their mode's list price
    priced: int = 0  # responses paid for whose price is known

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def count(value: Any) -> int:
    """A token count from a response's usage; anything but a non-negative int counts 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def detail(usage: dict[str, Any], part: str, key: str) -> int:
    """A token count of a usage's details (`prompt_tokens_details.cached_tokens`, ...); 0 when absent."""
    details = usage.get(part)
    return count(details.get(key)) if isinstance(details, dict) else 0


def charged_mode(mode: str, tier: Any) -> str:
    """The mode a response is charged in: a live answer whose `service_tier` says "flex" at the flex price
    (a flex request answered at the default tier, or by a server that does not know tiers, is live)."""
    return "flex" if mode == "live" and tier == "flex" else mode


class Ledger:
    """See the module docstring. `run()` is its commit loop (a task); `close()` commits the rest."""

    def __init__(
        self, store: AsyncStore, owner: str, *, prices: Prices | None = None, flush_interval: float = 0.2,
        flush_batch: int = 256,
    ) -> None:
        self.store, self.owner, self.prices = store, owner, prices
        self.job_prices: dict[int, Prices] = {}  # a job's own (its spec's price file), else `prices`
        self.flush_interval, self.flush_batch = flush_interval, flush_batch
        self.tallies: dict[tuple[int, str], Tally] = {}
        self.errors: dict[str, list[Any]] = {}  # error kind -> [prompts failed with it, first message]
        self.failed_rows: dict[int, str] = {}  # failed prompts -> error kind: each counts once, as it ended
        self.outcomes: list[Outcome] = []
        self.charges: list[Charge] = []
        self.committed: dict[int, float] = {}  # job id -> cost of the charges committed, at list price
        self.followers: dict[tuple[str, str], list[Claimed]] = {}  # (endpoint, hash) -> rows riding along
        self.claimed: dict[int, Claimed] = {}  # rows this run holds and has not finished
        self.failure: BatchPromptError | None = None  # a place to keep answers failed: stop claiming
        self._wake = asyncio.Event()
        # live answers waiting for the cache: written together at the next turn of the event loop
        self._unwritten: dict[ResponseCache, dict[str, tuple[str, str]]] = {}
        # told the rows whose outcomes are committed (the run's leases let them go: nothing per row is kept)
        self.settled: Callable[[list[int]], None] | None = None

    # --- counting -------------------------------------------------------------------------------

    def tally(self, job_id: int, model: str) -> Tally:
        key = (job_id, model)
        if key not in self.tallies:
            self.tallies[key] = Tally()
        return self.tallies[key]

    def job_cost(self, job_id: int) -> float:
        """What this run has paid for the job, at list price."""
        return sum(t.cost_usd for (job, _), t in self.tallies.items() if job == job_id)

    def total(self) -> Tally:
        total = Tally()
        for tally in self.tallies.values():
            total.add(tally)
        return total

    def cache_tag(self, job: JobRow, row_id: int) -> str:
        """The tag of a cache entry bought for this very row (see `ResponseCache.get`)."""
        return f"{job.name}@{job.created_at}#{row_id}"

    # --- the rows this run holds -----------------------------------------------------------------

    def claim(self, rows: Iterable[Claimed]) -> None:
        for row in rows:
            self.claimed[row.id] = row

    def lose(self, row: Claimed) -> None:
        """`row`'s lease was taken over by another process: it is no longer ours to answer or hand back."""
        self.claimed.pop(row.id, None)

    def unfinished(self) -> list[int]:
        """Rows still held: to be handed back (pending) when the run ends."""
        return list(self.claimed)

    # --- arrivals -------------------------------------------------------------------------------

    def lead(self, row: Claimed, endpoint: str) -> bool:
        """Register `row` as asking its request at `endpoint`; False when another row of this run already
        is (then `row` follows it and gets its answer)."""
        key = (endpoint, row.hash)
        followers = self.followers.get(key)
        if followers is None:
            self.followers[key] = []
            return True
        followers.append(row)
        return False

    def answered(
        self, row: Claimed, text: str, endpoint: str, cache: ResponseCache, tag: str, attempts: int,
        *, together: bool = False,
    ) -> None:
        """A fresh answer for `row`: cached at once, then queued for the database; its followers too.

        `together` (the live path): the cache write joins those of the other answers that arrive in this
        turn of the event loop, and all are written in one transaction at the start of the next turn,
        before anything else runs (a commit of their rows included). One write per answer, each its
        own transaction, cost 0.06-0.5 ms of the event loop's time: a fifth of a request's."""
        if together:
            if not self._unwritten:
                asyncio.get_running_loop().call_soon(self.write_cache)
            self._unwritten.setdefault(cache, {})[row.hash] = (text, tag)
        else:
            try:
                cache.set(row.hash, text, tag)
            except CacheError as exc:  # the database still keeps it
                self._fail(exc)
        self._done(row, text, attempts=attempts)
        for follower in self.followers.pop((endpoint, row.hash), []):
            self._done(follower, text, shared=True)

    def from_cache(self, job: JobRow, row: Claimed, cache: ResponseCache, mode: str) -> bool:
        """Answer `row` from the cache when it holds its request's answer (for a job asking fresh samples,
        only one bought for this very row); False when it does not. An answer bought for this very row
        while the row is not done was paid for by a run that died before recording it: its charge (its
        usage, at `mode`'s price) is counted now, committed with the row's answer."""
        tag = self.cache_tag(job, row.id)
        found = self._unwritten.get(cache, {}).get(row.hash) or cache.get_tagged(row.hash)
        if found is None or (job.fresh and found[1] != tag):
            return False
        text, stored = found
        if stored == tag:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            self.paid(job.id, row.model, mode, 1, usage_of(data), row_id=row.id,
                      tier=data.get("service_tier") if isinstance(data, dict) else None)
        self._done(row, text, cached=True)
        return True

    def shared(self, row: Claimed, text: str) -> None:
        """`row` asks what another row answered in this run (a batch's rows with one request)."""
        self._done(row, text, shared=True)

    def retry(self, row: Claimed, error: str, kind: str, owner: str | None = None, attempts: int = 1) -> None:
        """`row` goes back to pending to be asked again (a batch line expired, cancelled, transient), its
        attempts counted up by `attempts` (0: the provider never ran it)."""
        self._queue(Outcome(row.id, row.job_id, "retry", error=error, attempts=attempts, error_kind=kind,
                            owner=owner))

    def failed(
        self, row: Claimed, endpoint: str, error: str, kind: str, attempts: int, owner: str | None = None
    ) -> None:
        """`row` failed for good (the server refused it, or every attempt failed); its followers too.
        `owner`: the lease it is held under, when not this process's (a batch's)."""
        for one in [row, *self.followers.pop((endpoint, row.hash), [])]:
            self._queue(Outcome(one.id, one.job_id, "failed", error=error, attempts=attempts, error_kind=kind,
                                owner=owner))
            attempts = 0
            if one.id in self.failed_rows:  # moved back by retry-failed during the run, and failed again
                self._uncount_failure(one)
            self.failed_rows[one.id] = kind
            self.tally(one.job_id, one.model).failed += 1
            record = self.errors.setdefault(kind, [0, error])
            record[0] += 1

    def _uncount_failure(self, row: Claimed) -> None:
        """A prompt that failed earlier in this run fails again or is answered: it counts once, as it ends."""
        kind = self.failed_rows.pop(row.id)
        self.tally(row.job_id, row.model).failed -= 1
        record = self.errors[kind]
        record[0] -= 1
        if not record[0]:
            del self.errors[kind]

    def abandon(self, row: Claimed, endpoint: str) -> list[Claimed]:
        """`row` leaves this run unanswered (stopped, refused, lost): its followers no longer wait for it.
        Returns them (they are handed back with it)."""
        return self.followers.pop((endpoint, row.hash), [])

    def paid(self, job_id: int, model: str, mode: str, answers: int, usage: Any, row_id: int | None = None,
             tier: Any = None) -> None:
        """A response was paid for (its usage as the server reported it; `tier`: the `service_tier` it
        says it was served at, see `charged_mode`). A batch line's charge names its row (`row_id`): it is
        committed only with that row's answer, so collecting twice pays once."""
        usage = chat_usage(usage)
        usage = usage if isinstance(usage, dict) else {}
        prompt, completion = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
        cached = min(detail(usage, "prompt_tokens_details", "cached_tokens"), prompt)
        reasoning = detail(usage, "completion_tokens_details", "reasoning_tokens")
        mode = charged_mode(mode, tier)
        prices = self.job_prices.get(job_id, self.prices)
        cost = prices.cost(model, mode, prompt, completion, cached) if prices is not None else None
        self.charges.append(Charge(job_id, model, mode, 1, answers, prompt, completion, row_id, cost or 0.0,
                                   cached, reasoning))
        tally = self.tally(job_id, model)
        tally.paid += 1
        tally.prompt_tokens += prompt
        tally.completion_tokens += completion
        tally.cached_tokens += cached
        tally.reasoning_tokens += reasoning
        tally.flex_paid += int(mode == "flex")
        if cost is not None:
            tally.cost_usd += cost
            tally.priced += 1

    def _done(self, row: Claimed, text: str, *, cached: bool = False, shared: bool = False, attempts: int = 0) -> None:
        usage = usage_of(json.loads(text))
        self._queue(Outcome(
            row.id, row.job_id, "done", text, cached, count(usage.get("prompt_tokens")),
            count(usage.get("completion_tokens")), attempts,
        ))
        if row.id in self.failed_rows:  # failed earlier in this run, moved back by retry-failed, answered now
            self._uncount_failure(row)
        tally = self.tally(row.job_id, row.model)
        tally.done += 1
        tally.cached += int(cached)
        tally.shared += int(shared)

    def _queue(self, outcome: Outcome) -> None:
        self.claimed.pop(outcome.id, None)
        self.outcomes.append(outcome)
        if len(self.outcomes) >= self.flush_batch:
            self._wake.set()

    def _fail(self, exc: BatchPromptError) -> None:
        if self.failure is None:
            self.failure = exc

    def stop_with(self, exc: BatchPromptError) -> None:
        """A place to keep answers failed elsewhere (a claim, a batch's record): nothing more is claimed,
        and the run ends raising it once what is in flight is kept."""
        self._fail(exc)

    # --- committing -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit queued outcomes every `flush_interval`, or at once when a batch is full."""
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: in 3.11 it can swallow a cancellation
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    def write_cache(self) -> None:
        """Write the answers waiting for the cache (`answered(together=True)`), one transaction per cache."""
        unwritten, self._unwritten = self._unwritten, {}
        for cache, answers in unwritten.items():
            try:
                with cache.transaction():
                    for request_hash, (text, tag) in answers.items():
                        cache.set(request_hash, text, tag)
            except CacheError as exc:  # the database still keeps them
                self._fail(exc)

    async def flush(self) -> bool:
        """Commit what is queued (the answers waiting for the cache written first); False when the
        database failed (what was queued stays queued)."""
        if self._unwritten:
            self.write_cache()
        if not self.outcomes and not self.charges:
            return True
        outcomes, self.outcomes = self.outcomes, []
        charges, self.charges = self.charges, []
        try:
            await asyncio.shield(self.store.record(outcomes, self.owner, charges))
        except BatchPromptError as exc:  # disk full, I/O error, the file gone: the cache still holds them
            self.outcomes[:0] = outcomes
            self.charges[:0] = charges
            self._fail(exc)
            return False
        for charge in charges:
            self.committed[charge.job_id] = self.committed.get(charge.job_id, 0.0) + charge.cost
        if self.settled is not None:
            self.settled([outcome.id for outcome in outcomes])
        return True

    def committed_cost(self, job_id: int) -> float:
        """What this run has paid for the job and committed to the database (the rest is still queued)."""
        return self.committed.get(job_id, 0.0)
