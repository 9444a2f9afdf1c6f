"""The job database as a run uses it: one connection in a thread of its own.

SQLite waits for locks by sleeping in the calling thread (a big `create` into the same file, a slow
disk, another resumer committing). On the event loop's thread that wait would stop every request in
flight from being read; here it stops only the store's own thread, and the network goes on. The
connection is opened, used and closed in that thread only (sqlite3's rule), and it waits out a lock
held elsewhere instead of failing (`Store(on_locked=...)`), saying so through `locked_for`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .database import BatchRow, Charge, Claimed, JobRow, Outcome, Spend, Store

T = TypeVar("T")


class AsyncStore:
    """`Store`'s run-time methods, awaited; each runs in the store's own thread, one at a time, in order."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prompt-store")
        self._store: Store | None = None
        self.locked_for = 0.0  # seconds the current write has waited for a lock held elsewhere (0: none)

    def _locked(self, seconds: float) -> None:  # called in the store's thread
        self.locked_for = seconds

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("AsyncStore used before open()")
        return self._store

    async def open(self) -> None:
        self._store = await self._call(lambda: Store(self.path, create=False, on_locked=self._locked))

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await self._call(store.close)
        self._executor.shutdown(wait=False)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._call(fn, *args)
        finally:
            self.locked_for = 0.0

    async def run(self, fn: Callable[[Store], T]) -> T:
        """`fn(store)` in the store's thread (any `Store` method not wrapped here)."""
        return await self._write(lambda: fn(self.store))

    async def jobs(self) -> list[JobRow]:
        return await self._call(self.store.jobs)

    async def counts(self, job: JobRow) -> dict[str, int]:
        return await self._call(self.store.counts, job)

    async def spend(self, job: JobRow) -> list[Spend]:
        return await self._call(self.store.spend, job)

    async def pending(self, job: JobRow, model: str) -> int:
        return await self._call(self.store.pending, job, model)

    async def claim(self, job: JobRow, model: str, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
        return await self._write(self.store.claim, job, model, owner, limit, lease_seconds)

    async def reclaim(self, job: JobRow) -> int:
        return await self._write(self.store.reclaim, job)

    async def renew(self, owner: str, lease_seconds: float) -> set[int]:
        return await self._write(self.store.renew, owner, lease_seconds)

    async def record(self, outcomes: list[Outcome], owner: str, charges: Iterable[Charge] = ()) -> None:
        await self._write(self.store.record, outcomes, owner, list(charges))

    async def release(self, ids: list[int], owner: str) -> None:
        await self._write(self.store.release, ids, owner)

    async def batches(self, job: JobRow, open_only: bool = False) -> list[BatchRow]:
        return await self._call(self.store.batches, job, open_only)

    async def in_batches(self, job: JobRow) -> int:
        return await self._call(self.store.in_batches, job)

    async def set_mode(self, job: JobRow, mode: str, fresh: bool, base_url: str | None = None) -> None:
        await self._write(self.store.set_run_choices, job, mode, fresh, base_url)
