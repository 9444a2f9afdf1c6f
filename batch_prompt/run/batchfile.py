"""Batch API files: a batch's input lines, written from its prompt rows, and its result lines, read back.

An input line is `{"custom_id", "method": "POST", "url", "body"}`: `custom_id` is the prompt row's id
in the job database (`p<id>`), `url` the job's API, `body` the stored request exactly as a live call
sends it. Legacy completions go one prompt per line: a line's identity is its prompt's, as the cache's
is, and its result is that prompt's own. Rows asking what another row of the same batch asks (the same
hash) get no line of their own; they are answered with it.

Results come in any order, in the output file (answers) and the error file (refused, expired, cancelled);
they are joined on `custom_id`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterable
from typing import IO, Any

from ..store.database import Claimed

URLS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}


def custom_id(row_id: int) -> str:
    return f"p{row_id}"


def row_id(custom: Any) -> int | None:
    """The prompt row a result line is for; None for a `custom_id` this database never wrote."""
    if isinstance(custom, str) and custom.startswith("p") and custom[1:].isdigit():
        return int(custom[1:])
    return None


def line(row: Claimed, api: str) -> bytes:
    """One input line (with its newline). The stored request is already canonical JSON: it goes in as is."""
    return f'{{"custom_id":"{custom_id(row.id)}","method":"POST","url":"{URLS[api]}","body":{row.request}}}\n'.encode()


def write_input(rows: Iterable[Claimed], api: str) -> tuple[IO[bytes], int]:
    """The input file of a batch's rows, one line per distinct request, in a temporary file (removed when
    closed); returns it (at its start) and its line count."""
    file = tempfile.TemporaryFile()  # noqa: SIM115  (handed to the caller, who closes it)
    seen: set[str] = set()
    for row in rows:
        if row.hash not in seen:
            seen.add(row.hash)
            file.write(line(row, api))
    file.seek(0)
    return file, len(seen)


def line_size(row: Claimed, api: str) -> int:
    return len(line(row, api))


async def read_results(lines: AsyncIterator[str], into: dict[int, str]) -> int:
    """Gather result lines into `into` (row id -> the line's text, parsed again when it is recorded: a
    batch's parsed answers would take several times their size in memory), skipping blank and foreign
    ones; returns how many lines could not be read (not JSON, no custom_id of ours)."""
    unreadable = 0
    async for text in lines:
        if not text.strip():
            continue
        try:
            parsed = json.loads(text)
        except ValueError:
            unreadable += 1
            continue
        row = row_id(parsed.get("custom_id")) if isinstance(parsed, dict) else None
        if row is None:
            unreadable += 1
            continue
        into[row] = text
    return unreadable
