"""The worker pool of one job: claim, answer from the cache, pack, limit, call, retry, cache, commit.

A feeder claims rows in chunks (one `UPDATE ... RETURNING` each), answers what the cache holds at once,
packs the rest into requests and queues them; `concurrency` workers take requests, wait for the limiter,
call the API through the retry policy, write each response to the cache, and hand outcomes to
a ticker that commits them in small batches, renews leases and redraws progress. Nothing per request
touches the database.

Stopping: `request_stop` stops claiming, lets in-flight requests finish for `grace` seconds, then
cancels; whatever is still claimed goes back to `pending`. A fatal API error (401, 403, quota), a store
or cache that cannot be written, or an unexpected local error stops the pool the same way at once,
leaving rows unfinished, not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import openai

from . import pricing, tokens
from .cache import ResponseCache
from .client import ApiClient, Endpoint, check_choices
from .errors import BatchPromptError, ConfigError, FatalAPIError, RetryExhausted
from .failures import Verdict, classify, redact
from .limiter import Limiter
from .options import RunOptions, RunSummary
from .progress import Progress
from .retry import RetryPolicy
from .store import Charge, Claimed, JobRow, Outcome, Store, lease_owner

UNREACHABLE_AFTER = 12  # connection failures with no answer yet after which the endpoint is called wrong
Item = list[Claimed]  # the prompts of one request (one for chat; up to prompts_per_request packed)


class WorkerPool:
    """Runs one job: see the module docstring. Dependencies come in; nothing is built here."""

    def __init__(
        self, store: Store, job: JobRow, endpoint: Endpoint, opts: RunOptions, progress: Progress,
        summary: RunSummary, client: ApiClient, cache: ResponseCache, limiter: Limiter,
        estimator: tokens.TokenEstimator,
    ) -> None:
        self.store, self.job, self.endpoint, self.opts = store, job, endpoint, opts
        self.progress, self.summary = progress, summary
        self.client, self.cache, self.limiter, self.estimator = client, cache, limiter, estimator
        self.reached = False  # some request of this run got an answer: the endpoint exists
        self.unreached = 0  # connection failures before any answer
        self.policy = opts.retry or RetryPolicy(max_attempts=opts.max_attempts)
        self.owner = lease_owner()
        self.pack = job.prompts_per_request if job.api == "completions" else 1
        self.claimed: dict[int, Claimed] = {}
        self.followers: dict[str, list[Claimed]] = {}  # same hash as a row in flight: answered with it
        self.outcomes: list[Outcome] = []
        self.charges: list[Charge] = []  # responses paid for, committed with the next outcomes
        self.queue: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=opts.concurrency)
        self.stopping = False
        self.feeder: asyncio.Task[None] | None = None
        self.deadline: asyncio.Timeout | None = None
        self.failure: BatchPromptError | None = None  # the store failed under the ticker: the run stops
        self.cache_tag = f"{job.name}@{job.created_at}"  # cache entries bought for this job's rows

    async def run(self) -> None:
        self.store.reclaim(self.job)
        counts = self.store.counts(self.job)
        self.progress.start(self.job.name, counts["total"], counts["done"] + counts["failed"])
        ticker = asyncio.create_task(self._tick(), name=f"ticker-{self.job.name}")
        try:
            async with asyncio.timeout(None) as self.deadline:
                try:
                    async with asyncio.TaskGroup() as group:
                        self.feeder = group.create_task(self._feed(), name="feeder")
                        for i in range(self.opts.concurrency):
                            group.create_task(self._work(), name=f"worker-{i}")
                except* BatchPromptError as errors:  # a fatal API error, the store or the cache failing
                    raise errors.exceptions[0] from None
        except TimeoutError:
            self.summary.interrupted = True
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._finish()
            self.progress.render(final=True)
        if self.failure is not None:
            raise self.failure
        if self.stopping:
            self.summary.interrupted = True

    def _finish(self) -> None:
        """Commit what arrived, then hand back what is still claimed; a failing store is reported once."""
        for step in (self._flush, lambda: self.store.release(list(self.claimed), self.owner)):
            try:
                step()
            except BatchPromptError as exc:
                self.failure = self.failure or exc

    def request_stop(self) -> None:
        """Stop claiming; in-flight requests get `grace` seconds, then are cancelled."""
        if self.stopping:
            return
        self.stopping = True
        if self.feeder is not None:
            self.feeder.cancel()
        while not self.queue.empty():
            self.queue.get_nowait()
        for _ in range(self.opts.concurrency):
            self.queue.put_nowait(None)
        if self.deadline is not None and not self.deadline.expired():
            self.deadline.reschedule(asyncio.get_running_loop().time() + self.opts.grace)

    # --- feeding ----------------------------------------------------------------------------------

    async def _feed(self) -> None:
        chunk = max(2 * self.opts.concurrency, 64) * self.pack
        while not self.stopping:
            rows = self.store.claim(self.job, self.owner, chunk, self.opts.lease_seconds)
            if not rows:
                if self.store.reclaim(self.job):
                    continue
                break
            for row in rows:
                self.claimed[row.id] = row
            for item in self._items(self._uncached(rows)):
                await self.queue.put(item)
        for _ in range(self.opts.concurrency):
            await self.queue.put(None)

    def _uncached(self, rows: list[Claimed]) -> list[Claimed]:
        """Answer rows from the cache; return the rest, one per hash (duplicates ride along)."""
        todo = []
        for row in rows:
            # --no-cache asks for fresh samples, but an answer bought for this very row (by a run that
            # died before committing it) is this row's own sample: never pay for it twice.
            text = self.cache.get(row.hash, None if self.opts.cache else self._tag(row))
            if text is not None:
                self._done(row, text, cached=True)
            elif row.hash in self.followers:
                self.followers[row.hash].append(row)
            else:
                self.followers[row.hash] = []
                todo.append(row)
        return todo

    def _tag(self, row: Claimed) -> str:
        return f"{self.cache_tag}#{row.id}"

    def _items(self, rows: list[Claimed]) -> Iterator[Item]:
        if self.pack == 1:
            yield from ([row] for row in rows)
            return
        by_model: dict[str, list[Claimed]] = {}
        for row in rows:
            by_model.setdefault(row.model, []).append(row)
        for group in by_model.values():
            for start in range(0, len(group), self.pack):
                yield group[start : start + self.pack]

    # --- working ----------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            await self._process(item)

    async def _process(self, rows: Item) -> None:
        body = self._body(rows)
        n = int(body.get("n") or 1)
        cost, our_prompt_tokens = self.estimator.cost(body)

        probe_failed = False  # the last attempt was the breaker's probe, and failed: the outage's fault
        calls = 0

        async def attempt() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            nonlocal probe_failed, calls
            if self.stopping:
                raise _Stopped
            probe = probe_failed = await self.limiter.acquire(cost)
            try:
                self.progress.sent(len(rows))
                calls += 1
                try:
                    data, headers = await self.client.send(self.job.api, body)
                finally:
                    self.limiter.release(cost)
                    self.progress.answered(len(rows))
                self.limiter.observe(headers)
                choices = check_choices(data, n * len(rows))
            except Exception as exc:
                self._observe_failure(exc, probe)
                raise
            except BaseException:  # cancelled: let another request be the probe
                if probe:
                    self.limiter.abandon_probe()
                raise
            probe_failed = False
            self.reached = True
            self.estimator.observe(our_prompt_tokens, data.get("usage"))
            self.limiter.succeeded()
            return data, choices

        try:
            data, choices = await self.policy.call(attempt, self.limiter.sleep, free=lambda exc: probe_failed)
        except _Stopped:
            self.summary.requests += calls
            return  # the rows stay claimed and are handed back when the run ends
        except Exception as exc:
            self.summary.requests += calls
            if isinstance(exc, BatchPromptError) and not isinstance(exc, RetryExhausted):
                raise  # the store, the cache or the endpoint failed: the run stops
            failure = classify(exc)
            error = redact(failure.message, self.endpoint.api_key)
            if failure.verdict is Verdict.FATAL:
                raise FatalAPIError(f"the API refused the run: {error}", status_code=failure.status) from None
            if failure.verdict is Verdict.LOCAL:  # not an answer from the server: our side is broken
                raise BatchPromptError(f"the run stopped on an unexpected error: {error}") from None
            if failure.verdict is Verdict.FAIL and len(rows) > 1:  # find the bad prompt(s), spare the rest
                half = len(rows) // 2
                await self._process(rows[:half])
                await self._process(rows[half:])
                return
            self.summary.errors[failure.kind] += len(rows)
            for row in rows:
                self._failed(row, error, calls, failure.kind)
            return
        self.summary.requests += calls
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        self.charges.append(Charge(
            self.job.id, rows[0].model, "live", 1, len(rows),
            _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
        ))
        for i, row in enumerate(rows):
            response = _response_for(data, choices[i * n : (i + 1) * n], len(rows), i)
            text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
            self.cache.set(row.hash, text, self._tag(row))
            self._done(row, text, cached=False, attempts=calls if i == 0 else 0, usage=response.get("usage"))

    def _observe_failure(self, exc: Exception, probe: bool) -> None:
        failure = classify(exc)
        if isinstance(exc, openai.APIConnectionError) and not self.reached:
            self.unreached += 1
            if self.unreached >= UNREACHABLE_AFTER:  # never answered: a wrong URL, not an outage
                error = redact(failure.message, self.endpoint.api_key)
                raise ConfigError(f"cannot reach {self.endpoint.base_url} (nothing answered yet): {error}")
        if failure.verdict is Verdict.RATE_LIMITED and isinstance(exc, openai.APIStatusError):
            self.limiter.observe(exc.response.headers)
            self.limiter.rate_limited(failure.retry_after)
        elif failure.verdict is Verdict.RETRY:
            self.limiter.failed(probe)
        else:  # the server answered: not an outage
            self.limiter.succeeded()

    def _body(self, rows: Item) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(rows[0].request)
        if len(rows) > 1:
            body["prompt"] = [json.loads(row.request)["prompt"] for row in rows]
        return body

    # --- outcomes ---------------------------------------------------------------------------------

    def _done(self, row: Claimed, text: str, cached: bool, attempts: int = 0, usage: Any = None) -> None:
        if usage is None:
            usage = json.loads(text).get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens, completion_tokens = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        self._add(Outcome(row.id, row.job_id, "done", text, cached, prompt_tokens, completion_tokens, attempts))
        self.summary.done += 1
        self.summary.cached += int(cached)
        if cached:
            self.progress.finished("done", cached)
        else:
            cost = pricing.list_prices().cost(row.model, "live", prompt_tokens, completion_tokens)
            self.progress.finished("done", cached, prompt_tokens, completion_tokens, cost)
            self.summary.prompt_tokens += prompt_tokens
            self.summary.completion_tokens += completion_tokens
            if cost is not None:
                self.summary.cost_usd = (self.summary.cost_usd or 0.0) + cost
        for follower in self.followers.pop(row.hash, []):
            self._done(follower, text, cached=True)

    def _failed(self, row: Claimed, error: str, attempts: int, kind: str) -> None:
        self._add(Outcome(row.id, row.job_id, "failed", error=error, attempts=attempts, error_kind=kind))
        self.progress.finished("failed")
        self.summary.failed += 1
        for follower in self.followers.pop(row.hash, []):
            self._failed(follower, error, 0, kind)

    def _add(self, outcome: Outcome) -> None:
        self.claimed.pop(outcome.id, None)
        self.outcomes.append(outcome)
        if len(self.outcomes) >= self.opts.flush_batch:
            self._flush()

    def _flush(self) -> None:
        outcomes, self.outcomes = self.outcomes, []
        charges, self.charges = self.charges, []
        try:
            self.store.record(outcomes, self.owner, charges)
        except BaseException:
            self.outcomes = outcomes + self.outcomes  # kept for the next try; they are in the cache too
            self.charges = charges + self.charges
            raise

    async def _tick(self) -> None:
        """Commit outcomes, renew leases and redraw progress, on a timer. If the store fails, the run
        stops at once (rows it cannot commit would otherwise be paid for, lose their lease and be paid
        for again by another resumer)."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.opts.flush_interval)
            try:
                self._flush()
                if loop.time() - renewed > self.opts.lease_seconds / 3:
                    self.store.renew(self.owner, self.opts.lease_seconds)
                    renewed = loop.time()
            except BatchPromptError as exc:
                self.failure = exc
                self.request_stop()  # in-flight answers still reach the cache
                return
            self.progress.render()


class _Stopped(Exception):
    """Raised instead of a new attempt once the run is stopping."""


def _count(value: Any) -> int:
    """A token count from a response's usage; anything but a non-negative int counts 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _response_for(
    data: dict[str, Any], choices: list[dict[str, Any]], packed: int, position: int
) -> dict[str, Any]:
    """One prompt's own response: the completion with only its choices, indexed 0..n-1.

    For a packed request the usage is split evenly among its prompts (the API reports only the total).
    """
    response = {key: value for key, value in data.items() if key != "choices"}
    response["choices"] = [{**choice, "index": j} for j, choice in enumerate(choices)] if packed > 1 else choices
    if packed > 1 and isinstance(data.get("usage"), dict):
        usage = {}
        for key, total in data["usage"].items():
            if isinstance(total, int):
                usage[key] = total // packed + (1 if position < total % packed else 0)
        response["usage"] = usage
    return response
