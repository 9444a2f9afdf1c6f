"""The fake server's Files and Batch APIs over real HTTP: the openai SDK, and aiohttp where it can't reach."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
from openai.types import Batch

from batch_prompt.testing import FakeServer

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def run(fn: Callable[[openai.AsyncOpenAI], Awaitable[T]], srv: FakeServer, api_key: str = "sk-test") -> T:
    """Run ``fn(client)`` with a fresh openai client (aiohttp transport, no retries)."""

    async def main() -> T:
        client = openai.AsyncOpenAI(
            base_url=srv.url, api_key=api_key, max_retries=0, timeout=60, http_client=openai.DefaultAioHttpClient()
        )
        async with client:
            return await fn(client)

    return asyncio.run(main())


def raw(srv: FakeServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """An aiohttp request to the server; (status, decoded JSON body)."""

    async def main() -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        async with aiohttp.ClientSession() as s, s.request(method, srv.url.removesuffix("/v1") + path, data=data) as r:
            return r.status, await r.json(content_type=None)

    return asyncio.run(main())


def chat_line(custom_id: str, content: str, model: str = "fake-model", **body: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


async def submit(c: openai.AsyncOpenAI, data: bytes, endpoint: Any = CHAT, **kw: Any) -> Batch:
    f = await c.files.create(file=("input.jsonl", data), purpose="batch")
    return await c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kw)


async def until(c: openai.AsyncOpenAI, batch_id: str, done: Callable[[Batch], bool], within: float = 20) -> Batch:
    """Poll the batch until ``done(batch)``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not done(b := await c.batches.retrieve(batch_id)):
        assert time.monotonic() < deadline, f"batch still {b.status}"
        await asyncio.sleep(0.01)
    return b


async def finish(c: openai.AsyncOpenAI, batch_id: str, within: float = 20) -> Batch:
    return await until(c, batch_id, lambda b: b.status in TERMINAL, within)


async def lines_of(c: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await c.files.content(file_id)).content.splitlines()]


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def test_files_upload_retrieve_content_list_delete(server: FakeServer) -> None:
    data = jsonl(chat_line("a", "hello"))

    async def call(c: openai.AsyncOpenAI) -> None:
        first = await c.files.create(file=("in.jsonl", data), purpose="batch")
        assert (first.object, first.bytes, first.filename, first.purpose, first.status) == (
            "file", len(data), "in.jsonl", "batch", "processed"
        )
        assert first.id.startswith("file-") and abs(first.created_at - time.time()) < 5
        second = await c.files.create(file=("notes.txt", b"free text"), purpose="user_data")
        assert await c.files.retrieve(first.id) == first
        assert (await c.files.content(first.id)).content == data
        assert (await c.files.content(second.id)).content == b"free text"
        assert [f.id async for f in c.files.list()] == [second.id, first.id]  # newest first
        assert [f.id async for f in c.files.list(purpose="batch")] == [first.id]
        page = await c.files.list(limit=1)
        assert [f.id for f in page.data] == [second.id] and page.has_more is True
        assert [f.id async for f in c.files.list(limit=1)] == [second.id, first.id]  # the SDK pages with after
        assert [f.id async for f in c.files.list(order="asc")] == [first.id, second.id]
        deleted = await c.files.delete(first.id)
        assert (deleted.id, deleted.object, deleted.deleted) == (first.id, "file", True)
        for missing in (c.files.retrieve(first.id), c.files.content(first.id), c.files.delete(first.id)):
            with pytest.raises(openai.NotFoundError) as info:
                await missing
            assert info.value.status_code == 404 and info.value.param == "id"
        assert [f.id async for f in c.files.list()] == [second.id]
        assert [f["id"] for f in server.files] == [second.id]
        assert [f.id async for f in c.files.list(after=first.id)] == []  # a deleted cursor still pages
        with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
            await c.files.create(file=("in.txt", data), purpose="batch")
        with pytest.raises(openai.BadRequestError) as bad:
            await c.files.create(file=("in.jsonl", data), purpose="nonsense")  # type: ignore[arg-type]
        assert bad.value.param == "purpose"

    run(call, server)
    assert [f["filename"] for f in server.files] == ["notes.txt"]


