"""The runner: sends every unfinished prompt of a job database, job after job.

`run_jobs` checks the options, resolves each job's endpoint and key before any work, builds one client,
cache and limiter per endpoint, installs the signal handlers (the CLI's SIGINT/SIGTERM: the first stops
gracefully, a second kills), runs each job's `worker.WorkerPool`, and sums up a `RunSummary`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Iterator

from . import tokens
from .cache import ResponseCache
from .client import ApiClient, Endpoint, make_client, resolve_endpoint
from .errors import ConfigError
from .limiter import Limiter
from .options import FILES_BESIDES_CONNECTIONS, RunOptions, RunSummary
from .progress import auto_progress
from .store import JobRow, Store
from .worker import WorkerPool


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


class _Stop:
    """Shared between the signal handler and the job being run."""

    def __init__(self) -> None:
        self.requested = False
        self.current: WorkerPool | None = None

    def request(self) -> None:
        self.requested = True
        if self.current is not None:
            self.current.request_stop()


async def run_jobs(db_path: str, names: list[str] | None, opts: RunOptions) -> RunSummary:
    """Run the named jobs of `db_path` (all jobs when `names` is None) until done, failed or stopped."""
    opts.validate()
    ensure_open_files(opts.concurrency, opts.raise_open_files)
    gc_tuning = _collector_out_of_the_way() if opts.tune_gc else contextlib.nullcontext()
    with gc_tuning, Store(db_path, create=False) as store:
        jobs = [job for job in store.jobs() if job.state == "ready"]
        if names is not None:
            missing = sorted(set(names) - {job.name for job in jobs})
            if missing:
                raise ConfigError(f"no job named {missing[0]!r} in {db_path}")
            jobs = [job for job in jobs if job.name in names]
        endpoints = {job.id: resolve_endpoint(opts.base_url or job.base_url, opts.api_key) for job in jobs}
        progress = opts.progress or auto_progress(opts.quiet)
        summary = RunSummary()
        stop = _Stop()
        resources = _Resources(opts)
        loop = asyncio.get_running_loop()
        if opts.handle_signals:
            _install_signals(loop, stop)
        try:
            for job in jobs:
                if stop.requested:
                    break
                endpoint = endpoints[job.id]
                pool = WorkerPool(
                    store, job, endpoint, opts, progress, summary, resources.client(endpoint),
                    resources.cache(endpoint), resources.limiter(endpoint, job), resources.estimator,
                )
                stop.current = pool
                await pool.run()
        finally:
            stop.current = None
            if opts.handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            await resources.close()
        summary.interrupted = summary.interrupted or stop.requested
        for job in jobs:
            counts = store.counts(job)
            summary.unfinished += counts["pending"]  # rows `running` here are another live resumer's
            summary.running_elsewhere += counts["running"]
            summary.failed_total += counts["failed"]
    return summary


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


def _install_signals(loop: asyncio.AbstractEventLoop, stop: _Stop) -> None:
    def handler(sig: signal.Signals) -> None:
        # The first signal stops gracefully; remove ourselves so a second one kills at once.
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)
        stop.request()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig)


class _Resources:
    """Clients, caches and limiters of a run, one per endpoint, closed together."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.clients: dict[str, ApiClient] = {}
        self.caches: dict[str, ResponseCache] = {}
        self.limiters: dict[str, Limiter] = {}
        self.estimator = tokens.TokenEstimator()

    def client(self, endpoint: Endpoint) -> ApiClient:
        if endpoint.identity not in self.clients:
            self.clients[endpoint.identity] = make_client(endpoint, self.opts.timeout, self.opts.concurrency)
        return self.clients[endpoint.identity]

    def cache(self, endpoint: Endpoint) -> ResponseCache:
        if endpoint.identity not in self.caches:
            self.caches[endpoint.identity] = ResponseCache(self.opts.cache_dir, endpoint.identity)
        return self.caches[endpoint.identity]

    def limiter(self, endpoint: Endpoint, job: JobRow) -> Limiter:
        """One per endpoint and limits: options first, then the job's spec (`rpm`, `tpm`)."""
        if self.opts.limiter is not None:
            return self.opts.limiter
        rpm = self.opts.rpm or job.spec.get("rpm")
        tpm = self.opts.tpm or job.spec.get("tpm")
        key = f"{endpoint.identity} {rpm} {tpm}"
        if key not in self.limiters:
            self.limiters[key] = Limiter(rpm, tpm)
        return self.limiters[key]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        for cache in self.caches.values():
            cache.close()
