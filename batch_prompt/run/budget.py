"""A job's budget (`--max-cost`, `max_cost` in the spec or `RunOptions`): its spend never passes it.

Spend counts across resumes: what the job's `spend` table says it paid before this run, priced at the
live, batch or flex price (cached input at the cached rate), plus what this run has paid (the ledger's
tallies). Before a request is sent its worst case is reserved: its prompt counted as a byte-level
tokenizer's most (one token per UTF-8 byte, see `tokens.budget_parts`: no tokenizer beats it, whatever
the text, none of it assumed cached) and `max_completion_tokens` (reasoning included; else `max_tokens`)
x `n` of every prompt in it, at its mode's price (a flex request's at the flex price). A request that
does not fit while others are in flight waits for
them to settle (their real cost is usually far below their worst case); once one does not fit with
nothing in flight, nothing more of the job starts: the rows not sent stay pending, and the run says
what was spent and what the next request could cost (exit 1). A resume with the same budget stops at
once; one with a larger budget goes on. A budget needs a price for every model of the job (checked
before anything is sent: `preflight.py`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable

from ..reports.prices import Prices, money
from ..store.database import JobRow, Spend

RESIDUE = 1e-9  # USD: below this, what requests in flight hold is nothing (float rounding, not a request)


class Budget:
    """The budget of one job in one run."""

    def __init__(self, job: JobRow, limit: float, prices: Prices, spent_before: float,
                 spent_now: Callable[[], float]) -> None:
        self.job, self.limit, self.prices = job, limit, prices
        self.spent_before, self._spent_now = spent_before, spent_now
        self.reserved = 0.0
        self.others = 0.0  # what other processes running the job hold for their requests in flight
        self._own_at_read = 0.0  # what this run had paid when the database was last read
        self.unmeasured = 0.0  # the worst cases of answers that came without usage (spent, as far as we know)
        self.reached = False  # a reservation was refused with nothing in flight: the job starts nothing more
        self.next_cost = 0.0  # the worst case that did not fit
        # Shared with the other processes running the job (the runner sets it): (hold, fits) -> (held, spend,
        # others); without it (a lone budget) nothing is shared.
        self.store: HoldBudget | None = None
        self.committed_now: Callable[[], float] = spent_now  # what of `spent_now` is in the database
        self.held = 0.0  # what the database holds for this process
        self._settled = asyncio.Event()  # set whenever a reservation is released

    @classmethod
    def check(cls, job: JobRow, limit: float, prices: Prices, spend: Iterable[Spend],
              spent_now: Callable[[], float]) -> Budget:
        """The job's budget, from what it has spent so far (a price for each of its models is `preflight`'s
        to check, before anything is written)."""
        budget = cls(job, limit, prices, 0.0, spent_now)
        budget.refresh(spend, 0.0)
        return budget

    @property
    def spent(self) -> float:
        """Recorded by every process when last read, and paid by this one since, at list price."""
        return self.spent_before + self._spent_now() - self._own_at_read + self.unmeasured

    def refresh(self, spend: Iterable[Spend], others: float, own: float | None = None) -> None:
        """What the database says now: every process's recorded spend, the other processes' holds, and
        (`own`) what of this run's spend was committed when it was read (read before the database: a
        commit meanwhile is then counted twice, never not at all)."""
        self.spent_before = self.priced(spend)
        self._own_at_read = self.committed_now() if own is None else own
        self.others = others

    def priced(self, spend: Iterable[Spend]) -> float:
        return sum(self.prices.cost(s.model, s.mode, s.prompt_tokens, s.completion_tokens, s.cached_tokens) or 0.0
                   for s in spend)

    def reserve(self, model: str, mode: str, prompt_tokens: int, completion_tokens: int,
                wait: bool = True) -> float | None:
        """Reserve a request's worst case. None when it does not fit: then, if others are reserved and
        `wait`, it may fit once they settle (`reserve_when_settled`); otherwise the budget is `reached`."""
        cost = self.prices.cost(model, mode, prompt_tokens, completion_tokens)
        if cost is None:  # checked at the start; a model priced then is priced now
            cost = 0.0
        if self.reached:
            return None
        if self.spent + self.reserved + self.others + cost > self.limit:
            if not (wait and self.reserved > 0):
                self.reached, self.next_cost = True, cost
            return None
        self.reserved += cost
        return cost

    async def reserve_when_settled(self, model: str, mode: str, prompt_tokens: int,
                                   completion_tokens: int) -> float | None:
        """`reserve`, waiting for the requests in flight to settle while the worst case does not fit
        beside theirs; None once it does not fit with nothing in flight (the budget is reached). Past what
        this process holds in the database, the hold grows first, in one transaction with what the other
        processes spent and hold (`share`): together they never pass the budget."""
        while True:
            got = self.reserve(model, mode, prompt_tokens, completion_tokens)
            if got is not None and (self.store is None or self.need() <= self.held or await self.share(grow=got)):
                return got
            if got is not None:  # the others took what is left: as if it had not fit
                self.release(got)
                if self.reserved <= 0:
                    self.reached, self.next_cost = True, got
            if self.reached:
                return None
            self._settled.clear()
            await self._settled.wait()

    def need(self) -> float:
        """What this process must hold: its requests in flight, and what it paid and has not recorded yet."""
        return self.reserved + max(0.0, self._spent_now() - self._own_at_read) + self.unmeasured

    async def share(self, grow: float = 0.0) -> bool:
        """Hold what this process needs (with `grow`, the cost of a request just reserved: only if it fits
        beside what every process spent and the others hold, with room for a few more like it when there
        is) and read what they spent and hold. False when the growth does not fit."""
        if self.store is None:
            return True
        own = self.committed_now()  # (see `refresh`)

        def amount(spend: list[Spend], others: float) -> float | None:
            need = self.need()
            if not grow:
                return need
            room = self.limit - self.priced(spend) - others - need
            return None if room < 0 else need + min(3 * grow, room)

        held, spend, others = await self.store(amount)
        self.refresh(spend, others, own)
        if held is not None:
            self.held = held
        return held is not None

    def release(self, cost: float) -> None:
        """The request reserved for has its answer (its real cost is in the ledger now), or was not sent."""
        self.reserved -= cost
        if self.reserved < RESIDUE:  # sums of float costs leave ~1e-17 behind, which would wait for ever
            self.reserved = 0.0
        self._settled.set()

    def message(self) -> str:
        return (f"job {self.job.name!r} reached its budget of ${self.limit:g}: {money(self.spent)} spent at list "
                "price" + (f", {money(self.reserved)} held by requests in flight" if self.reserved else "")
                + f"; the next request could cost up to {money(self.next_cost)}: its unsent prompts are pending "
                f"(a resume with more than ${self.spent + self.next_cost:.4g} goes on)")

    def larger(self) -> float:
        """A budget that lets the next request go: what a resume must be given at least (two significant
        figures, rounded up: $1.11 needed is $1.2, never $1.1)."""
        need = max(self.limit * 2, self.spent + self.next_cost)
        if not need > 0 or not math.isfinite(need):
            return need
        step = 10.0 ** (math.floor(math.log10(need)) - 1)
        larger = float(f"{math.ceil(need / step - 1e-9) * step:.2g}")
        return larger if larger >= need else float(f"{(math.ceil(need / step) + 1) * step:.2g}")


# (what to hold, given every process's spend and the others' holds) -> (the hold made, spend, others' holds)
HoldBudget = Callable[[Callable[[list[Spend], float], float | None]],
                      Awaitable[tuple[float | None, list[Spend], float]]]