def test_batch_completes_shuffled_and_answers_as_live(server: FakeServer) -> None:
    prompts = [f"prompt number {i}" for i in range(12)]
    lines = [chat_line(f"row-{i}", p, n=1 + i % 3, max_tokens=2 + i % 2) for i, p in enumerate(prompts)]
    meta = {"job": "likes", "part": "1"}

    async def call(c: openai.AsyncOpenAI) -> tuple[Batch, Batch, list[dict[str, Any]]]:
        created = await submit(c, jsonl(*lines), metadata=meta)
        done = await finish(c, created.id)
        return created, done, await lines_of(c, done.output_file_id)

    created, b, out = run(call, server)
    assert (created.status, created.metadata, created.request_counts) == ("validating", meta, created.request_counts)
    assert created.object == "batch" and created.id.startswith("batch_") and created.output_file_id is None
    assert (b.status, b.errors, b.error_file_id, b.model, b.metadata) == ("completed", None, None, "fake-model", meta)
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (12, 12, 0)
    assert b.in_progress_at is not None and b.finalizing_at is not None and b.completed_at is not None
    assert b.created_at <= b.in_progress_at <= b.finalizing_at <= b.completed_at
    assert b.expires_at == b.created_at + 86400
    assert (b.failed_at, b.expired_at, b.cancelling_at, b.cancelled_at) == (None, None, None, None)
    order = [o["custom_id"] for o in out]
    assert sorted(order, key=lambda cid: int(cid[4:])) == [f"row-{i}" for i in range(12)]
    assert order != [f"row-{i}" for i in range(12)]  # seed 0 shuffles: the client must join on custom_id
    assert len({o["id"] for o in out}) == 12 and all(o["id"].startswith("batch_req_") for o in out)
    assert server.answered() == Counter(prompts)  # every line answered once, counted as the live ones are
    by_id = {o["custom_id"]: o for o in out}
    for i, line in enumerate(lines):
        o = by_id[f"row-{i}"]
        assert o["error"] is None and o["response"]["status_code"] == 200
        assert o["response"]["request_id"].startswith("req_")
        live = run(lambda c, body=line["body"]: c.chat.completions.with_raw_response.create(**body), server)
        assert without_ids(o["response"]["body"]) == without_ids(json.loads(live.content))
    assert server.answered() == Counter({p: 2 for p in prompts})  # the live calls are counted on top
    (record,) = server.batches
    assert record == {
        "id": b.id, "input_file_id": b.input_file_id, "endpoint": CHAT, "metadata": meta, "lines": 12,
        "status": "completed", "request_counts": {"total": 12, "completed": 12, "failed": 0},
        "output_file_id": b.output_file_id, "error_file_id": None, "errors": None,
    }
    assert [f["purpose"] for f in server.files] == ["batch", "batch_output"]


def test_completions_batch() -> None:
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "gpt-3.5-turbo-instruct", "prompt": [f"p{i}a", f"p{i}b"], "n": 2}}
        for i in range(3)
    ]

    async def call(c: openai.AsyncOpenAI) -> list[dict[str, Any]]:
        b = await finish(c, (await submit(c, jsonl(*lines), endpoint="/v1/completions")).id)
        assert b.status == "completed" and b.model == "gpt-3.5-turbo-instruct"
        return await lines_of(c, b.output_file_id)

    with FakeServer() as srv:
        out = {o["custom_id"]: o["response"]["body"] for o in run(call, srv)}
        assert srv.answered() == Counter(f"p{i}{x}" for i in range(3) for x in "ab")
    for i in range(3):
        body = out[f"c{i}"]
        assert body["object"] == "text_completion"
        assert [(ch["index"], ch["text"]) for ch in body["choices"]] == [
            (0, f"echo 0: p{i}a"), (1, f"echo 1: p{i}a"), (2, f"echo 0: p{i}b"), (3, f"echo 1: p{i}b")
        ]


