"""The provider's side of a batch: its Files and Batches calls, each retried as live calls are (a refusal of
the run stops the lane), and each step of a batch recorded as it returns: the file uploaded under a name
holding the batch's token, the batch created with the token in its metadata, and, after a kill, the two
found again before anything is made twice. `batch.BatchEngine` drives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BatchPromptError, FatalAPIError, RetryExhausted
from ..store.asyncstore import AsyncStore
from ..store.database import BatchRow
from .batchfile import URLS, write_input
from .failures import Verdict, classify, connection_refused, redact
from .lanes import Lane
from .retry import RetryPolicy

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
FILE_TIMEOUT = 900.0  # seconds an upload or download of up to 200 MB may take


class Halted(Exception):
    """The lane, or the run, stops: nothing more is submitted or awaited."""


class NoBatchAPI(Halted):
    """The endpoint has no Files/Batch API: a batch being prepared there cannot have an uploaded file."""


class BatchCalls:
    """The calls and steps of the batch lanes of a run, at their endpoints (see the module docstring)."""

    store: AsyncStore
    policy: RetryPolicy

    async def _open_batches(self, lane: Lane) -> list[BatchRow]:
        batches = await self.store.batches(lane.job)
        mine = [b for b in batches if b.model == lane.model and b.endpoint == lane.endpoint.identity]
        for settled in mine:  # files a process killed while deleting them left behind
            if settled.state in ("collected", "returned") and settled.files_left:
                await self._delete_files(lane, settled, [settled.input_file_id, settled.output_file_id,
                                                        settled.error_file_id])
        lane.open = {b.id: b for b in mine if b.state not in ("collected", "returned")}
        return list(lane.open.values())

    async def _api(self, lane: Lane, call: Callable[[], Awaitable[T]], first: bool = False) -> T:
        """A files/batches call, retried as live calls are; a refusal of the run stops the lane. `first`: a
        call any server with the Batch API answers (files.create, files.list), so a 404 or 405 means the
        server has none (llama.cpp's): `NoBatchAPI`."""
        import openai  # imported here, not on the live path (`ApiClient.sdk` imports it for these calls)

        state = lane.state

        async def attempt() -> T:
            try:
                result = await call()
            except openai.APIConnectionError as exc:  # before any answer, a few make the endpoint wrong
                refused = connection_refused(exc)  # (the SDK's transport calls a refusal a timeout)
                text = "connection refused" if refused else classify(exc).message
                state.could_not_connect(redact(text, state.endpoint.api_key), refused)
                if state.fatal is not None:
                    raise Halted from None
                raise
            except openai.APIStatusError:
                state.reached = True
                raise
            state.reached = True
            return result

        try:
            return await self.policy.call(attempt, asyncio.sleep)
        except Halted:
            raise
        except Exception as exc:
            if isinstance(exc, BatchPromptError) and not isinstance(exc, RetryExhausted):
                raise
            failure = classify(exc)
            message = redact(failure.message, lane.state.endpoint.api_key)
            if first and failure.status in (404, 405):  # a server without the Batch API
                url = lane.endpoint.base_url
                if lane.live_fallback:  # auto mode: its prompts go live instead (`auto.Watch`)
                    lane.no_batch_api, lane.submit = f"{url} has no Batch API (it answered {message})", False
                    raise NoBatchAPI from None
                lane.state.refuse(FatalAPIError(f"{url} has no Batch API (it answered {message}): run with --mode live",
                                                status_code=failure.status, endpoint=url))
                raise NoBatchAPI from None
            if failure.verdict is Verdict.FATAL and lane.state.fatal is None:
                lane.state.refused_by_api(message, failure.status)
                raise Halted from None
            if failure.verdict is Verdict.LOCAL:
                raise
            raise BatchPromptError(f"the Batch API call failed at {lane.state.endpoint.base_url}: {message}") from None

    def _sdk(self, lane: Lane) -> openai.AsyncOpenAI:
        return lane.client.sdk

    def _unreserve(self, lane: Lane, batch_id: int) -> None:
        if lane.budget is not None:
            lane.budget.release(lane.reserved.pop(batch_id, 0.0))

    def _file_name(self, batch: BatchRow) -> str:
        return f"batch-prompt-{batch.token}.jsonl"

    async def _upload(self, lane: Lane, batch: BatchRow) -> None:
        rows = await self.store.run(lambda s: s.batch_rows(batch.id))
        file, _ = write_input(rows, lane.job.api)
        try:
            async def upload() -> Any:
                file.seek(0)
                return await self._sdk(lane).files.create(
                    file=(self._file_name(batch), file), purpose="batch", timeout=FILE_TIMEOUT)

            uploaded = await self._api(lane, upload, first=True)
        except NoBatchAPI:
            await self._return_unuploaded(lane, batch)
            raise
        except Halted:
            if not lane.state.reached:  # the server never answered (a wrong URL): no batch can exist there
                await self._return_unuploaded(lane, batch)
            raise
        finally:
            file.close()
        await self._set(lane, batch, state="uploaded", input_file_id=uploaded.id)

    async def _return_unuploaded(self, lane: Lane, batch: BatchRow) -> None:
        """A batch whose file cannot exist (the server has no Files API): its prompts are pending again."""
        await self.store.run(lambda s: s.return_batch(batch.id, lane.no_batch_api or str(lane.state.fatal)))
        lane.open.pop(batch.id, None)
        self._unreserve(lane, batch.id)

    async def _create(self, lane: Lane, batch: BatchRow) -> None:
        assert batch.input_file_id is not None
        file_id = batch.input_file_id
        created = await self._api(lane, lambda: self._sdk(lane).batches.create(
            input_file_id=file_id, endpoint=URLS[lane.job.api],  # type: ignore[arg-type]
            completion_window="24h", metadata={"batch_prompt": batch.token, "job": lane.job.name[:500]}))
        await self._set(lane, batch, state="submitted", batch_id=created.id, status=created.status,
                        submitted_at=time.time())

    async def _set(self, lane: Lane, batch: BatchRow, **fields: Any) -> None:
        await self.store.run(lambda s: s.update_batch(batch.id, **fields))
        lane.open[batch.id] = BatchRow(**{**{k: getattr(batch, k) for k in BatchRow.__slots__}, **fields})

    async def _recover(self, lane: Lane, batch: BatchRow) -> None:
        """Bring a batch recorded before a kill to `submitted`: find its file and batch before making any."""
        if batch.state == "preparing":
            async def find_file() -> Any:
                async for file in self._sdk(lane).files.list(purpose="batch"):
                    if file.filename == self._file_name(batch):
                        return file
                return None

            try:
                found = await self._api(lane, find_file, first=True)
            except NoBatchAPI:
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

    async def _delete_files(self, lane: Lane, batch: BatchRow, ids: list[str | None]) -> None:
        for file_id in ids:
            if not file_id:
                continue
            delete = functools.partial(self._sdk(lane).files.delete, file_id)
            # a file already gone (404), or an endpoint failing: then it is the provider's to expire
            with contextlib.suppress(BatchPromptError):
                await self._api(lane, delete)
        await self.store.run(lambda s: s.update_batch(batch.id, files_left=False))
