"""The fake server's Batch API: batch records, the handlers of ``/v1/batches``, the test record.

``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, optional ``metadata``
and ``output_expires_after``), ``GET /v1/batches/{id}``, ``GET /v1/batches`` (``limit`` 1-100, default
20; ``after``; newest first), ``POST /v1/batches/{id}/cancel``.  What a batch does over time, and
what its input file must hold, is ``lifecycle.py``.

Refused at once, as OpenAI refuses them (400 with ``param`` named, or 404): a missing or unknown
parameter; an ``endpoint`` other than ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/responses`` (the ones the fake answers); a ``completion_window`` other than ``"24h"``; metadata
that is not at most 16 pairs of strings (keys up to 64 characters, values up to 512); an unknown input
file (404) or one whose purpose is not ``batch``.  Cancel moves a ``validating`` or ``in_progress``
batch to ``cancelling`` (again: the same batch back); any other status is a 409 ("Cannot cancel a batch
with status ...").

``BatchAPI.record()`` (``FakeServer.batches``, ``GET /_fake/batches``) is the tests' view: one dict
per batch created, oldest first, with its metadata, input file, line count and state.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .api import FakeConfig
from .files import FilesAPI
from .lifecycle import FakeBatch, Lifecycle
from .rest import ApiError, guarded, invalid, json_object, list_object, missing, not_found, page, query_int

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
_CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        raise invalid("metadata", "must be an object of at most 16 key-value pairs.")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise invalid("metadata", "keys must be strings of at most 64 characters, values of at most 512.")
    return dict(value)


class BatchAPI:
    """The ``/v1/batches`` and ``/v1/files`` handlers, and the lifecycle tasks of the batches.

    ``lock`` is the server's; ``config`` returns its current settings without taking the lock;
    ``count_answered(prompts)`` is called with the lock held for every line answered with a 200.
    """

    def __init__(
        self,
        lock: threading.Lock,
        config: Callable[[], FakeConfig],
        count_answered: Callable[[list[str]], None],
    ) -> None:
        self.lock, self.config, self.count_answered = lock, config, count_answered
        self.files = FilesAPI(lock, config)
        self._batches: dict[str, FakeBatch] = {}
        self._issued: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- state (the lock held) ------------------------------------------------------------------
    def clear(self) -> None:
        """Drop every file and batch; their lifecycle tasks are cancelled and change nothing more."""
        for batch in self._batches.values():
            batch.gone = True
        for task in self._tasks:
            if not task.done():
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._batches.clear()
        self._issued.clear()
        self.files.store.clear()

    def record(self) -> list[dict[str, Any]]:
        return [b.record() for b in self._batches.values()]

    async def aclose(self) -> None:
        """Cancel the lifecycle tasks and wait for them (the server is stopping)."""
        with self.lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- HTTP -----------------------------------------------------------------------------------
    def add_routes(self, router: web.UrlDispatcher) -> None:
        def key() -> str | None:
            return self.config().api_key

        def served() -> bool:
            return self.config().batch_api

        self.files.add_routes(router)
        router.add_post("/v1/batches", guarded(self._create, key, served))
        router.add_get("/v1/batches", guarded(self._list, key, served))
        router.add_get("/v1/batches/{batch_id}", guarded(self._retrieve, key, served))
        router.add_post("/v1/batches/{batch_id}/cancel", guarded(self._cancel, key, served))
        router.add_get("/_fake/batches", self._ctl_batches)
        router.add_get("/_fake/files", self._ctl_files)

    def _get(self, request: web.Request) -> FakeBatch:
        """The batch named in the path (the lock held)."""
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None:
            raise not_found("Batch", batch_id)
        return batch

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await json_object(request)
        unknown = sorted(body.keys() - _CREATE_FIELDS)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise missing(name)
        file_id, endpoint = body["input_file_id"], body["endpoint"]
        if not isinstance(file_id, str):
            raise invalid("input_file_id", "must be a string.")
        if endpoint not in ENDPOINTS:
            raise invalid("endpoint", f"'{endpoint}'. Supported values are: {', '.join(ENDPOINTS)}.")
        if body["completion_window"] != "24h":
            raise invalid("completion_window", f"'{body['completion_window']}'. Supported values are: '24h'.")
        metadata = _metadata(body.get("metadata"))
        settings = self.config()
        with self.lock:
            input_file = self.files.store.get(file_id)
            if input_file is None:
                raise not_found("File", file_id, "input_file_id")
            if input_file.purpose != "batch":
                raise ApiError(400, f"The input file {file_id} must be uploaded with purpose 'batch'.", "input_file_id")
            seq = len(self._issued) + 1
            batch = FakeBatch(
                id="batch_" + secrets.token_hex(16),
                seq=seq,
                input_file_id=file_id,
                endpoint=endpoint,
                metadata=metadata,
                settings=settings,
                created_at=time.time(),
                started=time.monotonic(),
            )
            self._batches[batch.id] = batch
            self._issued[batch.id] = seq
            obj = batch.to_object()
            life = Lifecycle(batch, input_file, self.lock, self.files.store, self.count_answered)
            task = asyncio.create_task(life.run(), name=f"fake-{batch.id}")
            self._tasks.add(task)
        task.add_done_callback(self._forget)
        return web.json_response(obj)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with self.lock:
            self._tasks.discard(task)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        limit = query_int(request, "limit", 20, 1, 100)
        with self.lock:
            items, more = page(list(self._batches.values()), self._issued, request.query.get("after"), limit)
            data = [b.to_object() for b in items]
        return web.json_response(list_object(data, more))

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            obj = self._get(request).to_object()
        return web.json_response(obj)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            batch = self._get(request)
            if batch.status in ("validating", "in_progress"):
                batch.status = "cancelling"
                batch.at["cancelling"] = int(time.time())
                batch.wake.set()
            elif batch.status != "cancelling":
                raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
            obj = batch.to_object()
        return web.json_response(obj)

    async def _ctl_batches(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            return web.json_response(self.record())

    async def _ctl_files(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            return web.json_response(self.files.store.record())
