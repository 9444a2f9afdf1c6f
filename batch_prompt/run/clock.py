"""Time as a run needs it: deadlines that do not count time the process was not running.

A process can stop without noticing: Ctrl-Z, a laptop lid, a VM pause, an event loop held up. When it
runs again, every timer that came due meanwhile fires at once, and a plain request deadline would throw
away an answer that arrived during the stop and is waiting to be read, and the prompt would be bought
again. `RunClock` watches the event loop with a heartbeat: a gap far longer than the beat is time the
process did not run (a stall), and `deadline` extends itself by the stalls within it, so the request is
given the running time it was promised.

Leases are another matter: they are on the wall clock (another process judges them by it), see `leases.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class RunClock:
    """The event loop's clock, less the time the process was stopped. Start `watch()` as a task."""

    def __init__(self, beat: float = 0.25, tolerance: float = 0.5) -> None:
        self.beat = beat
        self.tolerance = tolerance  # a late beat (a busy loop, GC) is not a stall unless this much later
        self.total = 0.0  # seconds of stalls seen so far
        self._last: float | None = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def watch(self) -> None:
        """The heartbeat: runs until cancelled."""
        self._last = self._now()
        while True:
            await asyncio.sleep(self.beat)
            now = self._now()
            self.total += self._gap(now)
            self._last = now

    def _gap(self, now: float) -> float:
        if self._last is None:
            return 0.0
        late = now - self._last - self.beat
        return late if late > self.tolerance else 0.0

    def stalled(self) -> float:
        """Seconds of stalls so far, the one under way included (the heartbeat may not have run yet)."""
        return self.total + self._gap(self._now())

    @contextlib.asynccontextmanager
    async def deadline(self, seconds: float) -> AsyncIterator[None]:
        """Like `asyncio.timeout(seconds)` (raises `TimeoutError`), counting only time the process ran."""
        loop = asyncio.get_running_loop()
        start, stalled = loop.time(), self.stalled()
        handles: list[asyncio.TimerHandle] = []
        async with asyncio.timeout(None) as timeout:

            def check() -> None:
                ran = loop.time() - start - (self.stalled() - stalled)
                if ran >= seconds:
                    timeout.reschedule(loop.time())  # expires at once: the task is cancelled
                else:
                    handles.append(loop.call_at(loop.time() + seconds - ran, check))

            handles.append(loop.call_at(start + seconds, check))
            try:
                yield
            finally:
                handles[-1].cancel()
