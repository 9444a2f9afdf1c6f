"""The job database: every SQL statement batch-prompt runs against jobs.db lives here.

Opening a store migrates it (see `schema.py`). The connection is in autocommit mode and every state
change is an explicit `BEGIN IMMEDIATE` transaction, so concurrent processes never deadlock on a lock
upgrade; `busy_timeout` absorbs short waits. Claims are one `UPDATE ... RETURNING` with a lease.

Queries over unfinished rows say `status != 'done'` beside the status they want (`AND status = 'pending'`):
that is not redundant. SQLite uses the partial index `prompts_unfinished` (`WHERE status != 'done'`) only
when a query's WHERE contains the index's condition as written; `status = 'pending'` alone implies it, but
the planner does not prove implications, and the query would scan every row of the job (1,000,000 done
rows to find the last 1,000 pending). tests/test_store_export.py checks the plans.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import JobConflictError, JobNotFoundError, NotADatabaseError, StoreError
from ..spec.endpoints import Endpoint
from ..spec.expand import PromptRecord, expand, hash_text
from ..spec.spec import RUN_FIELDS as SPEC_RUN_FIELDS
from ..spec.spec import Spec, canonical_json
from . import schema
from .conflicts import conflict_message
from .leases import lease_owner, owner_is_dead
from .rows import BatchRow, Charge, Claimed, DoneRow, JobRow, Outcome, PromptRow, Spend

# The rows are defined in rows.py; importing them from here keeps working.
__all__ = ["BatchRow", "Charge", "Claimed", "DoneRow", "JobRow", "Outcome", "PromptRow", "Spend", "Store"]

CREATE_CHUNK = 50_000  # rows per create transaction: the write lock is held for about a second at most
CREATE_PAUSE = 0.12  # seconds between a create's chunks (busy handlers poll every 100 ms)
CREATOR_STALLED = 60.0  # seconds a create in progress elsewhere may commit nothing before it is taken over
INSERT_BATCH = 5_000  # rows per executemany: a few MB of row tuples in memory at a time
BUSY_TIMEOUT_MS = 60_000
PATIENT_BUSY_MS = 2_000  # a run's store reports a lock held elsewhere this often while it waits it out
SQLITE_MAGIC = b"SQLite format 3\x00"
# Stored with a job's spec, not part of its identity: "name" and the spec's run fields (base_url, endpoints,
# rpm, tpm, max_cost, prices). Creating the same spec again with other values updates them.
RUN_FIELDS = ("name", *SPEC_RUN_FIELDS)


_NOT_A_DATABASE = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)  # "not a database", "malformed"


def _primary_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (extended codes carry it in their low byte)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _wal_mode(conn: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode = WAL`, waiting as long as the busy timeout. SQLite answers this pragma
    "database is locked" at once, without its busy handler, while another connection is switching a new
    file to WAL (two `create`s started together): so it is retried here, with a short backoff."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if _primary_code(exc) != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


class Store:
    """An open job database. Use as a context manager or call `close()`."""

    def __init__(
        self, path: str | Path, *, create: bool = True, on_locked: Callable[[float], None] | None = None,
        readonly: bool = False,
    ) -> None:
        """Open (and migrate) a job database. With `on_locked`, write transactions never give up on a lock
        another process holds: they wait on, calling `on_locked(seconds waited so far)` every few seconds
        (a run waits out a big create; a command gives up after the busy timeout). `readonly` (status,
        show, export) reads a database on read-only media too: results archived on a share or a snapshot."""
        self.path = str(path)
        self.on_locked = on_locked
        _check_file(self.path, create and not readonly)
        if readonly and self._open_readonly():
            return
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}", path=self.path) from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _wal_mode(self.conn)
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            schema.migrate(self.conn, self.path)
            if on_locked is not None:
                self.conn.execute(f"PRAGMA busy_timeout = {PATIENT_BUSY_MS}")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if _primary_code(exc) in _NOT_A_DATABASE:
                raise NotADatabaseError(
                    f"{self.path} is not a batch-prompt job database ({exc})", path=self.path
                ) from None
            raise StoreError(f"cannot use {self.path}: {exc}", path=self.path) from None
        except BaseException:
            self.conn.close()
            raise

    def _open_readonly(self) -> bool:
        """Open for reading only; False when the schema needs migrating first (then open as usual).

        `mode=ro` reads a WAL database while its `-shm` can be had; on read-only media it cannot, and a
        cleanly closed database (no write-ahead log left) is then read as `immutable` (no locks, no -shm)."""
        uri = Path(self.path).resolve().as_uri()
        try:
            self.conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None,
                                        timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                version = schema.current_version(self.conn, self.path)
            except sqlite3.OperationalError:
                self.conn.close()
                wal = Path(self.path + "-wal")
                if wal.exists() and wal.stat().st_size > 0:
                    raise StoreError(
                        f"cannot read {self.path}: its write-ahead log ({wal.name}) holds changes, and its folder "
                        "cannot be written: copy the database and its -wal file somewhere writable",
                        path=self.path) from None
                self.conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
                version = schema.current_version(self.conn, self.path)
        except sqlite3.DatabaseError as exc:
            if _primary_code(exc) in _NOT_A_DATABASE:
                raise NotADatabaseError(f"{self.path} is not a batch-prompt job database ({exc})",
                                        path=self.path) from None
            raise StoreError(f"cannot read {self.path}: {exc}", path=self.path) from None
        if version > schema.head():
            self.conn.close()
            schema.migrate_check(version, self.path)
        if version < schema.head():
            self.conn.close()
            return False
        return True

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (`BEGIN IMMEDIATE`), rolled back on any exception.

        SQLite failures (disk full, I/O error, a lock held past the busy timeout) become `StoreError`;
        the rollback keeps everything committed before intact.
        """
        with self.errors():
            self._begin()
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        if self.on_locked is None:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        started = time.monotonic()
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")  # waits up to PATIENT_BUSY_MS for the lock
                return
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) != sqlite3.SQLITE_BUSY:
                    raise
                self.on_locked(time.monotonic() - started)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite's exceptions into `StoreError` naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            kind = NotADatabaseError if _primary_code(exc) in _NOT_A_DATABASE else StoreError
            raise kind(f"{self.path}: {exc}", path=self.path) from None

    # --- jobs -------------------------------------------------------------------------------------

    def jobs(self) -> list[JobRow]:
        with self.errors():
            rows = self.conn.execute(
                "SELECT id, name, spec, api, prompts_per_request, base_url, state, n_prompts, created_at, mode,"
                " fresh FROM jobs ORDER BY id"
            ).fetchall()
        return [
            JobRow(id=r[0], name=r[1], spec=json.loads(r[2]), api=r[3], prompts_per_request=r[4], base_url=r[5],
                   state=r[6], n_prompts=r[7], created_at=r[8], mode=r[9], fresh=bool(r[10]))
            for r in rows
        ]

    def job(self, name: str) -> JobRow | None:
        return next((job for job in self.jobs() if job.name == name), None)

    def select(self, name: str | None) -> list[JobRow]:
        """Every job, or the one named; raises `JobNotFoundError` (naming the jobs there are) for another name."""
        jobs = self.jobs()
        chosen = [job for job in jobs if name is None or job.name == name]
        if not chosen and name is not None:
            known = ", ".join(repr(job.name) for job in jobs) or "none"
            raise JobNotFoundError(f"no job named {name!r} in {self.path} (jobs: {known})", name=name,
                                   path=self.path)
        return chosen

    def create_job(self, spec: Spec, owner: str | None = None, pause: float = CREATE_PAUSE, *,
                   mode: str | None = None, fresh: bool | None = None) -> tuple[JobRow, bool]:
        """Record a spec's job and all its prompts. Returns (job, created).

        `mode` and `fresh` (None: as they are) are the choices of the run about to send it (`run SPEC`),
        recorded in the transaction that makes the job visible (or, for a job already there, that updates
        its run fields): no kill, at any instant, leaves the job recorded without them.

        The same spec again is a no-op; the same name with another spec raises `JobConflictError`.
        The prompts are committed in chunks of `CREATE_CHUNK` rows (streamed by `executemany` batches,
        never all in memory), so a big create never holds the write lock for long and a run working in
        the same database goes on meanwhile. Until its last chunk the job is in state `creating`, under
        its creator's lease owner: no run, export or status counts it. A create that fails is undone; one
        that was killed (its creator dead) is undone and redone by the next create of the spec, and a
        second process creating the same spec at the same time waits for the first and finds the job (or,
        when the first has committed nothing for `CREATOR_STALLED` seconds, takes it over).
        Between chunks it pauses `pause` seconds, long enough for a writer waiting on the lock to get it.
        """
        identity = spec.identity()
        spec_hash = hash_text(canonical_json(identity))
        name = spec.name or f"job-{spec_hash[:12]}"
        stored = {"name": name, **identity, **spec.run_fields()}
        owner = owner or lease_owner()
        progress: tuple[Any, float] | None = None  # another creator's last row, and when it was first seen
        while True:
            with self.transaction() as conn:
                row = conn.execute("SELECT id, spec_hash, spec, state, creator FROM jobs WHERE name = ?",
                                   (name,)).fetchone()
                waiting = row is not None and row[4] and row[4] != owner and not owner_is_dead(row[4])
                if waiting and row is not None:  # a creator that commits nothing for long is gone too
                    last = conn.execute("SELECT max(id) FROM prompts WHERE job_id = ?", (row[0],)).fetchone()[0]
                    if progress is None or progress[0] != last:
                        progress = (last, time.monotonic())
                    elif time.monotonic() - progress[1] > CREATOR_STALLED:
                        waiting = False  # (in another container, or on another host: no way to ask)
                if row is not None and row[1] != spec_hash and (row[3] == "ready" or waiting):
                    raise JobConflictError(conflict_message(name, json.loads(row[2]), stored, RUN_FIELDS), name=name)
                if row is not None and row[3] == "ready":
                    old = json.loads(row[2])
                    if any(old.get(key) != stored[key] for key in RUN_FIELDS):  # where and how fast to run
                        conn.execute("UPDATE jobs SET spec = ?, base_url = ? WHERE id = ?",
                                     (canonical_json(stored), spec.base_url, row[0]))
                    if mode is not None or fresh is not None:
                        conn.execute(_SET_CHOICES, (mode, _flag(fresh), row[0]))
                    job = self.job(name)
                    assert job is not None
                    return job, False
                if row is None:
                    job_id = conn.execute(
                        "INSERT INTO jobs (name, spec_hash, spec, api, prompts_per_request, base_url, n_prompts,"
                        " created_at, state, creator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'creating', ?)",
                        (name, spec_hash, canonical_json(stored), spec.api, spec.prompts_per_request,
                         spec.base_url, spec.count_prompts(), _now_iso(), owner),
                    ).lastrowid
                    assert job_id is not None
                    break
                if not waiting:  # a create that was killed: this one takes its job over and starts again
                    conn.execute("UPDATE jobs SET creator = ? WHERE id = ?", (owner, row[0]))
            if waiting:
                time.sleep(0.2)  # another process is creating this very job: wait for it to finish
                continue
            self._delete_prompts(row[0])
            with self.transaction() as conn:
                conn.execute("DELETE FROM jobs WHERE id = ?", (row[0],))
        try:
            self._insert_prompts(job_id, expand(spec), pause)
            with self.transaction() as conn:
                conn.execute(_SET_CHOICES, (mode, _flag(fresh), job_id))
                conn.execute("UPDATE jobs SET state = 'ready', creator = NULL WHERE id = ?", (job_id,))
        except BaseException:
            with contextlib.suppress(Exception):  # undone; what cannot be is redone by the next create
                self._delete_prompts(job_id)
                with self.transaction() as conn:
                    conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            raise
        job = self.job(name)
        assert job is not None
        return job, True

    def _delete_prompts(self, job_id: int) -> None:
        """Delete a job's prompts a chunk per transaction (a big job's delete never holds the lock long)."""
        while True:
            with self.transaction() as conn:
                gone = conn.execute(
                    "DELETE FROM prompts WHERE id IN (SELECT id FROM prompts WHERE job_id = ? LIMIT ?)",
                    (job_id, CREATE_CHUNK)).rowcount
            if gone < CREATE_CHUNK:
                return

    def checkpoint(self) -> None:
        """Copy everything committed from the WAL into the database file itself (`create` does this
        before it links a new database into place). Raises `StoreError` when a reader holds it back."""
        with self.errors():
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise StoreError(f"{self.path}: the write-ahead log could not be checkpointed", path=self.path)

    def _insert_prompts(self, job_id: int, records: Iterable[PromptRecord], pause: float) -> None:
        now = time.time()
        sql = (
            "INSERT INTO prompts (job_id, hash, template_index, keywords_index, model_index, sample_index,"
            " model, template, keywords, request, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        rows = iter(records)
        while True:
            with self.transaction() as conn:
                written = 0
                batch: list[tuple[Any, ...]] = []
                for r in itertools.islice(rows, CREATE_CHUNK):
                    batch.append((job_id, r.hash, r.template_index, r.keywords_index, r.model_index,
                                  r.sample_index, r.model, r.template_json, r.keywords_json, r.request_json, now))
                    if len(batch) >= INSERT_BATCH:
                        conn.executemany(sql, batch)
                        written += len(batch)
                        batch.clear()
                conn.executemany(sql, batch)
                written += len(batch)
            if written < CREATE_CHUNK:
                return
            time.sleep(pause)  # SQLite's busy handler retries every 100 ms at most: a waiting writer gets in

    # --- status -----------------------------------------------------------------------------------

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

    def spend(self, job: JobRow) -> list[Spend]:
        """What the job has paid for, by model and mode (every response paid for, recorded or not)."""
        with self.errors():
            rows = self.conn.execute(
                "SELECT model, mode, requests, answers, prompt_tokens, completion_tokens FROM spend"
                " WHERE job_id = ? ORDER BY model, mode",
                (job.id,),
            ).fetchall()
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

    def unfinished_by_model(self, job: JobRow) -> dict[tuple[str, str], int]:
        """{(model, status): count} of the job's rows not done, from the unfinished index: O(rows not done)."""
        with self.errors():
            rows = self.conn.execute(
                "SELECT model, status, count(*) FROM prompts INDEXED BY prompts_unfinished"
                " WHERE job_id = ? AND status != 'done' GROUP BY model, status",
                (job.id,),
            ).fetchall()
        return {(model, status): count for model, status, count in rows}

    def rows_by_model(self, job: JobRow) -> dict[str, int]:
        """{model: rows} of a job, counted (O(all rows): for a job whose spec does not say)."""
        with self.errors():
            rows = self.conn.execute(
                "SELECT model, count(*) FROM prompts WHERE job_id = ? GROUP BY model", (job.id,)
            ).fetchall()
        return dict(rows)

    def cached_by_model(self, job: JobRow) -> dict[str, int]:
        """{model: rows answered from the cache}, from the `prompts_cached` index: O(cached rows)."""
        with self.errors():
            rows = self.conn.execute(
                "SELECT model, count(*) FROM prompts INDEXED BY prompts_cached WHERE job_id = ? AND cached = 1"
                " GROUP BY model",
                (job.id,),
            ).fetchall()
        return dict(rows)

    def error_groups(self, job: JobRow) -> list[tuple[str, int, str]]:
        """(error kind, failed rows, the first one's message), most frequent first. O(failed rows)."""
        with self.errors():
            rows = self.conn.execute(
                # a bare column beside min(): SQLite takes it from the row holding the minimum
                "SELECT coalesce(error_kind, 'error'), count(*), coalesce(last_error, ''), min(id) FROM prompts"
                " WHERE job_id = ? AND status != 'done' AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC, 1",
                (job.id,),
            ).fetchall()
        return [(kind, count, example) for kind, count, example, _ in rows]

    def prompts(self, job: JobRow, status: str | None = None, limit: int = 20) -> list[PromptRow]:
        """Up to `limit` of the job's rows in order, of one status or any (for `show`)."""
        # a status other than done reads the unfinished index; `status != 'done'` lets SQLite use it
        where, params = ("", ()) if status is None else (" AND status != 'done' AND status = ?", (status,))
        if status == "done":
            where, params = " AND status = 'done'", ()
        with self.errors():
            rows = self.conn.execute(
                "SELECT id, hash, model, template_index, keywords_index, model_index, sample_index, template,"
                " keywords, request, status, attempts, error_kind, last_error, response, cached FROM prompts"
                f" WHERE job_id = ?{where} ORDER BY id LIMIT ?",
                (job.id, *params, limit),
            ).fetchall()
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
        with self.errors():
            row = self.conn.execute(
                "SELECT count(*) FROM prompts WHERE job_id = ? AND model = ? AND status != 'done'"
                " AND status = 'pending'",
                (job.id, model),
            ).fetchone()
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
                "INSERT INTO spend (job_id, model, mode, requests, answers, prompt_tokens, completion_tokens)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, model, mode) DO UPDATE SET"
                " requests = requests + excluded.requests, answers = answers + excluded.answers,"
                " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens",
                [(c.job_id, c.model, c.mode, c.requests, c.answers, c.prompt_tokens, c.completion_tokens)
                 for c in charges if c.row_id is None or c.row_id in done],
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

    # --- batches (the Batch API mode) ------------------------------------------------------------

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
        with self.errors():
            rows = self.conn.execute(
                "SELECT id, job_id, model, endpoint, token, state, status, input_file_id, batch_id, output_file_id,"
                " error_file_id, requests, completed, failed, error, files_left, created_at, submitted_at,"
                f" finished_at, base_url, api_key_env FROM batches WHERE {where} ORDER BY id",
                params,
            ).fetchall()
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
        with self.errors():
            rows = self.conn.execute(
                "SELECT id, job_id, hash, model, request, attempts FROM prompts WHERE batch = ? AND status = 'running'"
                " ORDER BY id",
                (batch_id,),
            ).fetchall()
        return [Claimed(*row) for row in rows]

    def in_batches(self, job: JobRow) -> int:
        """How many of the job's prompts are held by open batches."""
        with self.errors():
            row = self.conn.execute(
                "SELECT count(*) FROM prompts WHERE batch IN (SELECT id FROM batches WHERE job_id = ?"
                " AND state NOT IN ('collected', 'returned')) AND status = 'running'",
                (job.id,),
            ).fetchone()
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

    def set_run_choices(self, job: JobRow, mode: str, fresh: bool, base_url: str | None = None) -> None:
        """Remember how the job was last run: its mode, whether it asks for fresh samples, and (when given)
        the endpoint it was sent to (the spec's `base_url` run field)."""
        with self.transaction() as conn:
            conn.execute(_SET_CHOICES, (mode, int(fresh), job.id))
            if base_url is not None:
                spec = {**job.spec, "base_url": base_url}
                conn.execute("UPDATE jobs SET spec = ?, base_url = ? WHERE id = ?",
                             (canonical_json(spec), base_url, job.id))

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

    def iter_done(self, job: JobRow, chunk: int = 2000) -> Iterator[DoneRow]:
        """The job's done rows in order, streamed."""
        last = 0
        while True:
            with self.errors():
                rows = self.conn.execute(
                    "SELECT id, hash, model, template, keywords, request, response, template_index,"
                    " keywords_index, model_index, sample_index FROM prompts"
                    " WHERE job_id = ? AND id > ? AND status = 'done' ORDER BY id LIMIT ?",
                    (job.id, last, chunk),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield DoneRow(*row)
            last = rows[-1][0]


def _check_file(path: str, create: bool) -> None:
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"{path} is a directory, not a job database", path=path)
    if not p.exists():
        if not create:
            raise StoreError(f"no job database at {path}", path=path)
        if not p.parent.exists():
            raise StoreError(f"cannot create {path}: folder {p.parent} does not exist", path=path)
        return
    try:
        with p.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", path=path) from None
    if not head and not create:
        raise NotADatabaseError(f"{path} is not a batch-prompt job database (an empty file)", path=path)
    if head and head != SQLITE_MAGIC:
        raise NotADatabaseError(f"{path} is not a batch-prompt job database (not an SQLite file)", path=path)


_SET_CHOICES = "UPDATE jobs SET mode = coalesce(?, mode), fresh = coalesce(?, fresh) WHERE id = ?"


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
