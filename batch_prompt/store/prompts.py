"""The prompts table: counting a job's rows, claiming them under a lease, recording outcomes, streaming
the done rows.

Queries over unfinished rows say `status != 'done'` beside the status they want (`AND status = 'pending'`):
that is not redundant. SQLite uses the partial index `prompts_unfinished` (`WHERE status != 'done'`) only
when a query's WHERE contains the index's condition as written; `status = 'pending'` alone implies it, but
the planner does not prove implications, and the query would scan every row of the job (1,000,000 done
rows to find the last 1,000 pending). tests/test_store_export.py checks the plans.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from .leases import owner_is_dead
from .rows import Charge, Claimed, DoneRow, GroupCount, JobRow, Outcome, PromptRow
from .spend import Spending

_PROMPT_ROW = ("SELECT id, hash, model, template_index, keywords_index, model_index, sample_index, template,"
               " keywords, request, status, attempts, error_kind, last_error, response, cached FROM prompts")


class Prompts(Spending):
    """A job's prompt rows: status counts, claims and leases, outcomes, the done rows."""


    def counts(self, job: JobRow) -> dict[str, int]:
        """Prompts by status, and tokens used. Reads only unfinished rows (done = total - the rest)."""
        counts = {"pending": 0, "running": 0, "failed": 0}
        with self.errors():
            for status, count in self.conn.execute(
                "SELECT status, count(*) FROM prompts WHERE job_id = ? AND status != 'done' GROUP BY status",
                (job.id,),
            ):
                counts[status] = count
        counts["done"] = job.n_prompts - sum(counts.values()) if job.state == "ready" else 0
        counts["total"] = job.n_prompts
        spend = self.spend(job)
        counts["prompt_tokens"] = sum(s.prompt_tokens for s in spend)
        counts["completion_tokens"] = sum(s.completion_tokens for s in spend)
        return counts

    def unfinished_by_model(self, job: JobRow) -> dict[tuple[str, str], int]:
        """{(model, status): count} of the job's rows not done, from the unfinished index: O(rows not done)."""
        rows = self.query(
            "SELECT model, status, count(*) FROM prompts INDEXED BY prompts_unfinished"
            " WHERE job_id = ? AND status != 'done' GROUP BY model, status",
            (job.id,),
        )
        return {(model, status): count for model, status, count in rows}

    def rows_by_model(self, job: JobRow) -> dict[str, int]:
        """{model: rows} of a job, counted (O(all rows): for a job whose spec does not say)."""
        rows = self.query(
            "SELECT model, count(*) FROM prompts WHERE job_id = ? GROUP BY model", (job.id,)
        )
        return dict(rows)

    def cached_by_model(self, job: JobRow) -> dict[str, int]:
        """{model: rows answered from the cache}, from the `prompts_cached` index: O(cached rows)."""
        rows = self.query(
            "SELECT model, count(*) FROM prompts INDEXED BY prompts_cached WHERE job_id = ? AND cached = 1"
            " GROUP BY model",
            (job.id,),
        )
        return dict(rows)

    def error_groups(self, job: JobRow) -> list[tuple[str, int, str]]:
        """(error kind, failed rows, the first one's message), most frequent first. O(failed rows)."""
        rows = self.query(
            # a bare column beside min(): SQLite takes it from the row holding the minimum
            "SELECT coalesce(error_kind, 'error'), count(*), coalesce(last_error, ''), min(id) FROM prompts"
            " WHERE job_id = ? AND status != 'done' AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC, 1",
            (job.id,),
        )
        return [(kind, count, example) for kind, count, example, _ in rows]

    def group_counts(self, job: JobRow, kind: str, field: str = "") -> list[GroupCount]:
        """The job's rows counted by group, model, status and cached flag, with the tokens of the answers
        they hold: one pass over the job's rows inside SQLite, none read into Python (a million rows: about
        a second). `kind` "template": the key is the template index; "model": the model; "keyword": the JSON
        text of the keyword dict's `field` (None where the dict has no such field)."""
        if kind == "keyword":
            # a JSON path cannot name a field with a double quote in it: json_each can (more slowly; its
            # value is SQL's, so true and false are spelled out again)
            key = ("keywords -> ?" if '"' not in field else "(SELECT CASE type WHEN 'true' THEN 'true'"
                   " WHEN 'false' THEN 'false' ELSE json_quote(value) END FROM json_each(keywords) WHERE key = ?)")
            params: tuple[Any, ...] = (f'$."{field}"' if '"' not in field else field,)
        elif kind in ("template", "model"):
            key, params = {"template": "template_index", "model": "model"}[kind], ()
        else:
            raise ValueError(f"unknown group kind {kind!r}")
        rows = self.query(
            f"SELECT {key} AS k, model, status, cached, count(*), coalesce(sum(prompt_tokens), 0),"
            " coalesce(sum(completion_tokens), 0), min(id) FROM prompts WHERE job_id = ?"
            " GROUP BY k, model, status, cached",
            (*params, job.id),
        )
        return [GroupCount(k, model, status, bool(cached), *rest) for k, model, status, cached, *rest in rows]

    def prompts(self, job: JobRow, status: str | None = None, limit: int = 20) -> list[PromptRow]:
        """Up to `limit` of the job's rows in order, of one status or any (for `show`)."""
        # a status other than done reads the unfinished index; `status != 'done'` lets SQLite use it
        where, params = ("", ()) if status is None else (" AND status != 'done' AND status = ?", (status,))
        if status == "done":
            where, params = " AND status = 'done'", ()
        rows = self.query(
            f"{_PROMPT_ROW} WHERE job_id = ?{where} ORDER BY id LIMIT ?",
            (job.id, *params, limit),
        )
        return [PromptRow(*row) for row in rows]

    def prompts_by_id(self, job: JobRow, ids: list[int]) -> list[PromptRow]:
        """The job's rows of these ids, in order (for `show --unparsed`)."""
        rows = self.query(
            f"{_PROMPT_ROW} WHERE job_id = ? AND id IN ({', '.join('?' * len(ids))}) ORDER BY id",
            (job.id, *ids),
        ) if ids else []
        return [PromptRow(*row) for row in rows]

    # --- running ----------------------------------------------------------------------------------

    def claim(self, job: JobRow, model: str, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
        """Atomically move up to `limit` pending rows of a job's model to `running` under this owner's
        lease. A row whose request (hash) is in flight in another process right now is left pending:
        that answer is on its way, to the cache, and no one pays for it twice."""
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE prompts SET status = 'running', lease_owner = ?, lease_expires = ?"
                " WHERE id IN (SELECT p.id FROM prompts p WHERE p.job_id = ? AND p.model = ?"
                "   AND p.status != 'done' AND p.status = 'pending'"
                "   AND NOT EXISTS (SELECT 1 FROM prompts q WHERE q.hash = p.hash AND q.status = 'running'"
                "                   AND q.lease_owner != ?)"
                "   ORDER BY p.id LIMIT ?)"
                " RETURNING id, hash, model, request, attempts",
                (owner, time.time() + lease_seconds, job.id, model, owner, limit),
            ).fetchall()
        rows.sort()
        return [Claimed(r[0], job.id, r[1], r[2], r[3], r[4]) for r in rows]

    def pending(self, job: JobRow, model: str) -> int:
        """How many rows of the job's model are pending: claimable, or waiting for an answer in flight
        elsewhere."""
        row = self.query(
            "SELECT count(*) FROM prompts WHERE job_id = ? AND model = ? AND status != 'done'"
            " AND status = 'pending'",
            (job.id, model),
        )[0]
        return int(row[0])

    def pending_hashes(self, job: JobRow, model: str, limit: int) -> list[str]:
        """The request hashes of up to `limit` pending rows of the job's model."""
        with self.errors():
            return [row[0] for row in self.conn.execute(
                "SELECT hash FROM prompts WHERE job_id = ? AND model = ? AND status != 'done'"
                " AND status = 'pending' LIMIT ?", (job.id, model, limit))]

    def reclaim(self, job: JobRow) -> int:
        """Return `running` rows whose lease expired, or whose owner process is gone, to `pending`."""
        owners = [
            row[0] for row in self.conn.execute(
                "SELECT DISTINCT lease_owner FROM prompts WHERE job_id = ? AND status != 'done'"
                " AND status = 'running'",
                (job.id,),
            )
        ]
        dead = [owner for owner in owners if owner and owner_is_dead(owner)]
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE prompts SET status = 'pending', lease_owner = NULL, lease_expires = NULL"
                " WHERE job_id = ? AND status != 'done' AND status = 'running' AND (lease_expires < ?"
                f" OR lease_owner IN ({','.join('?' * len(dead))}))",
                (job.id, time.time(), *dead),
            )
        return cur.rowcount

    def renew(self, owner: str, lease_seconds: float) -> set[int]:
        """Extend every lease this owner still holds; returns the ids of those rows (any other row it
        claimed has been taken over, or finished, by another process)."""
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE prompts SET lease_expires = ? WHERE job_id IN (SELECT id FROM jobs)"
                " AND status != 'done' AND status = 'running' AND lease_owner = ? RETURNING id",
                (time.time() + lease_seconds, owner),
            ).fetchall()
        return {row[0] for row in rows}

    def record(self, outcomes: list[Outcome], owner: str, charges: Iterable[Charge] = ()) -> None:
        """Commit a batch of outcomes and charges in one transaction; a row already done is left as it is.

        A valid answer is recorded whoever holds the row's lease now (an answer is an answer); a failure,
        or a return to pending (`retry`), only while the lease is still the outcome's owner's (another
        process may since be answering it). Charges are added to the job's spend whatever became of their
        answers, except a batch line's (`row_id`), counted only with its row's answer (collecting a batch
        again after a kill pays nothing twice)."""
        charges = list(charges)
        if not outcomes and not charges:
            return
        now = time.time()
        with self.transaction() as conn:
            ids = [o.id for o in outcomes]
            fresh: set[int] = set()
            for start in range(0, len(ids), 900):  # SQLite's limit on bound parameters
                part = ids[start : start + 900]
                fresh.update(row[0] for row in conn.execute(
                    f"SELECT id FROM prompts WHERE id IN ({','.join('?' * len(part))}) AND status != 'done'", part
                ))
            outcomes = [o for o in outcomes if o.id in fresh]
            done = {o.id for o in outcomes if o.status == "done"}
            conn.executemany(
                "UPDATE prompts SET status = 'done', response = ?, cached = ?, prompt_tokens = ?,"
                " completion_tokens = ?, attempts = attempts + ?, last_error = NULL, error_kind = NULL,"
                " finished_at = ?, lease_owner = NULL, lease_expires = NULL, batch = NULL WHERE id = ?",
                [(o.response, int(o.cached), o.prompt_tokens, o.completion_tokens, o.attempts, now, o.id)
                 for o in outcomes if o.status == "done"],
            )
            conn.executemany(
                "UPDATE prompts SET status = 'failed', last_error = ?, error_kind = ?, attempts = attempts + ?,"
                " finished_at = ?, lease_owner = NULL, lease_expires = NULL, batch = NULL"
                " WHERE id = ? AND lease_owner = ?",
                [(o.error, o.error_kind, o.attempts, now, o.id, o.owner or owner)
                 for o in outcomes if o.status == "failed"],
            )
            conn.executemany(
                "UPDATE prompts SET status = 'pending', last_error = ?, error_kind = ?, attempts = attempts + ?,"
                " lease_owner = NULL, lease_expires = NULL, batch = NULL WHERE id = ? AND lease_owner = ?",
                [(o.error, o.error_kind, o.attempts, o.id, o.owner or owner) for o in outcomes if o.status == "retry"],
            )
            conn.executemany(
                "INSERT INTO spend (job_id, model, mode, requests, answers, prompt_tokens, completion_tokens,"
                " cached_tokens, reasoning_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, model, mode) DO UPDATE SET"
                " requests = requests + excluded.requests, answers = answers + excluded.answers,"
                " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens,"
                " cached_tokens = cached_tokens + excluded.cached_tokens,"
                " reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens",
                [(c.job_id, c.model, c.mode, c.requests, c.answers, c.prompt_tokens, c.completion_tokens,
                  c.cached_tokens, c.reasoning_tokens) for c in charges if c.row_id is None or c.row_id in done],
            )

    def release(self, ids: list[int], owner: str) -> None:
        """Hand rows this owner claimed back to `pending` (interrupted, or the API refused the run).
        A row whose lease another process has taken over since is left alone."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE prompts SET status = 'pending', lease_owner = NULL, lease_expires = NULL, batch = NULL"
                " WHERE id = ? AND status = 'running' AND lease_owner = ?",
                [(i, owner) for i in ids],
            )

    def retry_failed(self, job: JobRow) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE prompts SET status = 'pending', attempts = 0 WHERE job_id = ? AND status != 'done'"
                " AND status = 'failed'",
                (job.id,),
            )
        return cur.rowcount

    def retry_failed_kind(self, job: JobRow, error_kind: str) -> int:
        """`retry_failed` for the failed rows of one error kind only (as `status` groups them)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE prompts SET status = 'pending', attempts = 0 WHERE job_id = ? AND status != 'done'"
                " AND status = 'failed' AND coalesce(error_kind, 'error') = ?",
                (job.id, error_kind),
            )
        return cur.rowcount

    # --- export -----------------------------------------------------------------------------------

    def iter_done(self, job: JobRow, chunk: int = 2000, include: tuple[str, ...] = ()) -> Iterator[DoneRow]:
        """The job's done rows in order, streamed; with `include` (`failed`, `pending`, `running`) the rows
        of those statuses too, in the same order."""
        last = 0
        statuses = ("done", *include)
        where = "status = 'done'" if not include else f"status IN ({', '.join('?' * len(statuses))})"
        while True:
            rows = self.query(
                "SELECT id, hash, model, template, keywords, request, response, template_index,"
                " keywords_index, model_index, sample_index, status, error_kind, last_error FROM prompts"
                f" WHERE job_id = ? AND id > ? AND {where} ORDER BY id LIMIT ?",
                (job.id, last, *(statuses if include else ()), chunk),
            )
            if not rows:
                return
            for row in rows:
                yield DoneRow(*row)
            last = rows[-1][0]

