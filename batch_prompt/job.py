"""The Python entry points: `create` records a job, `Job.run` / `Job.arun` send it, `resume` finishes a file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import RunOptions, RunSummary
from .spec import Spec, load_spec
from .store import Store

# The runner (and with it the openai SDK, ~0.4 s to import) loads on the first run, so that create,
# status and export start at once.


@dataclass
class Job:
    """A job recorded in a job database. `created` is False when the same spec was already there."""

    db_path: str
    name: str
    n_prompts: int
    created: bool = True
    base_url: str | None = None

    def run(self, **options: Any) -> RunSummary:
        """Send every unfinished prompt of this job; blocks until done. Options: see `RunOptions`.

        Inside a running event loop (a Jupyter cell) use `await job.arun()` instead.
        """
        return run_blocking(self.arun(**options))

    async def arun(self, **options: Any) -> RunSummary:
        """`run` for code already inside an event loop."""
        from .runner import run_jobs

        opts = RunOptions(**options)
        if opts.base_url is None:
            opts.base_url = self.base_url
        return await run_jobs(self.db_path, [self.name], opts)

    def status(self) -> dict[str, int]:
        with Store(self.db_path, create=False) as store:
            job = store.job(self.name)
            assert job is not None
            return store.counts(job)


def create(db_path: str | Path, spec: str | Path | Spec | None = None, **fields: Any) -> Job:
    """Expand a spec and record every prompt in `db_path` before anything is sent.

    Give the spec's fields as keyword arguments (`templates=`, `keywords=`, `model=`, `api=`,
    `model_args=`, `name=`, `repeats=`, `prompts_per_request=`, `base_url=`), or a spec file path.
    The same spec again is a no-op. Raises `SpecError`, `JobConflictError` or `StoreError`; on any
    error nothing is left behind.
    """
    if isinstance(spec, Spec):
        parsed = spec
    elif spec is not None:
        parsed = load_spec(spec, **fields)
    else:
        parsed = Spec.from_dict(fields)
    with Store(db_path) as store:
        row, created = store.create_job(parsed)
    return Job(str(db_path), row.name, row.n_prompts, created, parsed.base_url)


def resume(db_path: str | Path, **options: Any) -> RunSummary:
    """Finish every unfinished prompt of every job in `db_path` (failed prompts stay failed)."""
    return run_blocking(aresume(db_path, **options))


async def aresume(db_path: str | Path, **options: Any) -> RunSummary:
    from .runner import run_jobs

    return await run_jobs(str(db_path), None, RunOptions(**options))


def retry_failed(db_path: str | Path, job: str | None = None, error_kind: str | None = None) -> int:
    """Move failed prompts back to pending: every one, or those of the job named `job`, or of one error
    kind (as `status` groups them, e.g. "BadRequestError 400"); returns how many.
    Raises `JobNotFoundError` for an unknown job name."""
    with Store(db_path, create=False) as store:
        rows = store.select(job)
        if error_kind is None:
            return sum(store.retry_failed(row) for row in rows)
        return sum(store.retry_failed_kind(row, error_kind) for row in rows)


def run_blocking(coro: Any) -> RunSummary:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        result: RunSummary = asyncio.run(coro)
        return result
    coro.close()
    raise ConfigError("run() was called inside a running event loop (a notebook?): use `await job.arun()`")