def test_refused_lines_go_to_the_error_file(server: FakeServer) -> None:
    lines = [
        chat_line("ok-1", "fine"),
        chat_line("bad-400", "please FAIL400"),
        chat_line("bad-500", "FAIL500 now"),
        {"custom_id": "no-messages", "method": "POST", "url": CHAT, "body": {"model": "fake-model"}},
        chat_line("ok-2", "also fine"),
    ]

    async def call(c: openai.AsyncOpenAI) -> tuple[Batch, list[dict[str, Any]], list[dict[str, Any]]]:
        b = await finish(c, (await submit(c, jsonl(*lines))).id)
        return b, await lines_of(c, b.output_file_id), await lines_of(c, b.error_file_id)

    b, out, err = run(call, server)
    assert b.status == "completed" and b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (5, 2, 3)
    assert sorted(o["custom_id"] for o in out) == ["ok-1", "ok-2"]
    errors = {o["custom_id"]: (o["response"]["status_code"], o["response"]["body"]["error"]) for o in err}
    assert all(o["error"] is None for o in err)
    assert errors["bad-400"] == (400, {
        "message": "Invalid prompt: contains FAIL400", "type": "invalid_request_error", "param": "messages",
        "code": "invalid_prompt",
    })
    assert errors["bad-500"][0] == 500 and errors["bad-500"][1]["type"] == "server_error"
    assert errors["no-messages"] == (400, {
        "message": "You must provide a valid 'messages' parameter.", "type": "invalid_request_error",
        "param": None, "code": None,
    })
    assert server.answered() == Counter({"fine": 1, "also fine": 1})


def test_seeded_transient_errors_replay() -> None:
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(40)]

    async def call(c: openai.AsyncOpenAI) -> tuple[list[str], list[str]]:
        b = await finish(c, (await submit(c, jsonl(*lines))).id)
        out, err = await lines_of(c, b.output_file_id), await lines_of(c, b.error_file_id)
        assert b.request_counts is not None and b.request_counts.failed == len(err)
        assert {o["response"]["status_code"] for o in err} == {500}
        return [o["custom_id"] for o in out], [o["custom_id"] for o in err]

    runs = []
    for _ in range(2):
        with FakeServer(seed=7, batch_error_rate=0.5) as srv:
            runs.append(run(call, srv))
    assert runs[0] == runs[1]  # same seed, same batch number: same order and the same lines failed
    out, err = runs[0]
    assert 5 < len(err) < 35 and len(out) + len(err) == 40


def _line_errors(b: Batch) -> list[tuple[str | None, int | None, str | None]]:
    assert b.errors is not None and b.errors.object == "list" and b.errors.data is not None
    return [(e.code, e.line, e.param) for e in b.errors.data]


