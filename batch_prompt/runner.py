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
import gc
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

from . import tokens
from .asyncstore import AsyncStore
from .cache import ResponseCache
from .client import ApiClient, Endpoint, make_client
from .clock import RunClock
from .endpoints import endpoint_for
from .errors import BatchPromptError, ConfigError, StoreError
from .leases import LeaseKeeper, lease_owner
from .ledger import Ledger, Tally
from .limiter import Limiter
from .options import FILES_BESIDES_CONNECTIONS, RunOptions, RunSummary
from .pool import EndpointState, Lane, LivePool
from .pricing import Prices
from .progress import Progress, auto_progress
from .retry import RetryPolicy
from .slots import Slots
from .spec import rate_for
from .store import JobRow

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TICK = 1.0  # seconds between progress redraws and health checks


def ensure_open_files(concurrency: int, raise_limit: bool) -> None:
    """Make sure `concurrency` connections can be open at once; `ConfigError` when they cannot (the
    connections past the limit would fail one after another and be retried for nothing). With
    `raise_limit` (the command line), this process's soft limit on open files (`ulimit -n`) is raised
    up to its hard limit if needed; without it (a library caller), a soft limit too low is refused."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to check
        return
    needed = concurrency + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if not raise_limit:
        raise ConfigError(
            f"concurrency {concurrency} needs about {needed} open files, but this process may open only {soft} "
            f"(ulimit -n): lower the concurrency to {max(1, soft - FILES_BESIDES_CONNECTIONS)} or less, or raise "
            "the limit (resource.setrlimit)"
        )
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"concurrency {concurrency} needs about {needed} open files, but this process may open only {hard} "
            f"(ulimit -n): lower --concurrency to {max(1, hard - FILES_BESIDES_CONNECTIONS)} or less"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"concurrency {concurrency} needs about {needed} open files, and the limit is {soft}: {exc}"
        ) from None


async def run_jobs(db_path: str, names: list[str] | None, opts: RunOptions) -> RunSummary:
    """Run the named jobs of `db_path` (all jobs when `names` is None) until done, failed or stopped."""
    opts.validate()
    ensure_open_files(opts.concurrency, opts.raise_open_files)
    gc_tuning = _collector_out_of_the_way() if opts.tune_gc else contextlib.nullcontext()
    store = AsyncStore(db_path)
    with gc_tuning:
        await store.open()
        try:
            return await _Run(store, opts).go(names)
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

    def tally(self) -> Tally:
        return self.ledger.total()

    def per_model(self) -> dict[str, Tally]:
        result: dict[str, Tally] = {}
        for (_, model), tally in self.ledger.tallies.items():
            result.setdefault(model, Tally()).add(tally)
        return result

    def cost(self) -> float | None:
        costs = [self.prices.cost(model, "live", t.prompt_tokens, t.completion_tokens)
                 for (_, model), t in self.ledger.tallies.items() if t.paid]
        known = [c for c in costs if c is not None]
        return sum(known) if known else None

    def health(self) -> list[str]:
        seen: dict[str, str] = {}
        for lane in self.lanes:
            say = lane.limiter.health()
            if lane.state.fatal is not None:
                say = f"stopped: {lane.state.fatal}"
            if say:
                seen.setdefault(f"{lane.endpoint.base_url} {lane.model}", say)
        if self.store.locked_for > 2:
            seen["database"] = f"the job database is locked by another process: waiting ({self.store.locked_for:.0f} s)"
        if len({key.split(" ")[0] for key in seen}) <= 1 and len(self.lanes) <= 1:
            return list(dict.fromkeys(seen.values()))
        return [f"{key}: {text}" for key, text in seen.items()]


class _Run:
    """One call of `run_jobs`."""

    def __init__(self, store: AsyncStore, opts: RunOptions) -> None:
        self.store, self.opts = store, opts
        self.owner = lease_owner()
        self.clock = RunClock()
        self.ledger = Ledger(store, self.owner, flush_interval=opts.flush_interval, flush_batch=opts.flush_batch)
        self.leases = LeaseKeeper(lambda: store.renew(self.owner, opts.lease_seconds), opts.lease_seconds)
        self.clients: dict[tuple[str, str], ApiClient] = {}
        self.caches: dict[str, ResponseCache] = {}
        self.limiters: dict[tuple[str, str], Limiter] = {}
        self.states: dict[tuple[str, str], EndpointState] = {}
        self.progress: Progress = opts.progress or auto_progress(opts.quiet)
        self.signals = 0

    async def go(self, names: list[str] | None) -> RunSummary:
        jobs = await self._jobs(names)
        self.opts.check_rates({model for job in jobs for model in job.spec["models"]})
        endpoints = {(job.id, model): endpoint_for(job.spec, model, base_url=self.opts.base_url,
                                                   api_key=self.opts.api_key)
                     for job in jobs for model in job.spec["models"]}  # every key checked before any work
        jobs = [await self._remember_choices(job) for job in jobs]
        try:
            lanes = [self._lane(job, model, endpoints[job.id, model]) for job in jobs for model in job.spec["models"]]
            counts = [await self.store.counts(job) for job in jobs]
            prices = Prices.load().overlay(next((job.spec.get("prices") for job in jobs if job.spec.get("prices")),
                                                None))
            view = _View(jobs[0].name if len(jobs) == 1 else f"{len(jobs)} jobs", sum(c["total"] for c in counts),
                         sum(c["done"] + c["failed"] for c in counts), self.ledger, lanes, prices, self.store)
            pool = LivePool(
                lanes, store=self.store, ledger=self.ledger, leases=self.leases, slots=Slots(self.opts.concurrency),
                policy=self.opts.retry or RetryPolicy(max_attempts=self.opts.max_attempts),
                estimator=tokens.TokenEstimator(), owner=self.owner, lease_seconds=self.opts.lease_seconds,
            )
            for job in jobs:
                await self.store.reclaim(job)
            self.progress.start(view)
            await self._work(pool, view)
            summary = self._summary(view, pool)
        finally:
            await self._close()
        for job in jobs:
            counts_after = await self.store.counts(job)
            summary.unfinished += counts_after["pending"]  # rows `running` here are another live resumer's
            summary.running_elsewhere += counts_after["running"]
            summary.failed_total += counts_after["failed"]
        self._raise_what_stopped_it()
        return summary

    async def _jobs(self, names: list[str] | None) -> list[JobRow]:
        jobs = [job for job in await self.store.jobs() if job.state == "ready"]
        if names is not None:
            missing = sorted(set(names) - {job.name for job in jobs})
            if missing:
                raise ConfigError(f"no job named {missing[0]!r} in {self.store.path}")
            jobs = [job for job in jobs if job.name in names]
        return jobs

    async def _remember_choices(self, job: JobRow) -> JobRow:
        """The run choices that decide what the results mean are kept with the job for every resume."""
        mode = self.opts.mode or job.mode
        fresh = job.fresh if self.opts.cache is None else not self.opts.cache
        if (mode, fresh) == (job.mode, job.fresh):
            return job
        await self.store.set_mode(job, mode, fresh)
        return JobRow(**{**vars(job), "mode": mode, "fresh": fresh})

    def _lane(self, job: JobRow, model: str, endpoint: Endpoint) -> Lane:
        key = (endpoint.identity, endpoint.api_key)
        if key not in self.states:
            self.states[key] = EndpointState(endpoint)
            self.clients[key] = make_client(endpoint, self.opts.timeout, self.opts.concurrency, self.clock)
        if endpoint.identity not in self.caches:
            self.caches[endpoint.identity] = ResponseCache(self.opts.cache_dir, endpoint.identity)
        return Lane(job, model, self.states[key], self.clients[key], self.caches[endpoint.identity],
                    self._limiter(job, model, endpoint), job.fresh, self.opts.concurrency)

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

    async def _work(self, pool: LivePool, view: _View) -> None:
        loop = asyncio.get_running_loop()
        if self.opts.handle_signals:
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, pool)
        background = [asyncio.create_task(coro, name=name) for name, coro in (
            ("clock", self.clock.watch()), ("leases", self.leases.keep()), ("ledger", self.ledger.run()),
            ("ticker", self._tick(pool, view)),
        )]
        try:
            await pool.run()
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
            pool.abandon()

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
        asyncio.get_running_loop().call_later(grace, pool.abandon)

    async def _tick(self, pool: LivePool, view: _View) -> None:
        """Redraw progress, say when the run's health changes, notice a database deleted under the run."""
        path = self.store.path
        identity = _file_identity(path)
        health: list[str] = []
        while True:
            await asyncio.sleep(TICK)
            if identity is not None and _file_identity(path) != identity and self.ledger.failure is None:
                self.ledger.failure = StoreError(
                    f"{path} was deleted or replaced while the run was writing to it: answers since are only "
                    "in the cache", path=path)
            if self.ledger.failure is not None and not pool.stopping:
                self.progress.note(f"stopping: {self.ledger.failure}")
                pool.stop()
            now = view.health()
            if now != health:
                health = now
                for text in now:
                    self.progress.note(text)
            self.progress.render()

    def _summary(self, view: _View, pool: LivePool) -> RunSummary:
        t = view.tally()
        summary = RunSummary(
            done=t.done, cached=t.cached, shared=t.shared, failed=t.failed, requests=t.requests, paid=t.paid,
            prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens, cost_usd=view.cost(),
            interrupted=self.signals > 0, abandoned=pool.abandoned if self.signals > 1 else 0,
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


_gc_runs = 0  # runs in progress in this process
_gc_threshold = gc.get_threshold()  # to restore when the last one ends


@contextlib.contextmanager
def _collector_out_of_the_way() -> Iterator[None]:
    """While runs are in progress: the objects alive when the first started (modules, the SDK's
    classes) are frozen out of the garbage collector's scans, and young collections are rarer. A full
    collection over the openai SDK's objects stalled the event loop for up to 50 ms, and every request
    in flight waited it out (scripts/bench_throughput.py: 370 ms of collections in a 10 s run, 110 ms
    after). Both are undone when the last run ends."""
    global _gc_runs, _gc_threshold
    if _gc_runs == 0:
        gc.freeze()
        _gc_threshold = gc.get_threshold()
        gc.set_threshold(max(_gc_threshold[0], 10_000), *_gc_threshold[1:])
    _gc_runs += 1
    try:
        yield
    finally:
        _gc_runs -= 1
        if _gc_runs == 0:
            gc.set_threshold(*_gc_threshold)
            gc.unfreeze()
