"""The Python entry points: `create` records a job, `Job.run` / `Job.arun` send it, `resume` finishes a file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Unpack

from .errors import ConfigError
from .options import CancelResult, RunArgs, RunOptions, RunSummary
from .spec.spec import Spec, load_spec
from .store.database import JobRow, Store
from .store.leases import process_gone

T = TypeVar("T")

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

    def run(self, **options: Unpack[RunArgs]) -> RunSummary:
        """Send every unfinished prompt of this job; blocks until done. Options: see `RunOptions`.

        Inside a running event loop (a Jupyter cell) use `await job.arun()` instead.
        """
        return run_blocking(self.arun(**options))

    async def arun(self, **options: Unpack[RunArgs]) -> RunSummary:
        """`run` for code already inside an event loop."""
        from .run.runner import run_jobs

        opts = RunOptions(**options)
        if opts.base_url is None:
            opts.base_url = self.base_url
        return await run_jobs(self.db_path, [self.name], opts)

    def mode(self) -> str:
        """The mode the job is sent in ("live" or "batch"): the one it was last run, or created to run, in."""
        with Store(self.db_path, create=False) as store:
            job = store.job(self.name)
            assert job is not None
            return job.mode

    def status(self) -> dict[str, int]:
        with Store(self.db_path, create=False) as store:
            job = store.job(self.name)
            assert job is not None
            return store.counts(job)


def create(db_path: str | Path, spec: str | Path | Spec | None = None, *, mode: str | None = None,
           fresh: bool | None = None, deadline: str | float | datetime.datetime | None = None,
           **fields: Any) -> Job:
    """Expand a spec and record every prompt in `db_path` before anything is sent.

    Give the spec's fields as keyword arguments (`templates=`, `keywords=`, `model=`, `api=`,
    `model_args=`, `name=`, `repeats=`, `dedupe=`, `prompts_per_request=`, `base_url=`, `endpoints=`,
    `rpm=`, `tpm=`, `max_cost=`, `prices=`, `parse=`), or a spec file path (keyword arguments then override its
    fields). The same spec again is a no-op (run fields given anew are updated). `mode` ("live",
    "batch" or "auto" with a `deadline`: see `RunOptions`) and `fresh` (no answers from the cache), when
    given, are recorded with the job in the same transaction (see `Store.create_job`): how the run
    about to send it sends it. Raises `SpecError`, `JobConflictError`, `ConfigError` (a bad mode or
    deadline) or `StoreError`; on any error nothing is left behind: not a row, and, when
    `db_path` did not exist, not a file (see `_record`).
    """
    if isinstance(spec, Spec):
        parsed = spec
    elif spec is not None:
        parsed = load_spec(spec, **fields)
    else:
        parsed = Spec.from_dict(fields)
    choice = RunOptions(mode=mode, deadline=deadline)
    choice.validate()
    deadline_at = choice.deadline_at(time.time())
    row, created = _record(Path(db_path), parsed, "auto" if choice.auto else mode, fresh, deadline_at)
    return Job(str(db_path), row.name, row.n_prompts, created, parsed.base_url)


CREATING = ".creating"  # the suffix of a new database's private name while its first job is recorded


def _record(path: Path, spec: Spec, mode: str | None, fresh: bool | None,
            deadline_at: float | None = None) -> tuple[JobRow, bool]:
    """Record `spec`'s job in the database at `path`.

    A database that does not exist yet is made under a private name beside it
    (`.NAME.PID.TOKEN.creating`) and hard-linked into place once its job is complete, so a create that
    fails or is killed leaves no empty database behind, and no other process ever sees, or writes into,
    a file that this one might remove. If the path appears meanwhile (another process created it first),
    or the file system has no hard links, the job is recorded into the file at `path` as usual.
    """
    if not os.path.lexists(path) and path.parent.is_dir():
        _remove_stale_private_files(path)
        private = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{CREATING}"
        try:
            with Store(private) as store:
                result = store.create_job(spec, pause=0.0, mode=mode, fresh=fresh,
                                                deadline_at=deadline_at)  # no other process sees it
                store.checkpoint()
            with contextlib.suppress(OSError):  # FileExistsError: another process was first
                os.link(private, path)
                return result
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{private}{suffix}")
    with Store(path) as store:
        return store.create_job(spec, mode=mode, fresh=fresh, deadline_at=deadline_at)


def _remove_stale_private_files(path: Path) -> None:
    """Private files of creates killed before their link: those whose process is gone."""
    for stale in path.parent.glob(f".{path.name}.*{CREATING}*"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and process_gone(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def resume(db_path: str | Path, **options: Unpack[RunArgs]) -> RunSummary:
    """Finish every unfinished prompt of every job in `db_path` (failed prompts stay failed)."""
    return run_blocking(aresume(db_path, **options))


async def aresume(db_path: str | Path, **options: Unpack[RunArgs]) -> RunSummary:
    from .run.runner import run_jobs

    return await run_jobs(str(db_path), None, RunOptions(**options))


def cancel(db_path: str | Path, job: str | None = None, **options: Unpack[RunArgs]) -> CancelResult:
    """Cancel the open batches (batch mode) of every job in `db_path`, or of `job`: what they completed is
    recorded, the rest is pending again. Options: see `RunOptions` (where the endpoint is, how to poll)."""
    from .run.runner import cancel_jobs

    return run_blocking(cancel_jobs(str(db_path), [job] if job else None, RunOptions(**options)))


def retry_failed(db_path: str | Path, job: str | None = None, error_kind: str | None = None) -> int:
    """Move failed prompts back to pending: every one, or those of the job named `job`, or of one error
    kind (as `status` groups them, e.g. "BadRequestError 400"); returns how many.
    Raises `JobNotFoundError` for an unknown job name."""
    with Store(db_path, create=False) as store:
        rows = store.select(job)
        if error_kind is None:
            return sum(store.retry_failed(row) for row in rows)
        return sum(store.retry_failed_kind(row, error_kind) for row in rows)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise ConfigError("run() was called inside a running event loop (a notebook?): use `await job.arun()`")
