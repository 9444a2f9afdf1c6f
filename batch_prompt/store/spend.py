"""The spend table and budget holds: what a job has paid for, and what requests in flight may cost."""

from __future__ import annotations

import time
from collections.abc import Callable

from .connection import Connection
from .leases import owner_is_dead
from .rows import JobRow, Spend


class Spending(Connection):
    """A job's spend, by model and mode, and the holds processes keep against its budget."""

    def spend(self, job: JobRow) -> list[Spend]:
        """What the job has paid for, by model and mode (every response paid for, recorded or not)."""
        rows = self.query(
            "SELECT model, mode, requests, answers, prompt_tokens, completion_tokens, cached_tokens,"
            " reasoning_tokens FROM spend"
            " WHERE job_id = ? ORDER BY model, mode",
            (job.id,),
        )
        return [Spend(*row) for row in rows]

    def hold_budget(self, job: JobRow, owner: str, lease_seconds: float,
                    amount: Callable[[list[Spend], float], float | None]) -> tuple[float | None, list[Spend], float]:
        """Hold, against the job's budget, what `owner`'s requests in flight may cost: `amount(spend, others)`
        USD (0 lets go; None: nothing fits, nothing changes), decided from what every process has recorded
        as spent and what the others hold (their live, unexpired holds), read in the same transaction, so
        two processes never both take the last of a budget. Returns (the hold made, spend, others)."""
        now = time.time()
        with self.transaction() as conn:
            holds = conn.execute("SELECT owner, reserved FROM budget_holds WHERE job_id = ? AND owner != ?"
                                 " AND expires > ?", (job.id, owner, now)).fetchall()
            others = sum(amount for who, amount in holds if not owner_is_dead(who))
            spend = self.spend(job)
            held = amount(spend, others)
            if held is None:
                return None, spend, others
            if held > 0:
                conn.execute("INSERT OR REPLACE INTO budget_holds (job_id, owner, reserved, expires)"
                             " VALUES (?, ?, ?, ?)", (job.id, owner, held, now + lease_seconds))
            else:
                conn.execute("DELETE FROM budget_holds WHERE job_id = ? AND owner = ?", (job.id, owner))
        return held, spend, others

