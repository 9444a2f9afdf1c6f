"""Batch API mode: a job's unfinished prompts go to the provider's batch engine, through the same job table.

Per (job, model) a `Lane` in batch mode (`lanes.py`) submits, polls and collects, with the openai SDK's own
`files` and `batches` resources. It shares with live mode everything but the transport: the lane, its
intake (claims and leases, the one cache read), the endpoint's state and how it stops, the retry
decision, the ledger (answers cached, then committed with their charges, at the batch price), status and
export.

Never twice, across kills: a batch is recorded (`Store.open_batch`, with a random token, in one
transaction that moves its prompts into it) before anything is uploaded. The file is uploaded under a
name holding the token, and the batch created with the token in its metadata; each step is recorded as
it returns. A process killed at any instant is followed by one that finds what exists (the file by its
name, the batch by its metadata) and goes on from there, never making a second batch for those prompts.
Prompts in a batch have no lease expiry: no resume takes them; only collecting the batch settles them.

Collecting: result lines come in any order and are joined on `custom_id`. Each is judged like a live
answer (`failures.classify_line`): an answer is recorded exactly as a live one would be; a permanent
refusal fails its prompt with the message kept; expired, cancelled and transient lines send their
prompt back to pending, to a later batch, until its attempts run out. A batch the provider refuses
(validation) returns its prompts to pending with the reason; the same reason twice in a row stops the
job (exit 2) instead of looping. Collecting again after a kill records nothing twice and pays nothing
twice (a line's charge is committed with its row's answer only). Files no batch needs are deleted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..errors import BatchPromptError, CacheError, ConfigError, StoreError
from ..options import RunOptions
from ..results.responses import as_chat
from ..spec import tokens
from ..store.asyncstore import AsyncStore
from ..store.database import BatchRow, Claimed, Store
from ..store.leases import LeaseKeeper
from .batchcalls import FILE_TIMEOUT, BatchCalls, Halted
from .batchfile import line_size, read_results
from .client import split_choices
from .failures import Failure, MalformedResponse, Verdict, classify_line, redact
from .lanes import Intake, Lane
from .ledger import Ledger
from .retry import RetryPolicy

ENDED = ("completed", "failed", "expired", "cancelled")
COLLECT_CHUNK = 2_000  # results cached in one transaction and committed together while collecting
MAX_POLL = 50.0  # seconds: a finished batch is noticed within a minute


class BatchEngine(BatchCalls):
    """Drives the batch lanes of a run: see the module docstring."""

    def __init__(
        self, lanes: list[Lane], *, store: AsyncStore, ledger: Ledger, leases: LeaseKeeper, owner: str,
        opts: RunOptions, policy: RetryPolicy, note: Callable[[str], None],
    ) -> None:
        self.lanes, self.store, self.ledger, self.leases, self.owner = lanes, store, ledger, leases, owner
        self.opts, self.policy, self.note = opts, policy, note
        self.intake = Intake(store, ledger, leases, owner, opts.lease_seconds)
        self.stopping = False
        self.submitted = 0
        self.max_poll = MAX_POLL  # the longest wait between two looks at the open batches
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    def _halted(self, lane: Lane) -> bool:
        return self.stopping or lane.state.fatal is not None or self.ledger.failure is not None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for lane in self.lanes:
                group.create_task(self._drive(lane), name=f"batch-{lane.job.name}-{lane.model}")

    def health(self) -> list[str]:
        batches = [b for lane in self.lanes for b in lane.open.values()]
        if not batches:
            return []
        running = sum(1 for b in batches if b.status in ("validating", "in_progress", "finalizing"))
        done = sum(b.completed + b.failed for b in batches)
        total = sum(b.requests for b in batches)
        return [f"batches: {self.submitted} submitted, {len(batches)} open ({running} in progress), "
                f"{done:,} of {total:,} requests done"]

    # --- the loop of a lane --------------------------------------------------------------------------

    async def _drive(self, lane: Lane) -> None:
        try:
            for batch in await self._open_batches(lane):
                if lane.budget is not None:  # what an open batch may still cost counts against the budget
                    for row in await self.store.run(functools.partial(Store.batch_rows, batch_id=batch.id)):
                        self._reserve(lane, row)
                    lane.reserved[batch.id] = lane.reserved.pop(0, 0.0)
                await self._recover(lane, batch)
            delay = self.opts.poll
            while not self._halted(lane):
                failed_submit = False
                while lane.submit and not self._halted(lane):
                    try:
                        if not await self._submit(lane):
                            break
                    except (Halted, StoreError):
                        raise
                    except BatchPromptError as exc:  # the provider unreachable for a while: submit again later
                        if lane.state.fatal is not None or self.ledger.failure is not None:
                            raise Halted from None
                        self.note(f"could not submit a batch of {lane.job.name}: {exc}; trying again")
                        failed_submit = True
                        break
                if not self.opts.wait:  # submitted and recorded: a later resume collects
                    return
                changed = False
                for batch in list(lane.open.values()):
                    try:
                        changed |= await self._poll(lane, batch)
                    except Halted:
                        raise
                    except BatchPromptError as exc:  # the provider unreachable for a while: poll again later
                        if lane.state.fatal is not None or self.ledger.failure is not None:
                            raise Halted from None
                        self.note(f"could not look at batch {batch.id}: {exc}; trying again")
                if not lane.open and not failed_submit:  # (after a failed submit: wait, then try again)
                    reached = lane.budget is not None and lane.budget.reached
                    if lane.submit and not reached and await self.store.pending(lane.job, lane.model):
                        continue  # prompts came back (expired, refused): they go in a new batch
                    return
                delay = self.opts.poll if changed else min(self.max_poll, delay * 1.5)
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        except Halted:
            return
        except StoreError as exc:  # the job database failed (disk full, read-only): the run stops, exit 2
            self.ledger.stop_with(exc)

    # --- submitting ----------------------------------------------------------------------------------

    async def _submit(self, lane: Lane) -> bool:
        """Put the next pending prompts in a new batch; False when there were none (or the budget is spent)."""
        if lane.budget is not None and lane.budget.reached:
            return False
        rows = await self.intake.take(lane, self.opts.batch_size)
        if rows is None:
            return False
        keep: list[Claimed] = []
        size, seen = 0, set()
        for i, row in enumerate(rows):
            grows = 0 if row.hash in seen else line_size(row, lane.job.api)
            if keep and size + grows > self.opts.batch_bytes:
                await self.intake.hand_back(rows[i:])
                break
            if lane.budget is not None and row.hash not in seen and not self._reserve(lane, row):
                await self.intake.hand_back(rows[i:])  # past the budget: stays pending
                break
            keep.append(row)
            seen.add(row.hash)
            size += grows
        if not keep:
            await self.ledger.flush()
            return not (lane.budget is not None and lane.budget.reached)
        batch = await self.store.run(lambda s: s.open_batch(
            lane.job, lane.model, lane.state.endpoint, secrets.token_hex(8), [row.id for row in keep], self.owner))
        self.intake.drop(keep)  # the batch holds them now, not this process
        lane.open[batch.id] = batch
        lane.reserved[batch.id] = lane.reserved.pop(0, 0.0)
        self.ledger.tally(lane.job.id, lane.model).requests += len(seen)
        await self._upload(lane, batch)
        await self._create(lane, lane.open[batch.id])
        self.submitted += 1
        self.note(f"submitted batch {batch.id} of {lane.job.name}: {len(seen):,} requests to {lane.model}")
        return True

    def _reserve(self, lane: Lane, row: Claimed) -> bool:
        """Reserve a line's worst case at the batch price (held under key 0 until its batch has an id)."""
        assert lane.budget is not None
        prompt, completion = tokens.budget_parts(json.loads(row.request))
        got = lane.budget.reserve(lane.model, "batch", prompt, completion, wait=False)
        if got is None:
            return False
        lane.reserved[0] = lane.reserved.get(0, 0.0) + got
        return True

    # --- waiting and collecting ------------------------------------------------------------------------

    async def _poll(self, lane: Lane, batch: BatchRow) -> bool:
        """Look at an open batch; collect it when it has ended. True when something changed. A batch not
        yet created (its upload or create failed for a while) is brought up to date first."""
        if batch.batch_id is None:
            await self._recover(lane, batch)
            return True
        batch_id = batch.batch_id
        seen = await self._api(lane, lambda: self._sdk(lane).batches.retrieve(batch_id))
        counts = seen.request_counts
        fields = {"status": seen.status, "completed": counts.completed if counts else 0,
                  "failed": counts.failed if counts else 0, "output_file_id": seen.output_file_id,
                  "error_file_id": seen.error_file_id}
        changed = any(getattr(batch, name) != value for name, value in fields.items())
        if changed:
            await self._set(lane, batch, **fields)
        if seen.status in ENDED:
            await self._collect(lane, lane.open[batch.id], seen)
            return True
        return changed

    async def _collect(self, lane: Lane, batch: BatchRow, seen: Any) -> None:
        if seen.status == "failed":
            errors = seen.errors.data if seen.errors and seen.errors.data else []
            reason = "; ".join(f"{e.message}" + (f" (line {e.line})" if e.line else "") for e in errors[:3])
            reason = reason or "the provider refused the batch"
            await self._delete_files(lane, batch, [batch.input_file_id])
            back = await self.store.run(lambda s: s.return_batch(batch.id, f"batch refused: {reason}"))
            lane.open.pop(batch.id, None)
            self._unreserve(lane, batch.id)
            self.note(f"batch {batch.id} of {lane.job.name} was refused: {reason}; its {back} prompts are pending")
            if lane.last_refusal == reason:
                lane.state.refuse(ConfigError(
                    f"the Batch API refused two batches of {lane.job.name!r} ({lane.model}) for the same reason: "
                    f"{reason}", endpoint=lane.state.endpoint.base_url))
            lane.last_refusal = reason
            return
        rows = await self.store.run(lambda s: s.batch_rows(batch.id))
        lines: dict[int, str] = {}
        for file_id in (seen.output_file_id, seen.error_file_id) if rows else ():  # none: settled before a kill
            if file_id:
                async def download(file_id: str = file_id) -> int:
                    async with self._sdk(lane).files.with_streaming_response.content(
                            file_id, timeout=FILE_TIMEOUT) as response:
                        return await read_results(response.iter_lines(), lines)
                await self._api(lane, download)
        answered: dict[str, str] = {}  # the answers of requests that several rows ask (one line for all)
        shared = {h for h, count in collections.Counter(row.hash for row in rows).items() if count > 1}
        unanswered = []
        for start in range(0, len(rows), COLLECT_CHUNK):
            try:
                with lane.cache.transaction():  # the chunk's answers cached at once, before they are committed
                    for row in rows[start:start + COLLECT_CHUNK]:
                        text = lines.pop(row.id, None)
                        if text is None:
                            unanswered.append(row)
                        else:
                            self._settle(lane, batch, row, json.loads(text), answered, shared)
            except CacheError as exc:  # the database still keeps them (their outcomes hold the answers)
                self.ledger.stop_with(exc)
            if not await self.ledger.flush():
                raise Halted
        for row in unanswered:
            if row.hash in answered:
                self.ledger.shared(row, answered[row.hash])
            else:
                self._again(lane, batch, row, Failure(
                    Verdict.RETRY, "batch no result", f"batch {batch.batch_id} ended ({seen.status}) without it",
                    outage=seen.status in ("expired", "cancelled")))
        if not await self.ledger.flush():
            raise Halted
        await self._delete_files(lane, batch, [batch.input_file_id, seen.output_file_id, seen.error_file_id])
        await self.store.run(lambda s: s.update_batch(batch.id, state="collected", finished_at=time.time()))
        lane.open.pop(batch.id, None)
        self._unreserve(lane, batch.id)
        self.note(f"collected batch {batch.id} of {lane.job.name} ({seen.status}): {len(rows) - len(unanswered):,} "
                  f"results, {len(unanswered):,} prompts without one")

    def _settle(self, lane: Lane, batch: BatchRow, row: Claimed, line: Any, answered: dict[str, str],
                shared: set[str]) -> None:
        failure = classify_line(line) if isinstance(line, dict) else Failure(Verdict.RETRY, "MalformedResponse", "")
        if failure is None:
            body = line["response"].get("body")
            view = as_chat(body)  # a Responses API answer is read in the chat shape, and kept as it came
            n = int(json.loads(row.request).get("n") or 1)
            try:
                parts = split_choices(view, n, 1)
            except MalformedResponse as exc:
                parts = [None]
                failure = Failure(Verdict.RETRY, "MalformedResponse", str(exc))
            if parts[0] is not None:
                response = body
                if view is body:  # chat, completions: the answer with its own choices
                    response = {key: value for key, value in body.items() if key != "choices"}
                    response["choices"] = parts[0]
                text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
                self.ledger.paid(lane.job.id, lane.model, "batch", 1, view.get("usage"), row_id=row.id)
                tag = self.ledger.cache_tag(lane.job, row.id)
                self.ledger.answered(row, text, lane.endpoint.identity, lane.cache, tag, 1)
                if row.hash in shared:
                    answered[row.hash] = text
                return
            failure = failure or Failure(Verdict.RETRY, "MalformedResponse", f"the answer lacks some of {n} choices")
        self._again(lane, batch, row, failure)

    def _again(self, lane: Lane, batch: BatchRow, row: Claimed, failure: Failure) -> None:
        """A line that is not an answer: fail its prompt, or send it back to pending for a later batch."""
        message = redact(failure.message, lane.state.endpoint.api_key)
        spent = 0 if failure.outage else 1  # expired or cancelled by the provider: never run, no attempt used
        if failure.verdict is not Verdict.FATAL and self.policy.decide(failure, row.attempts + spent) is None:
            if failure.verdict.retryable:
                message = f"gave up after {row.attempts + 1} attempts: {message}"
            self.ledger.failed(row, lane.endpoint.identity, message, failure.kind, 1, owner=batch.owner)
            return
        self.ledger.retry(row, message, failure.kind, owner=batch.owner, attempts=spent)
        if failure.verdict is Verdict.FATAL:
            lane.state.refused_by_api(message, failure.status)

    async def take_back(self, lane: Lane, asked: set[str]) -> int:
        """Auto mode's take-back (`auto.Watch`): submit nothing more for the lane, and ask the provider to
        cancel each of its open batches not asked before (`asked`, their batch ids, grows); their ends are
        collected as any batch's: what they completed recorded, the rest pending again. Returns how many
        were asked now."""
        lane.submit = False
        now = 0
        for batch in list(lane.open.values()):
            if batch.batch_id is None or batch.batch_id in asked or batch.status in ENDED:
                continue
            asked.add(batch.batch_id)
            cancel = functools.partial(self._sdk(lane).batches.cancel, batch.batch_id)
            with contextlib.suppress(BatchPromptError, Halted):  # ended meanwhile (409), or the endpoint stopped
                await self._api(lane, cancel)
                now += 1
        self._wake.set()  # look at them now
        return now

    async def cancel(self, lane: Lane) -> tuple[int, int]:
        """Ask the provider to cancel every open batch of the lane; returns how many were asked, and how many
        were being cancelled already (asked before)."""
        asked = already = 0
        for batch in await self._open_batches(lane):
            try:
                await self._recover(lane, batch)
            except Halted:  # the endpoint refused (or has no Batch API): the run says so
                return asked, already
            if batch.id not in lane.open:
                continue
            batch = lane.open[batch.id]
            if batch.batch_id is not None:  # as it is now (someone may have asked already)
                retrieve = functools.partial(self._sdk(lane).batches.retrieve, batch.batch_id)
                with contextlib.suppress(BatchPromptError):
                    seen = await self._api(lane, retrieve)
                    await self._set(lane, batch, status=seen.status)
                    batch = lane.open[batch.id]
            already += batch.status == "cancelling"
            if batch.batch_id is not None and batch.status not in (*ENDED, "cancelling"):
                cancel = functools.partial(self._sdk(lane).batches.cancel, batch.batch_id)
                try:
                    seen = await self._api(lane, cancel)
                except BatchPromptError:
                    continue  # it ended meanwhile (409): collecting it is all there is to do
                await self._set(lane, batch, status=seen.status)
                asked += 1
        return asked, already
