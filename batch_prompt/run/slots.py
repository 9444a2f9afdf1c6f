"""Slots: the run's `--concurrency`, shared fairly by the lanes that want it.

Every request in flight holds a slot. When more are wanted than there are, a freed slot goes to the
waiting lane that holds the fewest (max-min fairness): a slow endpoint cannot take the whole pool just
because its requests last longer, and a lane alone gets all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Hashable


class Slots:
    """`total` slots; `async with slots.hold(lane):` around each request in flight."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.held: Counter[Hashable] = Counter()
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, lane: Hashable) -> AsyncIterator[None]:
        await self.acquire(lane)
        try:
            yield
        finally:
            self.release(lane)

    async def acquire(self, lane: Hashable) -> None:
        if self.used < self.total and not any(self._waiting.values()):
            self._take(lane)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(lane, deque()).append(waiter)
        try:
            await waiter  # the slot is ours when this resolves (`_grant` took it for us)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(lane)  # granted just as we were cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[lane].remove(waiter)
            raise

    def release(self, lane: Hashable) -> None:
        self.used -= 1
        self.held[lane] -= 1
        self._grant()

    def _take(self, lane: Hashable) -> None:
        self.used += 1
        self.held[lane] += 1

    def _grant(self) -> None:
        while self.used < self.total:
            lanes = [lane for lane, queue in self._waiting.items() if queue]
            if not lanes:
                return
            lane = min(lanes, key=lambda key: self.held[key])
            waiter = self._waiting[lane].popleft()
            if not waiter.done():
                self._take(lane)
                waiter.set_result(None)
