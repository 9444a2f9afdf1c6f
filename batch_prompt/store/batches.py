"""The batches table (Batch API mode): a batch's record, the rows it holds, and settling it."""

from __future__ import annotations

import time
from typing import Any

from ..spec.endpoints import Endpoint
from .connection import Connection
from .rows import BatchRow, Claimed, JobRow


class Batches(Connection):
    """A job's batches and the prompt rows each holds."""


    def open_batch(self, job: JobRow, model: str, endpoint: Endpoint, token: str, ids: list[int],
                   owner: str) -> BatchRow:
        """Record a new batch (where it goes: the endpoint's URL and its key's variable, never the key) and
        move the rows `ids` (claimed by `owner`) into it, in one transaction, before anything is uploaded:
        from here on no resume claims them; only the batch settles them."""
        with self.transaction() as conn:
            batch_id = conn.execute(
                "INSERT INTO batches (job_id, model, endpoint, token, state, requests, created_at, base_url,"
                " api_key_env) VALUES (?, ?, ?, ?, 'preparing', 0, ?, ?, ?)",
                (job.id, model, endpoint.identity, token, time.time(), endpoint.base_url, endpoint.key_env),
            ).lastrowid
            moved = 0
            for start in range(0, len(ids), 900):
                part = ids[start : start + 900]
                moved += conn.execute(
                    f"UPDATE prompts SET lease_owner = ?, lease_expires = NULL, batch = ? WHERE id IN"
                    f" ({','.join('?' * len(part))}) AND status = 'running' AND lease_owner = ?",
                    (f"batch:{batch_id}", batch_id, *part, owner),
                ).rowcount
            conn.execute("UPDATE batches SET requests = ? WHERE id = ?", (moved, batch_id))
        batch = self.batch(int(batch_id or 0))
        assert batch is not None
        return batch

    def batch(self, batch_id: int) -> BatchRow | None:
        rows = self._batches("id = ?", (batch_id,))
        return rows[0] if rows else None

    def batches(self, job: JobRow, open_only: bool = False) -> list[BatchRow]:
        """A job's batches, oldest first (only those not yet settled, with `open_only`)."""
        if open_only:
            return self._batches("job_id = ? AND state NOT IN ('collected', 'returned')", (job.id,))
        return self._batches("job_id = ?", (job.id,))

    def _batches(self, where: str, params: tuple[Any, ...]) -> list[BatchRow]:
        rows = self.query(
            "SELECT id, job_id, model, endpoint, token, state, status, input_file_id, batch_id, output_file_id,"
            " error_file_id, requests, completed, failed, error, files_left, created_at, submitted_at,"
            f" finished_at, base_url, api_key_env FROM batches WHERE {where} ORDER BY id",
            params,
        )
        return [BatchRow(**{**dict(zip(BatchRow.__slots__, r, strict=True)), "files_left": bool(r[15])})
                for r in rows]

    def update_batch(self, row: int, /, **fields: Any) -> None:
        """Set some of a batch's columns (names as in `BatchRow`)."""
        names = [name for name in fields if name in BatchRow.__slots__ and name != "id"]
        if len(names) != len(fields):
            raise ValueError(f"unknown batch fields: {sorted(set(fields) - set(names))}")
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE batches SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?",
                (*[int(v) if isinstance(v, bool) else v for v in fields.values()], row),
            )

    def batch_rows(self, batch_id: int) -> list[Claimed]:
        """The prompts a batch still holds, in order."""
        rows = self.query(
            "SELECT id, job_id, hash, model, request, attempts FROM prompts WHERE batch = ? AND status = 'running'"
            " ORDER BY id",
            (batch_id,),
        )
        return [Claimed(*row) for row in rows]

    def in_batches(self, job: JobRow) -> int:
        """How many of the job's prompts are held by open batches."""
        row = self.query(
            "SELECT count(*) FROM prompts WHERE batch IN (SELECT id FROM batches WHERE job_id = ?"
            " AND state NOT IN ('collected', 'returned')) AND status = 'running'",
            (job.id,),
        )[0]
        return int(row[0])

    def return_batch(self, batch_id: int, error: str | None) -> int:
        """A batch the provider refused (or that never reached it): its prompts back to pending, the batch
        settled as `returned`. Returns how many prompts went back."""
        with self.transaction() as conn:
            moved = conn.execute(
                "UPDATE prompts SET status = 'pending', lease_owner = NULL, lease_expires = NULL, batch = NULL,"
                " last_error = coalesce(?, last_error) WHERE batch = ? AND status = 'running'",
                (error, batch_id),
            ).rowcount
            conn.execute("UPDATE batches SET state = 'returned', error = ?, finished_at = ? WHERE id = ?",
                         (error, time.time(), batch_id))
        return int(moved)


    def worst_batch_seconds(self, endpoint: str, model: str) -> float | None:
        """The longest a batch of `model` at `endpoint` (its identity) took, from creation to its end, of
        those it completed (any job of this file); None when none has."""
        row = self.query(
            "SELECT max(finished_at - created_at) FROM batches WHERE endpoint = ? AND model = ?"
            " AND status = 'completed' AND finished_at IS NOT NULL",
            (endpoint, model),
        )[0]
        return None if row[0] is None else float(row[0])
