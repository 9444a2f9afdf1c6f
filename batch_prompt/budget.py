"""A job's budget (`--max-cost`, `max_cost` in the spec or `RunOptions`): its spend never passes it.

Spend counts across resumes: what the job's `spend` table says it paid before this run, priced at the
live or batch price, plus what this run has paid (the ledger's tallies). Before a request is sent its
worst case (the estimated prompt tokens and `max_tokens` x `n` of every prompt in it, at its mode's
price) is reserved; when the next reservation would pass the budget, nothing more of the job starts:
what is in flight finishes, the rows not sent stay pending, and the run says so (exit 1). A resume with
a larger budget goes on. A budget needs a price for every model of the job: `check` refuses one it
cannot price (exit 2), before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import ConfigError
from .pricing import PRICE_HINT, Prices
from .store import JobRow, Spend


class Budget:
    """The budget of one job in one run."""

    def __init__(self, job: JobRow, limit: float, prices: Prices, spent_before: float,
                 spent_now: Callable[[], float]) -> None:
        self.job, self.limit, self.prices = job, limit, prices
        self.spent_before, self._spent_now = spent_before, spent_now
        self.reserved = 0.0
        self.unmeasured = 0.0  # the worst cases of answers that came without usage (spent, as far as we know)
        self.reached = False  # a reservation was refused: the job starts nothing more in this run

    @classmethod
    def check(cls, job: JobRow, limit: float, prices: Prices, spend: Iterable[Spend],
              spent_now: Callable[[], float]) -> Budget:
        """The job's budget; `ConfigError` naming a model of the job that has no known price."""
        unpriced = [model for model in job.spec.get("models", []) if not prices.known(model)]
        if unpriced:
            raise ConfigError(
                f"a budget (--max-cost) needs a price for every model, and {unpriced[0]!r} has no known price: "
                f"{PRICE_HINT}")
        before = sum(prices.cost(s.model, s.mode, s.prompt_tokens, s.completion_tokens) or 0.0 for s in spend)
        return cls(job, limit, prices, before, spent_now)

    @property
    def spent(self) -> float:
        return self.spent_before + self._spent_now() + self.unmeasured

    def reserve(self, model: str, mode: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Reserve a request's worst case; None (and `reached`) when it would pass the budget."""
        cost = self.prices.cost(model, mode, prompt_tokens, completion_tokens)
        if cost is None:  # checked at the start; a model priced then is priced now
            cost = 0.0
        if self.reached or self.spent + self.reserved + cost > self.limit:
            self.reached = True
            return None
        self.reserved += cost
        return cost

    def release(self, cost: float) -> None:
        """The request reserved for has its answer (its real cost is in the ledger now), or was not sent."""
        self.reserved = max(0.0, self.reserved - cost)

    def message(self) -> str:
        return (f"job {self.job.name!r} reached its budget of ${self.limit:g}: ${self.spent:.4f} spent at list price; "
                "its unsent prompts are pending (resume with a larger --max-cost to go on)")