BAD_FILES: dict[str, tuple[bytes, list[tuple[str | None, int | None, str | None]]]] = {
    "bad_json": (jsonl(chat_line("a", "x"), b"{not json", chat_line("c", "z")), [("invalid_json_line", 2, None)]),
    "duplicate_custom_id": (
        jsonl(chat_line("a", "x"), chat_line("b", "y"), chat_line("a", "z")), [("duplicate_custom_id", 3, "custom_id")]
    ),
    "url_mismatch": (
        jsonl(chat_line("a", "x"), {**chat_line("b", "y"), "url": "/v1/completions"}), [("invalid_url", 2, "url")]
    ),
    "two_models": (
        jsonl(chat_line("a", "x"), chat_line("b", "y", model="gpt-4o-mini"), chat_line("c", "z")),
        [("mismatched_model", 2, "body.model")],
    ),
    "too_many_lines": (jsonl(*(chat_line(str(i), "x") for i in range(4))), [("too_many_tasks", None, None)]),
    "no_custom_id": (
        jsonl({"method": "POST", "url": CHAT, "body": {}}), [("missing_required_parameter", 1, "custom_id")]
    ),
    "get_method": (jsonl({**chat_line("a", "x"), "method": "GET"}), [("invalid_value", 1, "method")]),
    "empty": (b"", [("empty_file", None, None)]),
    "two_errors": (jsonl(b"[1, 2]", chat_line("b", "y"), b"", chat_line("b", "y")), [
        ("invalid_json_line", 1, None), ("invalid_json_line", 3, None), ("duplicate_custom_id", 4, "custom_id")
    ]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_validation_failures(case: str) -> None:
    data, expected = BAD_FILES[case]

    async def call(c: openai.AsyncOpenAI) -> Batch:
        return await finish(c, (await submit(c, data)).id)

    with FakeServer(batch_max_lines=3 if case == "too_many_lines" else 50_000) as srv:
        b = run(call, srv)
        assert (b.status, b.output_file_id, b.error_file_id, b.in_progress_at) == ("failed", None, None, None)
        assert b.failed_at is not None and b.request_counts is not None and b.request_counts.total == 0
        assert _line_errors(b) == expected
        assert srv.batches[0]["status"] == "failed" and srv.answered() == Counter()
        assert [f["purpose"] for f in srv.files] == ["batch"]


def test_create_refusals(server: FakeServer) -> None:
    async def call(c: openai.AsyncOpenAI) -> None:
        good = await c.files.create(file=("in.jsonl", jsonl(chat_line("a", "x"))), purpose="batch")
        other = await c.files.create(file=("in.jsonl", b"{}"), purpose="user_data")
        with pytest.raises(openai.NotFoundError) as nf:
            await c.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
        assert nf.value.param == "input_file_id"
        with pytest.raises(openai.BadRequestError) as bad:
            await c.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="24h")
        assert bad.value.param == "input_file_id"
        with pytest.raises(openai.BadRequestError) as bad:
            await c.batches.create(input_file_id=good.id, endpoint="/v1/embeddings", completion_window="24h")
        assert bad.value.param == "endpoint" and bad.value.code == "invalid_value"
        window: Any = "48h"
        with pytest.raises(openai.BadRequestError) as bad:
            await c.batches.create(input_file_id=good.id, endpoint=CHAT, completion_window=window)
        assert bad.value.param == "completion_window"
        for metadata in ({f"k{i}": "v" for i in range(17)}, {"k": "v" * 513}, {"k" * 65: "v"}, {"k": 1}):
            with pytest.raises(openai.BadRequestError) as bad:
                await c.batches.create(input_file_id=good.id, endpoint=CHAT, completion_window="24h", metadata=metadata)
            assert bad.value.param == "metadata"
        for missing in (c.batches.retrieve("batch_nope"), c.batches.cancel("batch_nope")):
            with pytest.raises(openai.NotFoundError):
                await missing

    run(call, server)
    assert server.batches == []
    status, body = raw(server, "POST", "/v1/batches", {"endpoint": CHAT, "completion_window": "24h"})
    assert (status, body["error"]["param"]) == (400, "input_file_id")
    assert body["error"]["code"] == "missing_required_parameter"
    extra = {"input_file_id": "x", "endpoint": CHAT, "completion_window": "24h", "priority": "high"}
    status, body = raw(server, "POST", "/v1/batches", extra)
    assert (status, body["error"]["param"]) == (400, "priority")
    assert raw(server, "GET", "/v1/batches?limit=101")[0] == 400
    assert raw(server, "GET", "/v1/batches?after=batch_never")[0] == 400


def test_partial_expiry() -> None:
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(10)]

    async def call(c: openai.AsyncOpenAI) -> tuple[Batch, list[dict[str, Any]], list[dict[str, Any]]]:
        b = await finish(c, (await submit(c, jsonl(*lines))).id)
        return b, await lines_of(c, b.output_file_id), await lines_of(c, b.error_file_id)

    with FakeServer(batch_expire_after=3) as srv:
        b, out, err = run(call, srv)
        assert srv.answered() == Counter(o["response"]["body"]["choices"][0]["message"]["content"][8:] for o in out)
    assert (b.status, b.completed_at, b.finalizing_at) == ("expired", None, None) and b.expired_at is not None
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (10, 3, 0)
    assert len(out) == 3 and len(err) == 7
    assert sorted(o["custom_id"] for o in out + err) == sorted(f"r{i}" for i in range(10))
    for o in err:
        assert o["response"] is None and o["error"]["code"] == "batch_expired"


