"""The runner: sends every unfinished prompt of a job database, all jobs and models side by side.

`run_jobs` checks the options, resolves every (job, model)'s endpoint and key before any work, builds
what a run shares (the store's own thread, the ledger, the leases, the clock; one client and one cache
per endpoint; one limiter per endpoint and model), installs the signal handlers when asked (the CLI: the
first SIGINT/SIGTERM/SIGHUP stops gracefully, a second abandons what is in flight), runs the live pool,
and returns a `RunSummary` derived from the ledger. Whatever stopped the run early (a store or cache
that failed, an endpoint that refused it) is raised once everything in flight has been kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import BatchPromptError, ConfigError, StoreError
from ..options import CancelResult, RunOptions, RunSummary
from ..reports.prices import Prices, look_up_once
from ..spec import tokens
from ..spec.endpoints import batch_endpoint
from ..spec.spec import rate_for
from ..store.asyncstore import AsyncStore
from ..store.cache import ResponseCache
from ..store.database import JobRow, Spend, Store
from ..store.leases import LeaseKeeper, lease_owner
from .auto import AutoJob, Watch, plan_jobs
from .batch import BatchEngine
from .budget import Budget
from .client import ApiClient, Endpoint, make_client
from .clock import RunClock
from .lanes import EndpointState, Lane
from .ledger import Ledger, Tally
from .limiter import Limiter
from .live import LivePool
from .preflight import check_run
from .process import collector_out_of_the_way, ensure_open_files
from .progress import HealthNotes, Progress
from .retry import RetryPolicy
from .slots import Slots

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TICK = 1.0  # seconds between progress redraws and health checks
BUDGET_SYNC = 0.25  # seconds between two shares of a budget with the other processes running the job
CACHE_NOTE_ROWS = 50_000  # at most this many pending rows are looked up in the cache at the start


async def cancel_jobs(db_path: str, names: list[str] | None, opts: RunOptions) -> CancelResult:
    """Cancel the open batches of the named jobs (all when None), then collect them: what they completed is
    recorded, the rest goes back to pending. Sends nothing new."""
    run = _Run(AsyncStore(db_path), opts, cancel=True)
    summary = await _open_and(run, names)
    return CancelResult(run.cancelled, summary, run.already_cancelling)


async def run_jobs(db_path: str, names: list[str] | None, opts: RunOptions) -> RunSummary:
    """Run the named jobs of `db_path` (all jobs when `names` is None) until done, failed or stopped."""
    return await _open_and(_Run(AsyncStore(db_path), opts), names)


async def _open_and(run: _Run, names: list[str] | None) -> RunSummary:
    opts, store = run.opts, run.store
    opts.validate()
    ensure_open_files(opts.concurrency, opts.raise_open_files)
    gc_tuning = collector_out_of_the_way() if opts.tune_gc else contextlib.nullcontext()
    with gc_tuning:
        await store.open()
        try:
            return await run.go(names)
        finally:
            await store.close()


@dataclass
class _View:
    """What the progress reporter reads (see `progress.RunView`)."""

    label: str
    total: int
    already: int
    ledger: Ledger
    lanes: list[Lane]
    prices: Prices
    store: AsyncStore
    todo: dict[str, int]  # per model: prompts unfinished at the start
    engine: BatchEngine | None = None

    def tally(self) -> Tally:
        return self.ledger.total()

    def per_model(self) -> dict[str, Tally]:
        result: dict[str, Tally] = {}
        for (_, model), tally in self.ledger.tallies.items():
            result.setdefault(model, Tally()).add(tally)
        return result

    def cost(self) -> float | None:
        total = self.ledger.total()
        return total.cost_usd if total.priced else None

    def health(self) -> list[str]:
        seen: dict[str, str] = {}
        for lane in self.lanes:
            say = lane.limiter.health()
            if lane.state.fatal is not None:
                say = f"stopped: {lane.state.fatal}"
            if say:
                seen.setdefault(f"{lane.endpoint.base_url} {lane.model}", say)
        if self.engine is not None:
            seen.update({f"batch {i}": text for i, text in enumerate(self.engine.health())})
        if self.store.locked_for > 2:
            seen["database"] = f"the job database is locked by another process: waiting ({self.store.locked_for:.0f} s)"
        if len({key.split(" ")[0] for key in seen}) <= 1 and len(self.lanes) <= 1:
            return list(dict.fromkeys(seen.values()))
        return [f"{key}: {text}" for key, text in seen.items()]


class _Run:
    """One call of `run_jobs`."""

    def __init__(self, store: AsyncStore, opts: RunOptions, cancel: bool = False) -> None:
        self.store, self.opts = store, opts
        self.cancelling, self.cancelled, self.already_cancelling = cancel, 0, 0
        self.owner = lease_owner()
        self.clock = RunClock()
        self.ledger = Ledger(store, self.owner, flush_interval=opts.flush_interval, flush_batch=opts.flush_batch)
        self.leases = LeaseKeeper(lambda: store.renew(self.owner, opts.lease_seconds), opts.lease_seconds)
        self.ledger.settled = self.leases.released
        self.clients: dict[tuple[str, str], ApiClient] = {}
        self.caches: dict[str, ResponseCache] = {}
        self.limiters: dict[tuple[str, str], Limiter] = {}
        self.states: dict[tuple[str, str], EndpointState] = {}
        self.progress: Progress = opts.progress or _default_progress(opts.quiet)
        self.signals = 0
        self.engine: BatchEngine | None = None
        self.batching: asyncio.Task[None] | None = None
        self.budgets: dict[int, Budget] = {}

    async def go(self, names: list[str] | None) -> RunSummary:
        jobs = await self._jobs(names)
        prices, checked = check_run([job.spec for job in jobs], self.opts)  # before anything is written
        endpoints = {(job.id, model): endpoint for job, found in zip(jobs, checked, strict=True)
                     for model, endpoint in found.endpoints.items()}
        elsewhere = await self._batches_elsewhere(jobs, endpoints)  # their keys checked before anything too
        autos, poll = ({}, self.opts.poll) if self.cancelling else await plan_jobs(self.store, jobs, endpoints,
                                                                                     self.opts)  # (may refuse)
        if poll < self.opts.poll:  # a near deadline is watched more often
            self.opts = replace(self.opts, poll=poll)
        jobs = [await self._remember_choices(job, autos.get(job.id)) for job in jobs]
        try:
            models = [(job, model) for job in jobs for model in job.spec["models"]]
            live = not self.cancelling
            lanes = [self._lane(job, model, endpoints[job.id, model]) for job, model in models
                     if live and (job.mode == "live" or (job.id in autos and self.opts.wait))]
            open_batches = {job.id: await self.store.batches(job, open_only=True) for job in jobs}
            batch_lanes = [self._lane(job, model, endpoints[job.id, model], "batch",
                                      submit=job.mode == "batch" and live)
                           for job, model in models
                           if (job.mode == "batch" and live) or any(b.model == model for b in open_batches[job.id])]
            by_id = {job.id: job for job in jobs}
            batch_lanes += [self._lane(by_id[job_id], model, endpoint, "batch", submit=False)
                            for (job_id, model), found in elsewhere.items() for endpoint in found]
            watch = self._watch(autos, lanes, batch_lanes) if autos and self.opts.wait else None
            counts = [await self.store.counts(job) for job in jobs]
            self.ledger.prices = prices
            budgets = {}
            for job, found in zip(jobs, checked, strict=True):
                if found.own_prices:
                    self.ledger.job_prices[job.id] = found.prices
                if found.limit:
                    budgets[job.id] = Budget.check(job, found.limit, found.prices, await self.store.spend(job),
                                                   functools.partial(self.ledger.job_cost, job.id))
            self.budgets = budgets
            for budget in budgets.values():
                budget.store = functools.partial(self._hold_budget, budget)
                budget.committed_now = functools.partial(self.ledger.committed_cost, budget.job.id)
            for lane in lanes:
                lane.budget = budgets.get(lane.job.id)
            for batch_lane in batch_lanes:
                batch_lane.budget = budgets.get(batch_lane.job.id)
            policy = RetryPolicy.for_run(self.opts.retry, self.opts.max_attempts)
            engine = BatchEngine(
                batch_lanes, store=self.store, ledger=self.ledger, leases=self.leases, owner=self.owner,
                opts=self.opts, policy=policy, note=self.progress.note,
            ) if batch_lanes else None
            if engine is not None and autos:  # the batches of a deadline are looked at often to its end
                engine.max_poll = min(engine.max_poll, 4 * self.opts.poll)
            view = _View(jobs[0].name if len(jobs) == 1 else f"{len(jobs)} jobs", sum(c["total"] for c in counts),
                         sum(c["done"] + c["failed"] for c in counts), self.ledger, lanes, prices, self.store,
                         await self._todo(jobs), engine)
            pool = LivePool(
                lanes, store=self.store, ledger=self.ledger, leases=self.leases, slots=Slots(self.opts.concurrency),
                policy=policy, estimator=tokens.TokenEstimator(), owner=self.owner,
                lease_seconds=self.opts.lease_seconds,
            )
            for job in jobs:
                await self.store.reclaim(job)
            if engine is not None and self.cancelling:
                for batch_lane in batch_lanes:
                    asked, already = await engine.cancel(batch_lane)
                    self.cancelled, self.already_cancelling = self.cancelled + asked, self.already_cancelling + already
            self.progress.start(view)
            for auto in autos.values():
                self.progress.note(auto.plan.line())
            await self._say_what_the_cache_answers([*(lane for lane in lanes if lane.gate is None),
                                                    *(b for b in batch_lanes if b.submit)])
            if watch is not None:
                watch.engine = engine
                watch.stopping = lambda: pool.stopping or bool(self.batching and self.batching.done())
            await self._work(pool, engine, view, watch)
            if watch is not None:
                await watch.remember_rates(self.store)
            summary = self._summary(view, pool)
            summary.budget_reached = [b.message() for b in budgets.values() if b.reached]
            summary.larger_budget = max((b.larger() for b in budgets.values() if b.reached), default=None)
            summary.batches_submitted = engine.submitted if engine is not None else 0
        finally:
            await self._close()
        for job in jobs:
            counts_after = await self.store.counts(job)
            in_batches = await self.store.in_batches(job)
            summary.unfinished += counts_after["pending"]
            summary.in_batches += in_batches
            summary.running_elsewhere += counts_after["running"] - in_batches  # another live resumer's
            summary.failed_total += counts_after["failed"]
        self._raise_what_stopped_it()
        return summary

    async def _say_what_the_cache_answers(self, lanes: list[Lane]) -> None:
        """Before anything is sent: how many of the prompts about to be asked the cache already answers
        (free, and the same answer as before), unless the run has more than `CACHE_NOTE_ROWS` to look at."""
        hashes: list[tuple[list[str], ResponseCache]] = []
        for lane in lanes:
            if not lane.job.fresh:
                found = await self.store.run(functools.partial(
                    Store.pending_hashes, job=lane.job, model=lane.model, limit=CACHE_NOTE_ROWS + 1))
                hashes.append((found, lane.cache))
        if not hashes or sum(len(found) for found, _ in hashes) > CACHE_NOTE_ROWS:
            return
        answered = await asyncio.to_thread(lambda: sum(cache.contains(h) for found, cache in hashes for h in found))
        if answered:
            total = sum(len(found) for found, _ in hashes)
            self.progress.note(f"{answered:,} of {total:,} prompts to ask are already answered in the cache: free; "
                               "--no-cache for fresh samples")

    async def _todo(self, jobs: list[JobRow]) -> dict[str, int]:
        """Per model, the prompts of these jobs not finished yet (pending or running): O(rows not done)."""
        todo: dict[str, int] = {}
        for job in jobs:
            found = await self.store.run(functools.partial(Store.unfinished_by_model, job=job))
            for (model, status), count in found.items():
                if status in ("pending", "running"):
                    todo[model] = todo.get(model, 0) + count
        return todo

    async def _batches_elsewhere(self, jobs: list[JobRow], endpoints: dict[tuple[int, str], Endpoint]
                                 ) -> dict[tuple[int, str], list[Endpoint]]:
        """Per (job, model), the endpoints other than this run's where it has open batches (sent with another
        --base-url, or before its endpoint changed): they are collected there, with the key of the variable
        they were sent with. `ConfigError` naming the endpoint when that variable is not set."""
        found: dict[tuple[int, str], dict[str, Endpoint]] = {}
        for job in jobs:
            for batch in await self.store.batches(job, open_only=True):
                here = endpoints.get((job.id, batch.model))
                if here is None or batch.endpoint == here.identity:
                    continue
                url = batch.base_url or batch.endpoint
                try:
                    endpoint = batch_endpoint(url, batch.api_key_env, self.opts.api_key)
                except ConfigError as exc:
                    variable = batch.api_key_env or "OPENAI_API_KEY"
                    raise ConfigError(f"{exc}: {variable}=... python -m batch_prompt.resume {self.store.path}",
                                      endpoint=url) from None
                found.setdefault((job.id, batch.model), {})[endpoint.identity] = endpoint
        return {key: list(each.values()) for key, each in found.items()}

    async def _jobs(self, names: list[str] | None) -> list[JobRow]:
        jobs = [job for job in await self.store.jobs() if job.state == "ready"]
        if names is not None:
            missing = sorted(set(names) - {job.name for job in jobs})
            if missing:
                raise ConfigError(f"no job named {missing[0]!r} in {self.store.path}")
            jobs = [job for job in jobs if job.name in names]
        return jobs

    async def _remember_choices(self, job: JobRow, auto: AutoJob | None) -> JobRow:
        """The run choices that decide what the results mean are kept with the job for every resume (in auto
        mode: the lane its plan chose, the deadline and the plan)."""
        if self.cancelling:
            return job
        mode = auto.plan.mode if auto is not None else self.opts.mode or job.mode
        fresh = job.fresh if self.opts.cache is None else not self.opts.cache
        # the endpoint a --base-url names, for the models the spec does not send elsewhere
        base_url = self.opts.base_url if self.opts.base_url not in (None, job.spec.get("base_url")) else None
        if (mode, fresh, base_url, auto, job.deadline_at) == (job.mode, job.fresh, None, None, None):
            return job
        plan = None if auto is None else {**(job.plan or {}), **auto.plan.to_dict()}
        deadline_at = None if auto is None else auto.plan.deadline_at
        await self.store.run(lambda s: s.set_run_choices(job, mode, fresh, base_url, deadline_at, plan))
        spec = job.spec if base_url is None else {**job.spec, "base_url": base_url}
        return JobRow(**{**vars(job), "mode": mode, "fresh": fresh, "spec": spec, "deadline_at": deadline_at,
                         "plan": plan, "base_url": base_url or job.base_url})

    def _watch(self, autos: dict[int, AutoJob], lanes: list[Lane], batch_lanes: list[Lane]) -> Watch:
        """Auto mode: the live lanes of its jobs wait behind their gates; the watch keeps to the plans. Their
        live prompts have no time to wait on flex capacity (they go live only when the deadline needs
        them to): a flex request answered 429 "resource unavailable" goes at the default tier at once."""
        for lane in lanes:
            if lane.job.id in autos:
                lane.gate = autos[lane.job.id].gate
                lane.flex_fallback = 0.0
        for lane in batch_lanes:
            if lane.job.id in autos:
                autos[lane.job.id].batch_lanes.append(lane)
                lane.live_fallback = True
        return Watch(list(autos.values()), None, self.ledger, self.opts, self.progress.note, lambda: False)

    def _lane(self, job: JobRow, model: str, endpoint: Endpoint, mode: str = "live", submit: bool = True) -> Lane:
        key = (endpoint.identity, endpoint.api_key)
        if key not in self.states:
            self.states[key] = EndpointState(endpoint)
            self.clients[key] = make_client(endpoint, self.opts.timeout, self.opts.concurrency, self.clock)
        if endpoint.identity not in self.caches:
            self.caches[endpoint.identity] = ResponseCache(self.opts.cache_dir, endpoint.identity)
        return Lane(job, model, mode, self.states[key], self.clients[key], self.caches[endpoint.identity],
                    self._limiter(job, model, endpoint), workers=self.opts.concurrency, submit=submit,
                    service_tier=self.opts.service_tier, flex_fallback=self.opts.flex_fallback)

    def _limiter(self, job: JobRow, model: str, endpoint: Endpoint) -> Limiter:
        """One per endpoint and model (providers limit per model), at the told limits: options first,
        then the job's spec (`rpm`, `tpm`: a number, or a mapping by model)."""
        if self.opts.limiter is not None:
            return self.opts.limiter
        rpm = rate_for(self.opts.rpm, model) or rate_for(job.spec.get("rpm"), model)
        tpm = rate_for(self.opts.tpm, model) or rate_for(job.spec.get("tpm"), model)
        key = (endpoint.identity, model)
        if key not in self.limiters:
            self.limiters[key] = Limiter(rpm, tpm)
        return self.limiters[key]

    async def _work(self, pool: LivePool, engine: BatchEngine | None, view: _View, watch: Watch | None) -> None:
        loop = asyncio.get_running_loop()
        self.engine = engine
        if self.opts.handle_signals:
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, pool)
        background = [asyncio.create_task(coro, name=name) for name, coro in (
            ("clock", self.clock.watch()), ("leases", self.leases.keep()), ("ledger", self.ledger.run()),
            ("ticker", self._tick(pool, view)), ("budgets", self._share_budgets()),
            ("prices", look_up_once(pool.sending, [self.ledger.prices, *self.ledger.job_prices.values()],
                                    {lane.model for lane in pool.lanes})),
        )]
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(pool.run(), name="live")
                if engine is not None:
                    self.batching = group.create_task(engine.run(), name="batch")
                if watch is not None:
                    group.create_task(watch.run(), name="auto")
        finally:
            if self.opts.handle_signals:
                for sig in SIGNALS:
                    loop.remove_signal_handler(sig)
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.ledger.flush()
            for budget in self.budgets.values():  # this process holds nothing any more
                with contextlib.suppress(BatchPromptError):
                    await self._hold_budget(budget, lambda spend, others: 0.0)
            if self.ledger.failure is None or not isinstance(self.ledger.failure, StoreError):
                with contextlib.suppress(BatchPromptError):
                    await self.store.release(self.ledger.unfinished(), self.owner)
            self.progress.render(final=True)

    def _on_signal(self, pool: LivePool) -> None:
        self.signals += 1
        if self.signals == 1:
            self.stop(pool)
        else:
            if pool.in_flight:
                self.progress.note(f"abandoned {pool.in_flight} requests in flight: their answers, if they come, "
                                   "are lost")
            self._abandon(pool)

    def _abandon(self, pool: LivePool) -> None:
        pool.abandon()
        if self.batching is not None:
            self.batching.cancel()  # what it was doing is recorded step by step: a resume goes on from there

    def stop(self, pool: LivePool) -> None:
        """Stop gracefully: nothing new is sent; what is in flight gets the grace to arrive."""
        if pool.stopping:
            return
        grace = self.opts.grace_seconds
        if pool.in_flight:
            self.progress.note(
                f"stopping: waiting up to {grace:g} s for {pool.in_flight} requests in flight (already paid for); "
                "press Ctrl-C again to abandon them"
            )
        pool.stop()
        if self.engine is not None:
            self.engine.stop()
        asyncio.get_running_loop().call_later(grace, self._abandon, pool)

    async def _hold_budget(self, budget: Budget, amount: Callable[[list[Spend], float], float | None]
                           ) -> tuple[float | None, list[Spend], float]:
        return await self.store.run(functools.partial(
            Store.hold_budget, job=budget.job, owner=self.owner, lease_seconds=self.opts.lease_seconds,
            amount=amount))

    async def _share_budgets(self) -> None:
        """One budget per job across processes: every `BUDGET_SYNC` seconds, keep this process's holds (the
        worst cases of its requests in flight) in the database and read the spend every process recorded
        and what the others hold."""
        while self.budgets:
            for budget in self.budgets.values():
                with contextlib.suppress(BatchPromptError):  # a locked or failing database: the ledger says so
                    await budget.share()
            await asyncio.sleep(BUDGET_SYNC)

    async def _tick(self, pool: LivePool, view: _View) -> None:
        """Redraw progress, say when the run's health changes, notice a database deleted under the run."""
        path = self.store.path
        identity = _file_identity(path)
        health = HealthNotes()
        while True:
            await asyncio.sleep(TICK)
            if identity is not None and _file_identity(path) != identity and self.ledger.failure is None:
                self.ledger.failure = StoreError(
                    f"{path} was deleted or replaced while the run was writing to it: answers since are only "
                    "in the cache", path=path)
            if self.ledger.failure is not None and not pool.stopping:
                self.progress.note(f"stopping: {self.ledger.failure}")
                pool.stop()
                if self.engine is not None:
                    self.engine.stop()
            for text in health.update(view.health()):
                self.progress.note(text)
            self.progress.render()

    def _summary(self, view: _View, pool: LivePool) -> RunSummary:
        t = view.tally()
        summary = RunSummary(
            done=t.done, cached=t.cached, shared=t.shared, failed=t.failed, requests=t.requests, paid=t.paid,
            prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens, cost_usd=view.cost(),
            interrupted=self.signals > 0, abandoned=pool.abandoned if self.signals > 1 else 0,
            reasoning_tokens=t.reasoning_tokens, cached_tokens=t.cached_tokens, flex=t.flex_paid,
            capacity_waits=t.capacity_waits, fell_back=t.fell_back,
        )
        for kind, (number, example) in self.ledger.errors.items():
            summary.errors[kind] = number
            summary.error_examples[kind] = example
        return summary

    def _raise_what_stopped_it(self) -> None:
        if self.ledger.failure is not None:
            raise self.ledger.failure
        refused = [state.fatal for state in self.states.values() if state.fatal is not None]
        if len(refused) == 1:
            raise refused[0]
        if refused:
            first = refused[0]
            raise type(first)("; ".join(str(error) for error in refused), **{
                k: v for k, v in vars(first).items() if k != "message"})

    async def _close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        for cache in self.caches.values():
            cache.close()


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)
    return (stat.st_dev, stat.st_ino)


def _default_progress(quiet: bool) -> Progress:
    """The reporter of a run given none: nothing when quiet; in a Jupyter kernel one display updated in
    place (`notebook.py`); else the command line's choice (a live display on a terminal, plain lines
    elsewhere)."""
    from .notebook import NotebookProgress, in_notebook

    if not quiet and in_notebook():
        return NotebookProgress()
    from ..cli.progress import auto_progress

    return auto_progress(quiet)
