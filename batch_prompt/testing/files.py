"""The fake server's Files API: the file store and the handlers of ``/v1/files``.

``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files`` (``purpose``, ``order``,
``limit`` up to 10,000, ``after``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content`` (the raw
bytes, streamed), ``DELETE /v1/files/{id}`` (``{"id", "object": "file", "deleted": true}``).  As
OpenAI: a ``batch`` upload must be a ``.jsonl`` file of at most ``batch_max_bytes`` (200 MB), any
upload at most 512 MB; an unknown id is a 404.

Files live in memory as the chunks they were written in (an upload is one chunk; a batch's output
file the blocks its lines were answered in), never copied again: a download streams the chunks.  A
deleted file is gone from the store at once; ``record()`` lists the files that exist, so a test can
assert that no upload was left behind.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import BodyPartReader, web

from .api import FakeConfig
from .rest import ApiError, guarded, invalid, list_object, missing, not_found, page, query_int

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
_READ = 1 << 20  # bytes per read of an upload


@dataclasses.dataclass(eq=False)
class FakeFile:
    id: str
    seq: int  # creation number, for list order and cursors
    filename: str
    purpose: str
    created_at: int
    chunks: list[bytes]  # never changed once stored
    size: int

    def to_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """The files that exist, by id.  Every method is called with the server's lock held."""

    def __init__(self) -> None:
        self._files: dict[str, FakeFile] = {}
        self.issued: dict[str, int] = {}  # every id ever issued -> its seq (cursors outlive deletes)

    def add(self, filename: str, purpose: str, chunks: list[bytes]) -> FakeFile:
        file_id = "file-" + secrets.token_hex(11)
        seq = len(self.issued) + 1
        f = FakeFile(file_id, seq, filename, purpose, int(time.time()), chunks, sum(len(c) for c in chunks))
        self._files[file_id] = f
        self.issued[file_id] = seq
        return f

    def get(self, file_id: str) -> FakeFile | None:
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        return self._files.pop(file_id, None) is not None

    def files(self) -> list[FakeFile]:
        """The files that exist, oldest first."""
        return list(self._files.values())

    def clear(self) -> None:
        self._files.clear()
        self.issued.clear()

    def record(self) -> list[dict[str, Any]]:
        """The File objects of the files that exist, oldest first."""
        return [f.to_object() for f in self._files.values()]


class FilesAPI:
    """The ``/v1/files`` handlers over a ``FileStore`` guarded by the server's ``lock``."""

    def __init__(self, lock: threading.Lock, config: Callable[[], FakeConfig]) -> None:
        self.lock, self.config = lock, config
        self.store = FileStore()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        def key() -> str | None:
            return self.config().api_key

        def served() -> bool:
            return self.config().batch_api

        router.add_post("/v1/files", guarded(self._create, key, served))
        router.add_get("/v1/files", guarded(self._list, key, served))
        router.add_get("/v1/files/{file_id}", guarded(self._retrieve, key, served))
        router.add_delete("/v1/files/{file_id}", guarded(self._delete, key, served))
        router.add_get("/v1/files/{file_id}/content", guarded(self._content, key, served))

    def _get(self, request: web.Request) -> FakeFile:
        file_id = request.match_info["file_id"]
        with self.lock:
            f = self.store.get(file_id)
        if f is None:
            raise not_found("File", file_id)
        return f

    async def _create(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "Invalid Content-Type header: expected multipart/form-data.")
        purpose: str | None = None
        upload: tuple[str, bytes] | None = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "Nested multipart bodies are not supported.")
            if part.name == "purpose":
                purpose = await part.text()
            elif part.name == "file":
                upload = (part.filename or "upload", await _read_part(part))
            else:
                await part.release()
        if upload is None:
            raise missing("file")
        if purpose is None:
            raise missing("purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise invalid("purpose", f"'{purpose}'. Supported values are: {', '.join(UPLOAD_PURPOSES)}.")
        filename, data = upload
        if purpose == "batch":
            if not filename.endswith(".jsonl"):
                raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", "file")
            limit = self.config().batch_max_bytes
            if len(data) > limit:
                raise ApiError(400, f"File is too large: {len(data)} bytes; a batch input may have {limit}.", "file")
        with self.lock:
            f = self.store.add(filename, purpose, [data])
        return web.json_response(f.to_object())

    async def _list(self, request: web.Request) -> web.StreamResponse:
        limit = query_int(request, "limit", 10_000, 1, 10_000)
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("order", f"'{order}'. Supported values are: 'asc' and 'desc'.")
        purpose = request.query.get("purpose")
        with self.lock:
            files = [f for f in self.store.files() if purpose is None or f.purpose == purpose]
            items, more = page(files, self.store.issued, request.query.get("after"), limit, order == "desc")
        return web.json_response(list_object([f.to_object() for f in items], more))

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._get(request).to_object())

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        with self.lock:
            deleted = self.store.delete(file_id)
        if not deleted:
            raise not_found("File", file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    async def _content(self, request: web.Request) -> web.StreamResponse:
        f = self._get(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = f.size
        await resp.prepare(request)
        for chunk in f.chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def _read_part(part: BodyPartReader) -> bytes:
    """The part's bytes; a 400 past 512 MB (the rest is drained, so the client reads the answer)."""
    data = bytearray()
    while chunk := await part.read_chunk(_READ):
        data += chunk
        if len(data) > MAX_UPLOAD_BYTES:
            await part.release()
            raise ApiError(400, f"File is too large: a file may have at most {MAX_UPLOAD_BYTES} bytes.", "file")
    return bytes(data)
