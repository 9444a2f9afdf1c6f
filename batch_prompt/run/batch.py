"""Batch API mode: a job's unfinished prompts go to the provider's batch engine, through the same job table.

Per (job, model) a `BatchLane` submits, polls and collects, with the openai SDK's own `files` and
`batches` resources. It shares with live mode everything but the transport: claims and leases, the
cache, the ledger (answers cached, then committed with their charges, at the batch price), status and
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BatchPromptError, CacheError, ConfigError, FatalAPIError, RetryExhausted, StoreError
from ..options import RunOptions
from ..spec import tokens
from ..store.asyncstore import AsyncStore
from ..store.cache import ResponseCache
from ..store.database import BatchRow, Claimed, JobRow, Store
from ..store.leases import LeaseKeeper
from .batchfile import URLS, line_size, read_results, write_input
from .budget import Budget
from .client import ApiClient, split_choices
from .failures import Failure, MalformedResponse, Verdict, classify, classify_line, redact
from .ledger import Ledger
from .live import EndpointState
from .retry import RetryPolicy

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
ENDED = ("completed", "failed", "expired", "cancelled")
COLLECT_CHUNK = 2_000  # results cached in one transaction and committed together while collecting
MAX_POLL = 50.0  # seconds: a finished batch is noticed within a minute
FILE_TIMEOUT = 900.0  # seconds an upload or download of up to 200 MB may take


@dataclass(eq=False)
class BatchLane:
    """One job's prompts for one model, at its endpoint, in batch mode (`submit`: False collects only)."""

    job: JobRow
    model: str
    state: EndpointState
    client: ApiClient
    cache: ResponseCache
    submit: bool
    budget: Budget | None = None
    last_refusal: str | None = None
    open: dict[int, BatchRow] = field(default_factory=dict)
    reserved: dict[int, float] = field(default_factory=dict)  # an open batch's worst case, held in the budget

    @property
    def endpoint(self) -> str:
        return self.state.endpoint.identity


class _Halted(Exception):
    """The lane, or the run, stops: nothing more is submitted or awaited."""


class _NoBatchAPI(_Halted):
    """The endpoint has no Files/Batch API: a batch being prepared there cannot have an uploaded file."""