def test_window_expiry_keeps_what_was_done() -> None:
    async def call(c: openai.AsyncOpenAI) -> tuple[Batch, int, int]:
        b = await finish(c, (await submit(c, jsonl(*(chat_line(f"r{i}", f"q{i}") for i in range(50))))).id)
        out, err = await lines_of(c, b.output_file_id), await lines_of(c, b.error_file_id)
        assert {o["error"]["code"] for o in err} == {"batch_expired"}
        return b, len(out), len(err)

    with FakeServer(batch_window_seconds=0.5, batch_lines_per_second=20) as srv:
        b, done, left = run(call, srv)
        assert sum(srv.answered().values()) == done
    assert b.status == "expired" and b.request_counts is not None
    assert (b.request_counts.completed, done + left) == (done, 50)
    assert 3 <= done <= 11  # about 0.5 s at 20 lines a second


def test_cancel_midway_keeps_done_lines() -> None:
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(40)]

    async def call(c: openai.AsyncOpenAI) -> tuple[Batch, Batch, Batch, list[dict[str, Any]], list[dict[str, Any]]]:
        b = await submit(c, jsonl(*lines))
        await until(c, b.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 3)
        cancelling = await c.batches.cancel(b.id)
        again = await c.batches.cancel(b.id)
        end = await finish(c, b.id)
        with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'cancelled'"):
            await c.batches.cancel(b.id)
        return cancelling, again, end, await lines_of(c, end.output_file_id), await lines_of(c, end.error_file_id)

    with FakeServer(batch_lines_per_second=20, batch_cancel_seconds=0.2) as srv:
        cancelling, again, end, out, err = run(call, srv)
        assert sum(srv.answered().values()) == len(out)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert again.status == "cancelling" and again.cancelling_at == cancelling.cancelling_at
    assert cancelling.request_counts is not None and end.request_counts is not None
    done = cancelling.request_counts.completed
    assert 3 <= done < 40
    assert (end.status, end.request_counts.completed, end.request_counts.total) == ("cancelled", done, 40)
    assert end.cancelled_at is not None and end.completed_at is None
    assert len(out) == done and len(err) == 40 - done  # nothing was answered after the cancel
    assert {o["error"]["code"] for o in err} == {"batch_cancelled"} and all(o["response"] is None for o in err)


def test_cancel_while_validating() -> None:
    async def call(c: openai.AsyncOpenAI) -> Batch:
        b = await submit(c, jsonl(chat_line("a", "x")))
        return await finish(c, (await c.batches.cancel(b.id)).id, within=2)

    with FakeServer(batch_validate_seconds=3600) as srv:
        b = run(call, srv)
        assert (b.status, b.output_file_id, b.error_file_id, b.in_progress_at) == ("cancelled", None, None, None)
        assert b.request_counts is not None and b.request_counts.total == 0
        assert srv.answered() == Counter() and [f["purpose"] for f in srv.files] == ["batch"]


def test_input_file_deleted_after_create_still_runs() -> None:
    async def call(c: openai.AsyncOpenAI) -> Batch:
        b = await submit(c, jsonl(chat_line("a", "x"), chat_line("b", "y")))
        assert (await c.files.delete(b.input_file_id)).deleted is True
        return await finish(c, b.id)

    with FakeServer(batch_validate_seconds=0.05) as srv:
        b = run(call, srv)
        assert b.status == "completed" and b.request_counts is not None and b.request_counts.completed == 2
        assert [f["id"] for f in srv.files] == [b.output_file_id]  # the upload is gone, the output is there


