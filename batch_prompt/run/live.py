"""The live worker pool: every job's models, each at its endpoint, worked side by side in one concurrency.

Each (job, model) is a `Lane` (`lanes.py`). Its feeder takes rows through the lanes' one intake (claimed in
chunks, what the cache holds answered at once), lets rows asking what another row of this run
already asks follow it, packs the rest into requests (legacy completions) and queues them. Its workers
take requests; each attempt waits for the lane's limiter (one per endpoint and model: its own limits,
learned from its own headers, a careful start), then for a fair share of the run's `concurrency`
(`Slots`), makes sure this process still holds the rows' leases, sends, and hands every answer to the
ledger. Nothing per request waits for the database.

Stopping (`stop()`: Ctrl-C, a store or cache failing): no lane claims or starts anything more; requests
in flight finish and their answers are kept; once none is in flight the pool ends. A refused key, an
exhausted quota or an endpoint that never answers stops the lanes of that endpoint only
(`EndpointState.refuse`); the others go on. `abandon()` (a second Ctrl-C, the grace spent) cancels what is in flight.

Service tiers: a lane's `service_tier` (the run's `--service-tier`, else the request's own model arg) is
set in each request's body as it is sent, never in the row's request (its hash, its cache key). A flex
request answered 429 "resource unavailable" (`Verdict.CAPACITY`) waits and asks again at no attempt's
cost; once it has waited on flex capacity for the lane's `flex_fallback` seconds, its next sends go at
the default tier (counted in the tally's `fell_back`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass
from typing import Any

from ..errors import BatchPromptError, RetryExhausted
from ..results.responses import as_chat
from ..spec import tokens
from ..store.asyncstore import AsyncStore
from ..store.leases import LeaseKeeper
from .client import split_choices
from .failures import (
    MalformedResponse,
    Verdict,
    classify,
    connection_refused,
    is_connection_error,
    redact,
    status_error_of,
)
from .lanes import Intake, Item, Lane
from .ledger import Ledger
from .retry import RetryPolicy
from .slots import Slots

BLOCKED_WAIT = 1.0  # seconds between claims while the only rows left wait for an answer in flight elsewhere


class _Stopped(Exception):
    """Raised instead of a new attempt once its lane, or the run, is stopping."""


@dataclass(eq=False)
class _Request:
    """One request across its attempts: its lane, the rows it still asks for, the choices each asks (`n`), the
    calls made, and whether the last attempt was the breaker's probe and failed (the outage's fault)."""

    lane: Lane
    rows: Item
    n: int
    calls: int = 0
    probe_failed: bool = False
    tier: str | None = None  # the service_tier it is sent at (None: as its body says, or none)
    waiting_since: float | None = None  # when flex capacity first refused it (time.monotonic())


class LivePool:
    """Runs the lanes: see the module docstring. Dependencies come in; nothing is built here."""

    def __init__(
        self, lanes: list[Lane], *, store: AsyncStore, ledger: Ledger, leases: LeaseKeeper, slots: Slots,
        policy: RetryPolicy, estimator: tokens.TokenEstimator, owner: str, lease_seconds: float,
    ) -> None:
        self.lanes, self.store, self.ledger, self.leases, self.slots = lanes, store, ledger, leases, slots
        self.policy, self.estimator, self.owner, self.lease_seconds = policy, estimator, owner, lease_seconds
        self.intake = Intake(store, ledger, leases, owner, lease_seconds)
        self.stopping = False
        self.in_flight = 0  # requests sent and not yet answered, all lanes
        self._deadline: asyncio.Timeout | None = None
        self._ended = False  # run() has returned: its deadline can no longer be moved
        self.abandoned = 0  # requests that were in flight when the pool was abandoned (their answers lost)
        self.sending = asyncio.Event()  # set once the first request is out

    def _halted(self, lane: Lane) -> bool:
        return (self.stopping or lane.state.fatal is not None or self.ledger.failure is not None
                or (lane.budget is not None and lane.budget.reached))

    async def run(self) -> None:
        """Work every lane until its rows are done, or the pool is stopped."""
        try:
            async with asyncio.timeout(None) as self._deadline:
                async with asyncio.TaskGroup() as group:
                    for lane in self.lanes:
                        group.create_task(self._feed(lane), name=f"feed-{lane.job.name}-{lane.model}")
                        for i in range(lane.workers):
                            group.create_task(self._work(lane), name=f"work-{lane.job.name}-{lane.model}-{i}")
        except TimeoutError:
            pass  # abandoned, or stopped with nothing left in flight
        finally:
            self._ended = True

    def stop(self) -> None:
        """Claim and start nothing more; let what is in flight finish (`abandon` ends it sooner)."""
        self.stopping = True
        for lane in self.lanes:
            if lane.gate is not None:
                lane.gate.set()
            while not lane.queue.empty():
                lane.queue.get_nowait()
            for _ in range(lane.workers):
                if not lane.queue.full():
                    lane.queue.put_nowait(None)
        self._end_if_idle()

    def abandon(self) -> None:
        """Cancel everything now, in-flight requests included (their answers, if they come, are lost). Once
        the pool has ended (a batch-mode run's, with no live lane, ends at once) there is nothing to cancel."""
        self.stopping = True
        if self._deadline is not None and not self._deadline.expired() and not self._ended:
            self.abandoned = self.in_flight
            self._deadline.reschedule(asyncio.get_running_loop().time())

    def _end_if_idle(self) -> None:
        # Stopping (or every lane halted: refused, out of budget) and nothing in flight: whatever still waits
        # (a backoff, a limiter's pause, a slot) has nothing paid for to lose, so the pool ends now.
        if self.in_flight == 0 and (self.stopping or all(self._halted(lane) for lane in self.lanes)):
            self.abandon()

    # --- feeding ----------------------------------------------------------------------------------

    async def _feed(self, lane: Lane) -> None:
        chunk = max(64, 2 * self.slots.total // max(1, len(self.lanes))) * lane.pack
        if lane.gate is not None:
            await lane.gate.wait()
        while not self._halted(lane):
            rows = await self.intake.take(lane, chunk)
            if rows is None:
                if await self.store.reclaim(lane.job):
                    continue
                if not await self.store.pending(lane.job, lane.model):
                    break
                await asyncio.sleep(BLOCKED_WAIT)  # the rows left wait for an answer in flight elsewhere
                continue
            todo = [row for row in rows if self.ledger.lead(row, lane.endpoint.identity)]
            for item in lane.items(todo):
                if self._halted(lane):
                    break
                await lane.queue.put(item)
        for _ in range(lane.workers):
            await lane.queue.put(None)

    # --- working ----------------------------------------------------------------------------------

    async def _work(self, lane: Lane) -> None:
        while True:
            item = await lane.queue.get()
            if item is None:
                return
            if not self._halted(lane):
                await self._request(lane, item)

    async def _request(self, lane: Lane, rows: Item) -> None:
        """Send one request until it is answered, refused, or out of attempts; record what became of it."""
        asked = json.loads(rows[0].request)
        tier = lane.service_tier or asked.get("service_tier")
        request = _Request(lane, list(rows), int(asked.get("n") or 1), tier=tier if isinstance(tier, str) else None)
        try:  # a failed probe of an outage costs no attempt; an answer, however bad, always does
            await self.policy.call(functools.partial(self._attempt, request), lane.limiter.sleep,
                                   free=lambda exc: request.probe_failed and classify(exc).outage,
                                   most=functools.partial(_until_fallback, request))
        except _Stopped:
            return  # the rows stay claimed and are handed back when the run ends
        except Exception as exc:
            if isinstance(exc, BatchPromptError) and not isinstance(exc, RetryExhausted):
                raise  # not about this request: the run stops
            await self._give_up(lane, request.rows, exc, request.calls)

    async def _attempt(self, request: _Request) -> None:
        """One attempt: within the lane's limits, then sent; its answer (even a bad one) taken."""
        lane = request.lane
        if self._halted(lane):
            raise _Stopped
        self._maybe_fall_back(request)
        cost, ours = self.estimator.cost(lane.body(request.rows))
        probe = request.probe_failed = await lane.limiter.acquire(cost)
        try:
            data, headers = await self._send_held(request, cost)
        except _Stopped:
            if probe:
                lane.limiter.abandon_probe()
            raise
        except Exception as exc:
            self._observe_failure(lane, exc, probe)
            if classify(exc).verdict is Verdict.CAPACITY:
                self.ledger.tally(lane.job.id, lane.model).capacity_waits += 1
                if request.waiting_since is None:
                    request.waiting_since = time.monotonic()
            raise
        except BaseException:  # cancelled: let another request be the probe
            if probe:
                lane.limiter.abandon_probe()
            raise
        lane.limiter.observe(headers, answer=True)
        lane.state.reached = True
        request.probe_failed = False
        lane.limiter.succeeded()  # it answered: no outage, whatever the answer is worth
        self._take_answer(request, data, ours)

    def _maybe_fall_back(self, request: _Request) -> None:
        """A flex request that has waited on flex capacity for the lane's `flex_fallback` goes at the default
        tier from now on (only its body's `service_tier` changes, never its row's request)."""
        wait = request.lane.flex_fallback
        if (request.tier == "flex" and wait is not None and request.waiting_since is not None
                and time.monotonic() - request.waiting_since >= wait):
            request.tier = "default"
            self.ledger.tally(request.lane.job.id, request.lane.model).fell_back += 1

    async def _send_held(self, request: _Request, cost: int) -> tuple[dict[str, Any], Any]:
        """Send once a fair share of the concurrency is held, the rows' leases are still this process's and
        (with a budget) the request's worst case is reserved; whatever happens, the limiter's and budget's
        holds are given back."""
        lane = request.lane
        reserved = 0.0
        try:
            async with self.slots.hold(lane):
                request.rows = await self._still_ours(lane, request.rows)
                if self._halted(lane) or not request.rows:
                    raise _Stopped
                if lane.budget is not None:  # its worst case, reserved before it is sent
                    prompt, completion = tokens.budget_parts(lane.body(request.rows))
                    mode = "flex" if request.tier == "flex" else "live"
                    got = await lane.budget.reserve_when_settled(lane.model, mode, prompt, completion)
                    if got is None or self._halted(lane):
                        if got:
                            lane.budget.release(got)
                        raise _Stopped
                    reserved = got
                request.calls += 1
                tally = self.ledger.tally(lane.job.id, lane.model)
                tally.retries += int(request.calls > 1)
                data, headers = await self._send(lane, request.rows, tally, request.tier)
                if lane.budget is not None and not (isinstance(data, dict) and isinstance(
                        data.get("usage"), dict)):  # no usage to measure it by: its worst case counts
                    lane.budget.unmeasured += reserved
                return data, headers
        finally:
            lane.limiter.release(cost)
            if lane.budget is not None:  # nothing awaits before the ledger has its real cost
                lane.budget.release(reserved)
            self._end_if_idle()

    def _take_answer(self, request: _Request, data: dict[str, Any], ours: int) -> None:
        """Pay for an answer and record each prompt's choices; `MalformedResponse` (another attempt, for the
        prompts whose choices did not all come) when some are missing."""
        lane, rows, n = request.lane, request.rows, request.n
        view = as_chat(data)  # a Responses API answer is read in the chat shape, and kept as it came
        usage = view.get("usage") if isinstance(view, dict) else None
        self.estimator.observe(ours, usage)
        # billed even when its choices cannot be mapped (then it is an attempt, asked again)
        self.ledger.paid(lane.job.id, lane.model, "live", len(rows), usage,
                         tier=data.get("service_tier") if isinstance(data, dict) else None)
        parts = split_choices(view, n, len(rows))
        incomplete = []
        for i, (row, choices) in enumerate(zip(rows, parts, strict=True)):
            if choices is None:
                incomplete.append(row)
                continue
            response = data if view is not data else _response_for(data, choices, len(rows), i)
            text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
            tag = self.ledger.cache_tag(lane.job, row.id)
            self.ledger.answered(row, text, lane.endpoint.identity, lane.cache, tag, request.calls, together=True)
        if incomplete:  # ask again only for the prompts whose choices did not all come
            request.rows = incomplete
            raise MalformedResponse(f"{len(incomplete)} of {len(parts)} prompts lack some of their {n} choices")

    async def _give_up(self, lane: Lane, rows: Item, exc: Exception, calls: int) -> None:
        failure = classify(exc)
        error = redact(failure.message, lane.endpoint.api_key)
        if failure.verdict is Verdict.FATAL:
            lane.state.refused_by_api(error, failure.status)
            return  # its rows stay unfinished, not failed
        if failure.verdict is Verdict.LOCAL:  # not an answer from the server: our side is broken
            raise BatchPromptError(f"the run stopped on an unexpected error: {error}") from None
        if failure.verdict is Verdict.FAIL and len(rows) > 1:  # find the bad prompt(s), spare the rest
            half = len(rows) // 2
            await self._request(lane, rows[:half])
            await self._request(lane, rows[half:])
            return
        for row in rows:
            self.ledger.failed(row, lane.endpoint.identity, error, failure.kind, calls)

    async def _send(self, lane: Lane, rows: Item, tally: Any, tier: str | None = None) -> tuple[dict[str, Any], Any]:
        tally.requests += 1
        self.sending.set()
        tally.in_flight += len(rows)
        self.in_flight += 1
        body = lane.body(rows)
        if tier is not None:
            body["service_tier"] = tier
        try:
            return await lane.client.send(lane.job.api, body)
        finally:
            tally.in_flight -= len(rows)
            self.in_flight -= 1

    async def _still_ours(self, lane: Lane, rows: Item) -> Item:
        """The rows whose leases this process still holds (after a long stop, another may have taken some)."""
        await self.leases.ensure()
        if not self.leases.lost:
            return rows
        kept = []
        for row in rows:
            if row.id in self.leases.lost:  # another process answers it: never pay for it twice
                self.ledger.lose(row)
                self.ledger.abandon(row, lane.endpoint.identity)  # its followers are handed back at the end
            else:
                kept.append(row)
        return kept

    def _observe_failure(self, lane: Lane, exc: Exception, probe: bool) -> None:
        failure = classify(exc)
        state = lane.state
        if is_connection_error(exc):
            state.could_not_connect(redact(failure.message, lane.endpoint.api_key), connection_refused(exc))
            self._end_if_idle()  # the last lane's endpoint is wrong: nothing to wait for
        if failure.verdict is Verdict.RATE_LIMITED and (answered := status_error_of(exc)) is not None:
            lane.limiter.observe(answered.response.headers)
            lane.limiter.rate_limited(failure.retry_after)
        elif failure.outage:
            lane.limiter.failed(probe)
        elif not isinstance(exc, _Stopped):  # the server answered: not an outage
            lane.limiter.succeeded()


def _until_fallback(request: _Request, exc: BaseException) -> float | None:
    """A flex capacity 429 is waited out at most until the request's `flex_fallback` (a `retry-after` of a
    day does not hold it past it); None: no bound."""
    wait = request.lane.flex_fallback
    if request.tier != "flex" or wait is None or request.waiting_since is None:
        return None
    if classify(exc).verdict is not Verdict.CAPACITY:
        return None
    return wait - (time.monotonic() - request.waiting_since)


def _response_for(data: dict[str, Any], choices: list[dict[str, Any]], packed: int, position: int) -> dict[str, Any]:
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
