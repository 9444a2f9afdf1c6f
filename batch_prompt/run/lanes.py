"""Lanes: a job's prompts for one model, at its endpoint, sent live (`live.LivePool`) or in batches
(`batch.BatchEngine`). One lane type for both modes, one intake and one way to stop an endpoint.

- `EndpointState` is what the run knows of one endpoint (base URL and key), shared by the lanes sent
  there. `refuse` is the one way an endpoint stops its lanes (a refused key, an exhausted quota, no
  Batch API, the same refusal twice, nothing answering: `could_not_connect`); the first reason is kept.
- `Intake.take` is the one way rows enter a lane, live or batch: claimed under this process's lease,
  then answered from the cache where it holds their request's answer (the one cache read of a run);
  what is left is for the lane to send.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import BatchPromptError, ConfigError, FatalAPIError
from ..spec import tokens
from ..spec.endpoints import Endpoint
from ..spec.expand import seed_of
from ..store.asyncstore import AsyncStore
from ..store.cache import ResponseCache
from ..store.leases import LeaseKeeper
from ..store.rows import BatchRow, Claimed, JobRow
from .budget import Budget
from .client import ApiClient
from .ledger import Ledger
from .limiter import Limiter

# Connection failures with no answer yet after which the endpoint is called wrong (a wrong URL or port):
# this many, or at least UNREACHABLE_LEAST of them over UNREACHABLE_SECONDS, or UNREACHABLE_LEAST refusals.
UNREACHABLE_AFTER = 12
UNREACHABLE_LEAST = 3
UNREACHABLE_SECONDS = 3.0
PACK_COMPLETION_TOKENS = 4096  # a packed request asks at most this many completion tokens (max_tokens x n each)
Item = list[Claimed]  # the prompts of one request (one for chat; several packed for legacy completions)


@dataclass
class EndpointState:
    """What the run knows of one endpoint (base URL and key): shared by the lanes sent there."""

    endpoint: Endpoint
    reached: bool = False  # some request got an answer: the endpoint exists
    unreached: int = 0  # connection failures before any answer
    refusals: int = 0  # of them: connections refused (nothing listens there)
    first_unreached: float | None = None  # when the first of them was (time.monotonic())
    fatal: BatchPromptError | None = None  # it refused the run: its lanes stop

    def refuse(self, error: BatchPromptError) -> None:
        """Stop every lane of this endpoint (the first reason is the one kept and reported)."""
        if self.fatal is None:
            self.fatal = error

    def refused_by_api(self, message: str, status: int | None) -> None:
        """The API refused the run (a bad key, no quota, a permission): `refuse` with its answer."""
        url = self.endpoint.base_url
        self.refuse(FatalAPIError(f"the API refused the run at {url}: {message}", status_code=status, endpoint=url))

    def could_not_connect(self, error: str, refused: bool = False) -> None:
        """A connection failure (`error`, for a person; `refused`: the host said no one listens on that port).
        Before any answer, enough of them make the endpoint wrong: it is refused, naming it. Refusals say so
        at once (UNREACHABLE_LEAST of them); timeouts and resets only over UNREACHABLE_SECONDS, as a server
        slow to accept is not a wrong one. The one rule for live and batch calls."""
        if self.reached:
            return
        now = time.monotonic()
        self.unreached += 1
        self.refusals += int(refused)
        self.first_unreached = now if self.first_unreached is None else self.first_unreached
        long = self.unreached >= UNREACHABLE_LEAST and now - self.first_unreached >= UNREACHABLE_SECONDS
        if long or self.refusals >= UNREACHABLE_LEAST or self.unreached >= UNREACHABLE_AFTER:
            url = self.endpoint.base_url
            self.refuse(ConfigError(f"cannot reach {url} (nothing answered yet): {error}", endpoint=url))


@dataclass(eq=False)
class Lane:
    """One job's prompts for one model, at its endpoint, in `mode` "live" or "batch"."""

    job: JobRow
    model: str
    mode: str
    state: EndpointState
    client: ApiClient
    cache: ResponseCache
    limiter: Limiter
    workers: int = 1  # live: requests in flight at most (its share of the run's is `Slots`')
    submit: bool = True  # batch: new batches are made (False: open batches are collected only)
    budget: Budget | None = None  # the job's, shared by its lanes
    service_tier: str | None = None  # live: the tier every request is sent at (None: as its model args say)
    flex_fallback: float | None = None  # live: seconds on flex capacity before a request goes at the default tier
    # batch mode: the open batches, an open batch's worst case held in the budget, the last refusal's reason
    open: dict[int, BatchRow] = field(default_factory=dict)
    reserved: dict[int, float] = field(default_factory=dict)
    last_refusal: str | None = None
    gate: asyncio.Event | None = None  # live, auto mode: nothing is claimed until it is set (`auto.Watch`)
    # batch, auto mode: a server without the Batch API ends this lane only (`no_batch_api` set), the job's
    # prompts going live, where otherwise it stops the endpoint
    live_fallback: bool = False
    no_batch_api: str | None = None
    queue: asyncio.Queue[Item | None] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=max(1, self.workers))
        self.pack = 1
        model_args = self.job.spec.get("model_args") or {}
        # (a request has one seed: seeded samples, each with its own, are sent one a request)
        if self.job.api == "completions" and self.mode == "live" and seed_of(model_args) is None:
            per_prompt = _completion_tokens(model_args)  # packed, short enough to wait for
            self.pack = max(1, min(self.job.prompts_per_request, PACK_COMPLETION_TOKENS // per_prompt))

    @property
    def endpoint(self) -> Endpoint:
        return self.state.endpoint

    def items(self, rows: list[Claimed]) -> Iterator[Item]:
        for start in range(0, len(rows), self.pack):
            yield rows[start : start + self.pack]

    def body(self, rows: Item) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(rows[0].request)
        if len(rows) > 1:
            body["prompt"] = [json.loads(row.request)["prompt"] for row in rows]
        return body


def _completion_tokens(model_args: dict[str, Any]) -> int:
    """Most completion tokens one prompt may ask: max_tokens x n (the legacy default of 16 when unset)."""
    n = model_args.get("n") if isinstance(model_args.get("n"), int) else 1
    limit = model_args.get("max_tokens")
    limit = limit if isinstance(limit, int) and limit > 0 else tokens.DEFAULT_MAX_TOKENS
    return max(1, int(n or 1) * limit)


@dataclass
class Intake:
    """How rows enter a lane: see the module docstring."""

    store: AsyncStore
    ledger: Ledger
    leases: LeaseKeeper
    owner: str
    lease_seconds: float

    async def take(self, lane: Lane, limit: int) -> Item | None:
        """Claim up to `limit` pending rows of the lane; those the cache answers are done (recorded with the
        next flush); returns the rows left to send, or None when there was nothing to claim."""
        wall = time.time()
        rows = await self.store.claim(lane.job, lane.model, self.owner, limit, self.lease_seconds)
        if not rows:
            return None
        self.leases.claimed([row.id for row in rows], wall)
        self.ledger.claim(rows)
        return [row for row in rows if not self.ledger.from_cache(lane.job, row, lane.cache, lane.mode)]

    async def hand_back(self, rows: Item) -> None:
        """Rows taken and not sent go back to pending (past the budget, or the batch was full)."""
        await self.store.release([row.id for row in rows], self.owner)
        self.drop(rows)

    def drop(self, rows: Item) -> None:
        """Rows this process no longer holds (a batch holds them now, or they were handed back)."""
        for row in rows:
            self.ledger.lose(row)
        self.leases.released(row.id for row in rows)