def test_progress_is_monotone_through_every_status() -> None:
    seen: list[tuple[str, int]] = []

    async def call(c: openai.AsyncOpenAI) -> None:
        b = await submit(c, jsonl(*(chat_line(f"r{i}", f"q{i}") for i in range(60))))
        while b.status not in TERMINAL:
            b = await c.batches.retrieve(b.id)
            assert b.request_counts is not None
            seen.append((b.status, b.request_counts.completed))
            await asyncio.sleep(0.005)

    cfg = dict(batch_validate_seconds=0.15, batch_lines_per_second=200, batch_finalize_seconds=0.15)
    with FakeServer(**cfg) as srv:
        run(call, srv)
    statuses = [s for i, (s, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != s]
    assert statuses == ["validating", "in_progress", "finalizing", "completed"]
    counts = [n for _, n in seen]
    assert counts == sorted(counts) and counts[-1] == 60
    assert len({n for s, n in seen if s == "in_progress"}) > 3  # counts moved while in progress


def test_list_batches_pages_newest_first(server: FakeServer) -> None:
    async def call(c: openai.AsyncOpenAI) -> list[str]:
        f = await c.files.create(file=("in.jsonl", jsonl(chat_line("a", "x"))), purpose="batch")
        ids = []
        for _ in range(5):
            ids.append((await c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")).id)
        first = await c.batches.list(limit=2)
        assert [b.id for b in first.data] == [ids[4], ids[3]] and first.has_more is True
        second = await c.batches.list(limit=2, after=ids[3])
        assert [b.id for b in second.data] == [ids[2], ids[1]] and second.has_more is True
        third = await c.batches.list(limit=2, after=ids[1])
        assert [b.id for b in third.data] == [ids[0]] and third.has_more is False
        assert [b.id async for b in c.batches.list(limit=2)] == ids[::-1]
        return ids

    ids = run(call, server)
    status, body = raw(server, "GET", f"/v1/batches?limit=3&after={ids[4]}")
    assert status == 200 and (body["object"], body["first_id"], body["last_id"]) == ("list", ids[3], ids[1])
    status, body = raw(server, "GET", f"/v1/batches?after={ids[0]}")
    assert (body["data"], body["first_id"], body["last_id"], body["has_more"]) == ([], None, None, False)
    assert [b["id"] for b in server.batches] == ids


def test_wrong_key_is_401() -> None:
    async def wrong(c: openai.AsyncOpenAI) -> None:
        for call in (c.files.list(), c.files.create(file=("a.jsonl", b"{}"), purpose="batch"),
                     c.files.content("file-x"), c.batches.list(), c.batches.retrieve("batch_x")):
            with pytest.raises(openai.AuthenticationError) as info:
                await call
            assert info.value.code == "invalid_api_key"

    async def right(c: openai.AsyncOpenAI) -> list[Any]:
        return [f async for f in c.files.list()] + [b async for b in c.batches.list()]

    with FakeServer(api_key="sk-right") as srv:
        run(wrong, srv, api_key="sk-wrong")
        assert run(right, srv, api_key="sk-right") == [] and srv.files == []


def test_reset_clears_files_and_batches_and_servers_are_independent() -> None:
    async def start(c: openai.AsyncOpenAI) -> Batch:
        b = await submit(c, jsonl(chat_line("a", "x")))
        while b.status == "validating":
            b = await c.batches.retrieve(b.id)
        return b

    with FakeServer(batch_lines_per_second=0) as one, FakeServer() as two:
        held = run(start, one)  # never answered: rate 0
        assert held.status == "in_progress" and [b["status"] for b in one.batches] == ["in_progress"]
        assert len(one.files) == 1 and two.files == [] and two.batches == []
        with pytest.raises(openai.NotFoundError):
            run(lambda c: c.batches.retrieve(held.id), two)
        one.reset()  # the held batch's task is cancelled with it
        assert one.files == [] and one.batches == [] and one.answered() == Counter()
        with pytest.raises(openai.NotFoundError):
            run(lambda c: c.batches.retrieve(held.id), one)
        one.configure(batch_lines_per_second=None)
        again = run(start, one)
        assert run(lambda c: finish(c, again.id), one).status == "completed"
        assert [b["status"] for b in one.batches] == ["completed"] and one.answered() == Counter({"x": 1})


def test_control_endpoints_and_config(server: FakeServer) -> None:
    async def call(c: openai.AsyncOpenAI) -> Batch:
        return await finish(c, (await submit(c, jsonl(chat_line("a", "x")), metadata={"k": "v"})).id)

    b = run(call, server)
    status, batches = raw(server, "GET", "/_fake/batches")
    assert status == 200 and batches == server.batches
    assert [(r["id"], r["metadata"], r["lines"], r["status"]) for r in batches] == [(b.id, {"k": "v"}, 1, "completed")]
    status, files = raw(server, "GET", "/_fake/files")
    assert status == 200 and files == server.files
    assert [(f["id"], f["purpose"]) for f in files] == [(b.input_file_id, "batch"), (b.output_file_id, "batch_output")]
    status, cfg = raw(server, "POST", "/_fake/config", {"batch_lines_per_second": 5, "batch_expire_after": 2})
    assert status == 200 and (cfg["batch_lines_per_second"], cfg["batch_expire_after"]) == (5, 2)
    assert raw(server, "POST", "/_fake/config", {"batch_expire_after": 1.5})[0] == 400
    assert raw(server, "POST", "/_fake/reset", {})[0] == 200
    assert raw(server, "GET", "/_fake/batches") == (200, []) and raw(server, "GET", "/_fake/files") == (200, [])


def test_headers_per_minute() -> None:
    def headers(srv: FakeServer) -> list[tuple[int, str, str]]:
        async def main() -> list[tuple[int, str, str]]:
            got = []
            async with aiohttp.ClientSession() as s:
                for _ in range(11):
                    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
                    async with s.post(srv.url + "/chat/completions", data=body) as r:
                        h = r.headers
                        got.append((r.status, h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]))
            return got

        return asyncio.run(main())

    # 600 a minute enforced over 1 s: 10 requests at once, then 429s
    with FakeServer(rpm_limit=600, burst_seconds=1, headers_per_minute=True) as srv:
        got = headers(srv)
    assert [s for s, _, _ in got] == [200] * 10 + [429]
    assert [(lim, rem) for _, lim, rem in got] == [("600", str(599 - i)) for i in range(10)] + [("600", "590")]
    with FakeServer(rpm_limit=600, burst_seconds=1) as srv:  # the default: the short window's own units
        got = headers(srv)
    assert [(s, lim, rem) for s, lim, rem in got] == [(200, "600", str(9 - i)) for i in range(10)] + [(429, "600", "0")]


def test_cli_batch_options() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "batch_prompt.testing", "--port", "0", "--batch-lines-per-second", "50",
           "--batch-window-seconds", "2.5", "--batch-expire-after", "7", "--batch-max-lines", "10"]
    cmd.append("--headers-per-minute")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            assert select.select([proc.stdout], [], [], 15)[0], "no URL line"
            base = proc.stdout.readline().strip().split("=", 1)[1].removesuffix("/v1")

            async def config() -> Any:
                async with aiohttp.ClientSession() as s, s.get(base + "/_fake/config") as r:
                    return await r.json()

            cfg = asyncio.run(config())
            assert (cfg["batch_lines_per_second"], cfg["batch_window_seconds"]) == (50, 2.5)
            assert cfg["batch_expire_after"] == 7
            assert (cfg["batch_max_lines"], cfg["headers_per_minute"], cfg["batch_error_rate"]) == (10, True, 0.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_100k_line_batch_round_trip() -> None:
    n = 100_000
    data = b"".join(
        b'{"custom_id": "row-%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        b'"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": '
        b'"Do you like food number %d? %s"}], "max_tokens": 5}}\n' % (i, i, b"x" * 180)
        for i in range(n)
    )
    assert 30e6 < len(data) < 60e6

    async def call(c: openai.AsyncOpenAI) -> tuple[Batch, int, float]:
        t0 = time.monotonic()
        b = await finish(c, (await submit(c, data)).id, within=60)
        assert b.status == "completed" and b.error_file_id is None
        content = (await c.files.content(b.output_file_id or "")).content
        elapsed = time.monotonic() - t0
        seen = 0
        for i, line in enumerate(content.splitlines()):
            if i % 997 == 0:  # spot checks: every line parsed would measure the test, not the server
                o = json.loads(line)
                text = o["response"]["body"]["choices"][0]["message"]["content"]
                assert text.startswith(f"echo 0: Do you like food number {o['custom_id'][4:]}?")
            seen += 1
        return b, seen, elapsed

    with FakeServer(batch_max_lines=n) as srv:
        b, seen, elapsed = run(call, srv)
        assert sum(srv.answered().values()) == n
    assert b.request_counts is not None and (b.request_counts.completed, seen) == (n, n)
    print(f"100,000-line batch: upload, validate, answer, download in {elapsed:.2f} s")
    assert elapsed < 20
