"""Leases: which process holds a claimed row, and for how long.

A claimed row carries its owner (`lease_owner()`: machine scope, pid, process start time, a per-run
token) and an expiry on the wall clock. Another process may take the row back when the lease has
expired or the owner is provably gone (`owner_is_dead`). `LeaseKeeper` is this process's side: it
renews the leases on the wall clock (a stopped process's monotonic clock may not move, the other
processes' wall clocks do), and before every send it makes sure they still hold, so a process that
was stopped past its lease (Ctrl-Z, a laptop lid) drops the rows another resumer has taken meanwhile
instead of paying for them a second time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path


def lease_owner() -> str:
    """An identity for this process's leases: machine scope, pid, process start time, a per-run token."""
    return f"{_scope()}:{os.getpid()}:{_start_time(os.getpid())}:{os.urandom(4).hex()}"


def _scope() -> str:
    """Where a pid means this process: host name, boot and pid namespace (two containers sharing a
    volume and a host name are different scopes; so is the same machine after a reboot)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        pidns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        boot = pidns = "-"
    return f"{socket.gethostname()}/{boot}/{pidns}"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for it;
    "-" when unknown, "Z" for a zombie (killed, not yet reaped: as dead as it gets)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return "-"
    return "Z" if fields[0] == b"Z" else fields[19].decode()


def owner_is_dead(owner: str) -> bool:
    """True when a lease owner is a process in this machine scope that no longer exists."""
    scope, pid_text, start, _ = [*owner.split(":"), "", "", ""][:4]
    if scope != _scope() or "-" in scope.split("/")[1:] or not pid_text.isdigit():
        return False  # another machine, boot or container (or unknown): only the lease's expiry tells
    return process_gone(int(pid_text), start)


def process_gone(pid: int, start: str | None = None) -> bool:
    """The one liveness rule (leases, and the private files of a create or an export): True when process
    `pid` of this machine is provably gone: no such process, or (given the start time it had, `_start_time`)
    another process that has reused its pid. A process that cannot be signalled (another user's) is alive."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return start not in (None, "-", "") and _start_time(pid) not in ("-", start)


class LeaseKeeper:
    """Renews this process's leases and knows which rows it still holds.

    `renew` is the store's renewal (returns the ids still held under this owner). Leases are renewed
    every `lease_seconds / 3` of wall-clock time; `ensure()` (awaited before each send) renews at once
    when less than that is left, which after a long stop finds out which rows were taken meanwhile:
    those are `lost` and must not be sent.
    """

    def __init__(self, renew: Callable[[], Awaitable[set[int]]], lease_seconds: float,
                 wall: Callable[[], float] = time.time) -> None:
        self._renew, self.lease_seconds, self.wall = renew, lease_seconds, wall
        self.valid_until = wall() + lease_seconds  # a lower bound on every held lease's expiry
        self.held: set[int] = set()
        self.lost: set[int] = set()
        self._lock = asyncio.Lock()
        self._generation = 0

    def claimed(self, ids: Iterable[int], at: float) -> None:
        """Rows just claimed, their leases taken at wall time `at` (before the claim was sent)."""
        ids = set(ids)
        if not self.held:
            self.valid_until = at + self.lease_seconds
        self.held |= ids
        self.lost -= ids

    def released(self, ids: Iterable[int]) -> None:
        self.held.difference_update(ids)

    @property
    def margin(self) -> float:
        return self.lease_seconds / 3

    async def ensure(self) -> None:
        """Renew now if the leases are close to expiring (or already have); no-op otherwise."""
        if self.wall() > self.valid_until - self.margin:
            await self.renew()

    async def renew(self) -> None:
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return  # renewed while we waited for the lock
            started = self.wall()
            still = await self._renew()
            self.lost |= self.held - still
            self.held &= still
            self.valid_until = started + self.lease_seconds
            self._generation += 1

    async def keep(self) -> None:
        """Renew on the wall clock until cancelled (checked every second, so a jump is noticed soon)."""
        while True:
            await asyncio.sleep(1.0)
            if self.held and self.wall() > self.valid_until - 2 * self.margin:
                await self.renew()
