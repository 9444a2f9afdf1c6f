"""The jobs table: recording a spec's job and its prompts, finding jobs, and a job's run choices."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import time
from collections.abc import Iterable
from typing import Any

from ..errors import JobConflictError, JobNotFoundError
from ..spec.expand import PromptRecord, expand, hash_text
from ..spec.spec import RUN_FIELDS as SPEC_RUN_FIELDS
from ..spec.spec import Spec, canonical_json
from .conflicts import conflict_message
from .connection import Connection
from .leases import lease_owner, owner_is_dead
from .rows import JobRow

CREATE_CHUNK = 50_000  # rows per create transaction: the write lock is held for about a second at most
CREATE_PAUSE = 0.12  # seconds between a create's chunks (busy handlers poll every 100 ms)
CREATOR_STALLED = 60.0  # seconds a create in progress elsewhere may commit nothing before it is taken over
INSERT_BATCH = 5_000  # rows per executemany: a few MB of row tuples in memory at a time
# Stored with a job's spec, not part of its identity: "name" and the spec's run fields (base_url, endpoints,
# rpm, tpm, max_cost, prices). Creating the same spec again with other values updates them.
RUN_FIELDS = ("name", *SPEC_RUN_FIELDS)


class Jobs(Connection):
    """The jobs of a database, and creating one."""


    def jobs(self) -> list[JobRow]:
        rows = self.query(
            "SELECT id, name, spec, api, prompts_per_request, base_url, state, n_prompts, created_at, mode,"
            " fresh, deadline_at, plan FROM jobs ORDER BY id"
        )
        return [
            JobRow(id=r[0], name=r[1], spec=json.loads(r[2]), api=r[3], prompts_per_request=r[4], base_url=r[5],
                   state=r[6], n_prompts=r[7], created_at=r[8], mode=r[9], fresh=bool(r[10]), deadline_at=r[11],
                   plan=None if r[12] is None else json.loads(r[12]))
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
                   mode: str | None = None, fresh: bool | None = None,
                   deadline_at: float | None = None) -> tuple[JobRow, bool]:
        """Record a spec's job and all its prompts. Returns (job, created).

        `mode`, `fresh` and `deadline_at` (None: as they are; mode "auto" keeps the lane and sets the
        deadline, "live" or "batch" clears it) are the choices of the run about to send it (`run SPEC`),
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
                        _set_choices(conn, row[0], mode, fresh, deadline_at)
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
                _set_choices(conn, job_id, mode, fresh, deadline_at)
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

    def set_run_choices(self, job: JobRow, mode: str, fresh: bool, base_url: str | None = None,
                        deadline_at: float | None = None, plan: dict[str, Any] | None = None) -> None:
        """Remember how the job was last run: its mode, whether it asks for fresh samples, and (when given)
        the endpoint it was sent to (the spec's `base_url` run field). Auto mode (`plan` given): `mode` is
        the plan's lane, and the deadline and plan are kept with it; without a plan they are cleared."""
        with self.transaction() as conn:
            conn.execute(_SET_CHOICES, (mode, int(fresh), job.id))
            conn.execute("UPDATE jobs SET deadline_at = ?, plan = ? WHERE id = ?",
                         (deadline_at if plan is not None else None,
                          None if plan is None else canonical_json(plan), job.id))
            if base_url is not None:
                spec = {**job.spec, "base_url": base_url}
                conn.execute("UPDATE jobs SET spec = ?, base_url = ? WHERE id = ?",
                             (canonical_json(spec), base_url, job.id))

    def set_plan(self, job: JobRow, plan: dict[str, Any]) -> None:
        """Keep an auto job's plan (with the rates its runs learned) for status and the next plan."""
        with self.transaction() as conn:
            conn.execute("UPDATE jobs SET plan = ? WHERE id = ? AND deadline_at IS NOT NULL",
                         (canonical_json(plan), job.id))


_SET_CHOICES = "UPDATE jobs SET mode = coalesce(?, mode), fresh = coalesce(?, fresh) WHERE id = ?"


def _set_choices(conn: Any, job_id: int, mode: str | None, fresh: bool | None, deadline_at: float | None) -> None:
    """A run's choices: "auto" sets the deadline and leaves the lane to the runner's plan; "live" or
    "batch" clear a deadline."""
    conn.execute(_SET_CHOICES, (None if mode == "auto" else mode, _flag(fresh), job_id))
    if mode == "auto" and deadline_at is not None:
        conn.execute("UPDATE jobs SET deadline_at = ? WHERE id = ?", (deadline_at, job_id))
    elif mode in ("live", "batch"):
        conn.execute("UPDATE jobs SET deadline_at = NULL, plan = NULL WHERE id = ?", (job_id,))


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