class BatchEngine:
    """Drives the batch lanes of a run: see the module docstring."""

    def __init__(
        self, lanes: list[BatchLane], *, store: AsyncStore, ledger: Ledger, leases: LeaseKeeper, owner: str,
        opts: RunOptions, policy: RetryPolicy, note: Callable[[str], None],
    ) -> None:
        self.lanes, self.store, self.ledger, self.leases, self.owner = lanes, store, ledger, leases, owner
        self.opts, self.policy, self.note = opts, policy, note
        self.stopping = False
        self.submitted = 0
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    def _halted(self, lane: BatchLane) -> bool:
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

    async def _drive(self, lane: BatchLane) -> None:
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
                    except (_Halted, StoreError):
                        raise
                    except BatchPromptError as exc:  # the provider unreachable for a while: submit again later
                        if lane.state.fatal is not None or self.ledger.failure is not None:
                            raise _Halted from None
                        self.note(f"could not submit a batch of {lane.job.name}: {exc}; trying again")
                        failed_submit = True
                        break
                if not self.opts.wait:  # submitted and recorded: a later resume collects
                    return
                changed = False
                for batch in list(lane.open.values()):
                    try:
                        changed |= await self._poll(lane, batch)
                    except _Halted:
                        raise
                    except BatchPromptError as exc:  # the provider unreachable for a while: poll again later
                        if lane.state.fatal is not None or self.ledger.failure is not None:
                            raise _Halted from None
                        self.note(f"could not look at batch {batch.id}: {exc}; trying again")
                if not lane.open and not failed_submit:  # (after a failed submit: wait, then try again)
                    reached = lane.budget is not None and lane.budget.reached
                    if lane.submit and not reached and await self.store.pending(lane.job, lane.model):
                        continue  # prompts came back (expired, refused): they go in a new batch
                    return
                delay = self.opts.poll if changed else min(MAX_POLL, delay * 1.5)
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        except _Halted:
            return
        except StoreError as exc:  # the job database failed (disk full, read-only): the run stops, exit 2
            self.ledger.stop_with(exc)

    async def _open_batches(self, lane: BatchLane) -> list[BatchRow]:
        batches = await self.store.batches(lane.job)
        mine = [b for b in batches if b.model == lane.model and b.endpoint == lane.endpoint]
        for settled in mine:  # files a process killed while deleting them left behind
            if settled.state in ("collected", "returned") and settled.files_left:
                await self._delete_files(lane, settled, [settled.input_file_id, settled.output_file_id,
                                                        settled.error_file_id])
        lane.open = {b.id: b for b in mine if b.state not in ("collected", "returned")}
        return list(lane.open.values())

    async def _api(self, lane: BatchLane, call: Callable[[], Awaitable[T]], first: bool = False) -> T:
        """A files/batches call, retried as live calls are; a refusal of the run stops the lane. `first`: a
        call any server with the Batch API answers (files.create, files.list), so a 404 or 405 means the
        server has none (llama.cpp's): `_NoBatchAPI`."""
        import openai  # imported here, not on the live path (`ApiClient.sdk` imports it for these calls)

        state = lane.state

        async def attempt() -> T:
            try:
                result = await call()
            except openai.APIConnectionError as exc:  # before any answer, a few make the endpoint wrong
                state.could_not_connect(redact(classify(exc).message, state.endpoint.api_key))
                if state.fatal is not None:
                    raise _Halted from None
                raise
            except openai.APIStatusError:
                state.reached = True
                raise
            state.reached = True
            return result

        try:
            return await self.policy.call(attempt, asyncio.sleep)
        except _Halted:
            raise
        except Exception as exc:
            if isinstance(exc, BatchPromptError) and not isinstance(exc, RetryExhausted):
                raise
            failure = classify(exc)
            message = redact(failure.message, lane.state.endpoint.api_key)
            if first and failure.status in (404, 405):  # a server without the Batch API
                if lane.state.fatal is None:
                    lane.state.fatal = FatalAPIError(
                        f"{lane.state.endpoint.base_url} has no Batch API (it answered {message}): "
                        "run with --mode live", status_code=failure.status, endpoint=lane.state.endpoint.base_url)
                raise _NoBatchAPI from None
            if failure.verdict is Verdict.FATAL and lane.state.fatal is None:
                lane.state.fatal = FatalAPIError(
                    f"the API refused the run at {lane.state.endpoint.base_url}: {message}",
                    status_code=failure.status, endpoint=lane.state.endpoint.base_url)
                raise _Halted from None
            if failure.verdict is Verdict.LOCAL:
                raise
            raise BatchPromptError(f"the Batch API call failed at {lane.state.endpoint.base_url}: {message}",
                                   endpoint=lane.state.endpoint.base_url) from None

    def _sdk(self, lane: BatchLane) -> openai.AsyncOpenAI:
        return lane.client.sdk

    # --- submitting ----------------------------------------------------------------------------------

    async def _submit(self, lane: BatchLane) -> bool:
        """Put the next pending prompts in a new batch; False when there were none (or the budget is spent)."""
        if lane.budget is not None and lane.budget.reached:
            return False
        wall = time.time()
        rows = await self.store.claim(lane.job, lane.model, self.owner, self.opts.batch_size,
                                      self.opts.lease_seconds)
        if not rows:
            return False
        self.leases.claimed([row.id for row in rows], wall)
        self.ledger.claim(rows)
        keep: list[Claimed] = []
        size, seen = 0, set()
        for i, row in enumerate(rows):
            if self.ledger.from_cache(lane.job, row, lane.cache, "batch"):
                continue
            grows = 0 if row.hash in seen else line_size(row, lane.job.api)
            if keep and size + grows > self.opts.batch_bytes:
                await self._hand_back(rows[i:])
                break
            if lane.budget is not None and row.hash not in seen and not self._reserve(lane, row):
                await self._hand_back(rows[i:])  # past the budget: stays pending
                break
            keep.append(row)
            seen.add(row.hash)
            size += grows
        if not keep:
            await self.ledger.flush()
            return not (lane.budget is not None and lane.budget.reached)
        batch = await self.store.run(lambda s: s.open_batch(
            lane.job, lane.model, lane.state.endpoint, secrets.token_hex(8), [row.id for row in keep], self.owner))
        for row in keep:
            self.ledger.lose(row)  # the batch holds it now, not this process
        self.leases.released(row.id for row in keep)
        lane.open[batch.id] = batch
        lane.reserved[batch.id] = lane.reserved.pop(0, 0.0)
        self.ledger.tally(lane.job.id, lane.model).requests += len(seen)
        await self._upload(lane, batch)
        await self._create(lane, lane.open[batch.id])
        self.submitted += 1
        self.note(f"submitted batch {batch.id} of {lane.job.name}: {len(seen):,} requests to {lane.model}")
        return True

    def _reserve(self, lane: BatchLane, row: Claimed) -> bool:
        """Reserve a line's worst case at the batch price (held under key 0 until its batch has an id)."""
        assert lane.budget is not None
        prompt, completion = tokens.budget_parts(json.loads(row.request))
        got = lane.budget.reserve(lane.model, "batch", prompt, completion, wait=False)
        if got is None:
            return False
        lane.reserved[0] = lane.reserved.get(0, 0.0) + got
        return True

    def _unreserve(self, lane: BatchLane, batch_id: int) -> None:
        if lane.budget is not None:
            lane.budget.release(lane.reserved.pop(batch_id, 0.0))

    async def _hand_back(self, rows: list[Claimed]) -> None:
        await self.store.release([row.id for row in rows], self.owner)
        for row in rows:
            self.ledger.lose(row)
        self.leases.released(row.id for row in rows)

    def _file_name(self, batch: BatchRow) -> str:
        return f"batch-prompt-{batch.token}.jsonl"

    async def _upload(self, lane: BatchLane, batch: BatchRow) -> None:
        rows = await self.store.run(lambda s: s.batch_rows(batch.id))
        file, _ = write_input(rows, lane.job.api)
        try:
            async def upload() -> Any:
                file.seek(0)
                return await self._sdk(lane).files.create(
                    file=(self._file_name(batch), file), purpose="batch", timeout=FILE_TIMEOUT)

            uploaded = await self._api(lane, upload, first=True)
        except _NoBatchAPI:
            await self._return_unuploaded(lane, batch)
            raise
        except _Halted:
            if not lane.state.reached:  # the server never answered (a wrong URL): no batch can exist there
                await self._return_unuploaded(lane, batch)
            raise
        finally:
            file.close()
        await self._set(lane, batch, state="uploaded", input_file_id=uploaded.id)

    async def _return_unuploaded(self, lane: BatchLane, batch: BatchRow) -> None:
        """A batch whose file cannot exist (the server has no Files API): its prompts are pending again."""
        await self.store.run(lambda s: s.return_batch(batch.id, str(lane.state.fatal)))
        lane.open.pop(batch.id, None)
        self._unreserve(lane, batch.id)

    async def _create(self, lane: BatchLane, batch: BatchRow) -> None:
        assert batch.input_file_id is not None
        file_id = batch.input_file_id
        created = await self._api(lane, lambda: self._sdk(lane).batches.create(
            input_file_id=file_id, endpoint=URLS[lane.job.api],  # type: ignore[arg-type]
            completion_window="24h", metadata={"batch_prompt": batch.token, "job": lane.job.name[:500]}))
        await self._set(lane, batch, state="submitted", batch_id=created.id, status=created.status,
                        submitted_at=time.time())

    async def _set(self, lane: BatchLane, batch: BatchRow, **fields: Any) -> None:
        await self.store.run(lambda s: s.update_batch(batch.id, **fields))
        lane.open[batch.id] = BatchRow(**{**{k: getattr(batch, k) for k in BatchRow.__slots__}, **fields})

    # --- finding what a killed process left ------------------------------------------------------------

    async def _recover(self, lane: BatchLane, batch: BatchRow) -> None:
        """Bring a batch recorded before a kill to `submitted`: find its file and batch before making any."""
        if batch.state == "preparing":
            async def find_file() -> Any:
                async for file in self._sdk(lane).files.list(purpose="batch"):
                    if file.filename == self._file_name(batch):
                        return file
                return None

            try:
                found = await self._api(lane, find_file, first=True)
            except _NoBatchAPI:
                await self._return_unuploaded(lane, batch)
                raise
            if found is None:
                await self._upload(lane, batch)
            else:
                await self._set(lane, batch, state="uploaded", input_file_id=found.id)
            batch = lane.open[batch.id]
        if batch.state == "uploaded":
            async def find_batch() -> Any:
                async for item in self._sdk(lane).batches.list(limit=100):
                    if (item.metadata or {}).get("batch_prompt") == batch.token:
                        return item
                    if item.created_at < batch.created_at - 3600:  # newest first: it would have been here
                        return None
                return None

            existing = await self._api(lane, find_batch)
            if existing is None:
                await self._create(lane, batch)
            else:
                await self._set(lane, batch, state="submitted", batch_id=existing.id, status=existing.status,
                                submitted_at=time.time())

    # --- waiting and collecting ------------------------------------------------------------------------

    async def _poll(self, lane: BatchLane, batch: BatchRow) -> bool:
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

    async def _collect(self, lane: BatchLane, batch: BatchRow, seen: Any) -> None:
        if seen.status == "failed":
            errors = seen.errors.data if seen.errors and seen.errors.data else []
            reason = "; ".join(f"{e.message}" + (f" (line {e.line})" if e.line else "") for e in errors[:3])
            reason = reason or "the provider refused the batch"
            await self._delete_files(lane, batch, [batch.input_file_id])
            back = await self.store.run(lambda s: s.return_batch(batch.id, f"batch refused: {reason}"))
            lane.open.pop(batch.id, None)
            self._unreserve(lane, batch.id)
            self.note(f"batch {batch.id} of {lane.job.name} was refused: {reason}; its {back} prompts are pending")
            if lane.last_refusal == reason and lane.state.fatal is None:
                lane.state.fatal = ConfigError(
                    f"the Batch API refused two batches of {lane.job.name!r} ({lane.model}) for the same reason: "
                    f"{reason}", endpoint=lane.state.endpoint.base_url)
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
                raise _Halted
        for row in unanswered:
            if row.hash in answered:
                self.ledger.shared(row, answered[row.hash])
            else:
                self._again(lane, batch, row, Failure(
                    Verdict.RETRY, "batch no result", f"batch {batch.batch_id} ended ({seen.status}) without it",
                    outage=seen.status in ("expired", "cancelled")))
        if not await self.ledger.flush():
            raise _Halted
        await self._delete_files(lane, batch, [batch.input_file_id, seen.output_file_id, seen.error_file_id])
        await self.store.run(lambda s: s.update_batch(batch.id, state="collected", finished_at=time.time()))
        lane.open.pop(batch.id, None)
        self._unreserve(lane, batch.id)
        self.note(f"collected batch {batch.id} of {lane.job.name} ({seen.status}): {len(rows) - len(unanswered):,} "
                  f"results, {len(unanswered):,} prompts without one")

    def _settle(self, lane: BatchLane, batch: BatchRow, row: Claimed, line: Any, answered: dict[str, str],
                shared: set[str]) -> None:
        failure = classify_line(line) if isinstance(line, dict) else Failure(Verdict.RETRY, "MalformedResponse", "")
        if failure is None:
            body = line["response"].get("body")
            n = int(json.loads(row.request).get("n") or 1)
            try:
                parts = split_choices(body, n, 1)
            except MalformedResponse as exc:
                parts = [None]
                failure = Failure(Verdict.RETRY, "MalformedResponse", str(exc))
            if parts[0] is not None:
                response = {key: value for key, value in body.items() if key != "choices"}
                response["choices"] = parts[0]
                text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
                self.ledger.paid(lane.job.id, lane.model, "batch", 1, body.get("usage"), row_id=row.id)
                self.ledger.answered(row, text, lane.endpoint, lane.cache, self.ledger.cache_tag(lane.job, row.id), 1)
                if row.hash in shared:
                    answered[row.hash] = text
                return
            failure = failure or Failure(Verdict.RETRY, "MalformedResponse", f"the answer lacks some of {n} choices")
        self._again(lane, batch, row, failure)

    def _again(self, lane: BatchLane, batch: BatchRow, row: Claimed, failure: Failure) -> None:
        """A line that is not an answer: fail its prompt, or send it back to pending for a later batch."""
        message = redact(failure.message, lane.state.endpoint.api_key)
        spent = 0 if failure.outage else 1  # expired or cancelled by the provider: never run, no attempt used
        if failure.verdict is Verdict.FAIL or (spent and row.attempts + 1 >= self.opts.max_attempts):
            if failure.verdict is not Verdict.FAIL:
                message = f"gave up after {row.attempts + 1} attempts: {message}"
            self.ledger.failed(row, lane.endpoint, message, failure.kind, 1, owner=batch.owner)
            return
        self.ledger.retry(row, message, failure.kind, owner=batch.owner, attempts=spent)
        if failure.verdict is Verdict.FATAL and lane.state.fatal is None:
            lane.state.fatal = FatalAPIError(f"the API refused the run at {lane.state.endpoint.base_url}: {message}",
                                             status_code=failure.status, endpoint=lane.state.endpoint.base_url)

    async def _delete_files(self, lane: BatchLane, batch: BatchRow, ids: list[str | None]) -> None:
        for file_id in ids:
            if not file_id:
                continue
            delete = functools.partial(self._sdk(lane).files.delete, file_id)
            # a file already gone (404), or an endpoint failing: then it is the provider's to expire
            with contextlib.suppress(BatchPromptError):
                await self._api(lane, delete)
        await self.store.run(lambda s: s.update_batch(batch.id, files_left=False))

    async def cancel(self, lane: BatchLane) -> tuple[int, int]:
        """Ask the provider to cancel every open batch of the lane; returns how many were asked, and how many
        were being cancelled already (asked before)."""
        asked = already = 0
        for batch in await self._open_batches(lane):
            try:
                await self._recover(lane, batch)
            except _Halted:  # the endpoint refused (or has no Batch API): the run says so
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
