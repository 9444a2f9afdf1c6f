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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import tokens
from .cache import ResponseCache
from .client import ApiClient, Endpoint, make_client, resolve_endpoint
from .errors import ConfigError
from .limiter import Limiter
from .progress import Progress, auto_progress
from .retry import RetryPolicy
from .store import JobRow, Store
from .worker import WorkerPool


@dataclass
class RunOptions:
    """How to run. Every field has a CLI flag of the same name where it makes sense."""

    concurrency: int = 100
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    cache: bool = True  # False: do not read the cache (fresh samples); responses are still written
    cache_dir: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_attempts: int = 8
    quiet: bool = False
    progress: Progress | None = None
    retry: RetryPolicy | None = None
    limiter: Limiter | None = None
    lease_seconds: float = 300.0
    grace: float = 10.0  # seconds in-flight requests get to finish after a stop
    flush_interval: float = 0.2
    flush_batch: int = 256
    handle_signals: bool = False

    def validate(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, not {self.concurrency!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, not {value!r}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive, not {self.timeout!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be a positive integer, not {self.max_attempts!r}")
        if self.concurrency > MAX_CONCURRENCY:
            raise ConfigError(f"concurrency {self.concurrency} is more than {MAX_CONCURRENCY:,}")


MAX_CONCURRENCY = 10_000
FILES_BESIDES_CONNECTIONS = 64  # databases, their WAL and shared-memory files, the cache, stdio, the event loop


def ensure_open_files(concurrency: int) -> None:
    """Make sure `concurrency` connections can be open at once: raise this process's soft limit on open
    files (`ulimit -n`) up to its hard limit if needed; `ConfigError` when even that is too low (the
    connections past the limit would fail one after another and be retried for nothing)."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to check
        return
    needed = concurrency + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
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


@dataclass
class RunSummary:
    """What a run did. `exit_code`: 0 all done, 1 some prompts failed, 130 interrupted."""

    done: int = 0
    cached: int = 0
    failed: int = 0  # failed in this run
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # the tokens paid for at list price (tokens.PRICES); None: no model priced
    errors: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    unfinished: int = 0  # pending in the file after the run
    running_elsewhere: int = 0  # claimed by another process that is still working on them
    failed_total: int = 0  # failed in the file after the run

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed_total or self.unfinished else 0


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
    ensure_open_files(opts.concurrency)
    with _collector_out_of_the_way(), Store(db_path, create=False) as store:
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
