"""What happens to a fake batch over time: validation, its lines answered, its output and error files.

A batch goes ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``, paced by the
settings in force when it was created (``FakeConfig.batch_*``):

* validating: ``batch_validate_seconds``, then every line of the input file is checked.  Any error
  fails the batch (``failed``, ``errors.data`` naming ``line`` (1-based), ``param``, ``code`` and
  ``message``, at most 100 of them): ``empty_file``, ``too_many_tasks`` (more than
  ``batch_max_lines`` lines), ``invalid_json_line`` (not JSON, or not an object),
  ``missing_required_parameter`` / ``invalid_type`` (``custom_id``, ``method``, ``url``, ``body``),
  ``invalid_value`` (a method other than POST), ``duplicate_custom_id``, ``invalid_url`` (a url other
  than the batch's endpoint), ``mismatched_model`` (a second model in one file).
* in_progress: ``batch_lines_per_second`` lines a second (None: as fast as the CPU allows), in a
  seeded random order (``random.Random(f"{seed}:{batch number}")``), so the output file's order is
  never the input's and a client must join on ``custom_id``.  Each line is answered as the live
  endpoint answers the same body (``FakeRequest``): a 200 goes to the output file and counts as
  answered (``FakeServer.answered()``); a body the endpoint refuses, or ``FAIL400``, a 400, and
  ``FAIL500`` or ``batch_error_rate`` a 500, go to the error file as ``{"response": {"status_code",
  "body": {"error": ...}}}``, counted in ``request_counts.failed``.
* finalizing: ``batch_finalize_seconds``; then both files are written at once and the batch is
  ``completed`` (a file only if it has lines, as OpenAI's: no errors, no ``error_file_id``).

``expired``: when ``batch_window_seconds`` have passed since creation, or ``batch_expire_after``
lines are done, before every line is: the lines done are in the output and error files, the others
in the error file with ``"response": null, "error": {"code": "batch_expired", ...}`` (not counted
as failed, as OpenAI counts them).  ``cancelling``: from the cancel request on no line is answered;
after ``batch_cancel_seconds`` the batch is ``cancelled``, its lines done kept and the others
``batch_cancelled``; cancelled while validating, it has no files.  Every change of state, count or
file is made in one step under the server's lock, so a reader sees a consistent state that only
moves forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from .api import FAIL400_ERROR, SERVER_ERROR, FakeConfig
from .files import FakeFile, FileStore
from .responses import request_for

_TIMES = ("in_progress", "expires", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
_MAX_ERRORS = 100
_CHUNK = 500  # lines answered between two yields to the event loop (~10 ms)
_EXPIRED = (
    b'{"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}'
)
_CANCELLED = b'{"code": "batch_cancelled", "message": "This request was cancelled before it could be executed."}'


@dataclasses.dataclass(eq=False)
class FakeBatch:
    """One batch.  Changed only with the server's lock held; ``gone`` once a reset dropped it."""

    id: str
    seq: int  # creation number, for list order, cursors and the seeded shuffle
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    settings: FakeConfig  # the config in force at creation: the batch's timing and faults
    created_at: float  # time.time()
    started: float  # time.monotonic(), the completion window's start
    status: str = "validating"
    model: str | None = None
    lines: int | None = None  # lines in the input file, once validation has counted them
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    at: dict[str, int] = dataclasses.field(default_factory=dict)  # "in_progress" -> unix time, ...
    gone: bool = False
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set on cancel (loop thread)

    def to_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
        }
        obj.update({f"{name}_at": self.at.get(name) for name in _TIMES})
        obj["request_counts"] = {"total": self.total, "completed": self.completed, "failed": self.failed}
        obj["metadata"] = self.metadata
        return obj

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input_file_id": self.input_file_id,
            "endpoint": self.endpoint,
            "metadata": self.metadata,
            "lines": self.lines,
            "status": self.status,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": self.errors,
        }


class _Gone(Exception):
    """The batch was dropped by a reset: change nothing more."""


def _error(line: int | None, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


class _Scan:
    """The input file, line by line: where each line is, and what is wrong with the file."""

    def __init__(self, data: bytes, endpoint: str, max_lines: int) -> None:
        self.data, self.endpoint, self.max_lines = data, endpoint, max_lines
        self.starts, self.ends = array("q"), array("q")
        self.errors: list[dict[str, Any]] = []
        self.model: str | None = None

    def _add(self, error: dict[str, Any]) -> None:
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(error)

    async def run(self) -> None:
        data, pos, size = self.data, 0, len(self.data)
        while pos < size:  # a final newline ends the last line, it does not start an empty one
            end = data.find(b"\n", pos)
            end = size if end < 0 else end
            self.starts.append(pos)
            self.ends.append(end)
            pos = end + 1
        lines = len(self.starts)
        if lines == 0:
            self._add(_error(None, "empty_file", "The batch input file is empty."))
        elif lines > self.max_lines:
            msg = f"The batch input file has {lines} requests; a batch may have at most {self.max_lines}."
            self._add(_error(None, "too_many_tasks", msg))
        else:
            seen: set[str] = set()
            for i in range(lines):
                error = self._check(i + 1, data[self.starts[i] : self.ends[i]], seen)
                if error is not None:
                    self._add(error)
                if i % 2000 == 1999:
                    await asyncio.sleep(0)

    def _check(self, n: int, line: bytes, seen: set[str]) -> dict[str, Any] | None:
        """What is wrong with line ``n`` (1-based), if anything."""
        try:
            obj = json.loads(line)
        except ValueError:
            return _error(n, "invalid_json_line", "This line is not parseable as valid JSON.")
        if not isinstance(obj, dict):
            return _error(n, "invalid_json_line", "This line is not a JSON object.")
        for field, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
            value = obj.get(field)
            if value is None:
                return _error(n, "missing_required_parameter", f"Missing required parameter: '{field}'.", field)
            if not isinstance(value, kind) or value == "":
                expected = "a non-empty string" if kind is str else "an object"
                return _error(n, "invalid_type", f"Invalid type for '{field}': expected {expected}.", field)
        if obj["method"] != "POST":
            return _error(n, "invalid_value", "Invalid value for 'method': only POST is supported.", "method")
        if obj["url"] != self.endpoint:
            msg = f"The URL provided for this request does not match the batch endpoint ({self.endpoint})."
            return _error(n, "invalid_url", msg, "url")
        custom_id = obj["custom_id"]
        if custom_id in seen:
            msg = "The custom_id for this request is a duplicate of another request; each must be unique."
            return _error(n, "duplicate_custom_id", msg, "custom_id")
        seen.add(custom_id)
        model = obj["body"].get("model")
        if isinstance(model, str):  # a line without a model is the endpoint's to refuse (a 400 line)
            if self.model is None:
                self.model = model
            elif model != self.model:
                msg = f"This request uses the model '{model}', the batch '{self.model}': a batch has one model."
                return _error(n, "mismatched_model", msg, "body.model")
        return None


class Lifecycle:
    """Drives one batch from ``validating`` to its end; ``run()`` is its task (see the module docstring).

    ``count_answered(prompts)`` is called with ``lock`` held for the prompts of every 200 line.
    """

    def __init__(
        self,
        batch: FakeBatch,
        input_file: FakeFile,
        lock: threading.Lock,
        files: FileStore,
        count_answered: Callable[[list[str]], None],
    ) -> None:
        self.batch, self.lock, self.files, self.count_answered = batch, lock, files, count_answered
        self.input = input_file.chunks[0]  # an upload is one chunk; held (even if the file is deleted) until the end
        self.rng = random.Random(f"{batch.settings.seed}:{batch.seq}")
        self.tag = batch.id[6:18]  # per-line ids: this batch's tag and the line's index
        self.btag = self.tag.encode()
        self.out: list[bytes] = []  # blocks of output lines, as they were answered
        self.err: list[bytes] = []

    @contextlib.contextmanager
    def _held(self) -> Iterator[FakeBatch]:
        with self.lock:
            if self.batch.gone:
                raise _Gone
            yield self.batch

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (inf: for ever), or less if a cancel comes."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if seconds == float("inf") else seconds):
                await self.batch.wake.wait()

    async def run(self) -> None:
        b, s = self.batch, self.batch.settings
        try:
            await self._pause(s.batch_validate_seconds)
            scan: _Scan | None = None
            if b.status == "validating":
                scan = _Scan(self.input, b.endpoint, s.batch_max_lines)
                await scan.run()
            with self._held():
                if scan is not None and b.status == "validating":  # not cancelled meanwhile
                    b.lines = len(scan.starts)
                    if scan.errors:
                        b.status, b.errors, b.at["failed"] = "failed", scan.errors, int(time.time())
                        return
                    b.status, b.model, b.total = "in_progress", scan.model, len(scan.starts)
                    b.at["in_progress"] = int(time.time())
                    b.at["expires"] = int(b.created_at + s.batch_window_seconds)
            if scan is None or b.status == "cancelling":
                await self._end("cancelled", [], None)
                return
            order = list(range(len(scan.starts)))
            self.rng.shuffle(order)
            done, ending = await self._process(scan, order)
            await self._end(ending, order[done:], scan)
        except _Gone:
            return
        except Exception as exc:  # a bug here must show in the batch, not leave it in progress for ever
            with self.lock:
                b.status, b.at["failed"] = "failed", int(time.time())
                b.errors = [_error(None, "fake_server_error", f"{type(exc).__name__}: {exc}")]

    async def _process(self, scan: _Scan, order: list[int]) -> tuple[int, str]:
        """Answer lines at the configured pace until all are done, the window closes or a cancel comes.

        Returns how many of ``order`` are done, and the ending: completed, expired or cancelled.
        """
        b, s = self.batch, self.batch.settings
        total, rate = len(order), s.batch_lines_per_second
        stop = total if s.batch_expire_after is None else min(total, s.batch_expire_after)
        deadline = b.started + s.batch_window_seconds
        t0, done = time.monotonic(), 0
        while True:
            if b.status == "cancelling":
                return done, "cancelled"
            if done == total:
                return done, "completed"
            now = time.monotonic()
            if done >= stop or now >= deadline:
                return done, "expired"
            due = stop if rate is None else min(stop, int((now - t0) * rate))
            if due <= done:
                next_line = float("inf") if not rate else (done + 1) / rate - (now - t0)
                await self._pause(min(next_line, deadline - now))
                continue
            self._answer(scan, order[done : min(due, done + _CHUNK)])
            done = min(due, done + _CHUNK)
            await asyncio.sleep(0)

    def _answer(self, scan: _Scan, indexes: list[int]) -> None:
        """Answer these lines as the live endpoint would, and count them, in one step."""
        settings, data = self.batch.settings, scan.data
        outs: list[bytes] = []
        errs: list[bytes] = []
        prompts: list[str] = []
        for i in indexes:
            line = json.loads(data[scan.starts[i] : scan.ends[i]])
            req = request_for(self.batch.endpoint, None, line["body"], settings)
            draw = self.rng.random()  # one draw per line, whatever its fate: a seed replays a batch
            if req.error is not None:
                status, body = 400, req.error
            elif req.has("FAIL400"):
                status, body = 400, FAIL400_ERROR
            elif req.has("FAIL500") or draw < settings.batch_error_rate:
                status, body = 500, SERVER_ERROR
            else:
                status, body = 200, req.response(f"{self.tag}{i:x}", 0, settings.usage_first_choice_only)
                prompts.extend(req.prompts)
            response = b'{"status_code": %d, "request_id": "req_%s%08x", "body": %s}' % (
                status, self.btag, i, body
            )
            (outs if status == 200 else errs).append(self._line(i, line["custom_id"], response, b"null"))
        with self._held() as b:
            b.completed += len(outs)
            b.failed += len(errs)
            self.count_answered(prompts)
        if outs:
            self.out.append(b"".join(outs))
        if errs:
            self.err.append(b"".join(errs))

    def _line(self, i: int, custom_id: str, response: bytes, error: bytes) -> bytes:
        return b'{"id": "batch_req_%s%08x", "custom_id": %s, "response": %s, "error": %s}\n' % (
            self.btag, i, json.dumps(custom_id).encode(), response, error
        )

    async def _end(self, ending: str, left: list[int], scan: _Scan | None) -> None:
        """Write the files and the final state; ``left``: the lines never answered (expired, cancelled)."""
        b, s = self.batch, self.batch.settings
        if ending == "completed":
            with self._held():
                b.status, b.at["finalizing"] = "finalizing", int(time.time())
            await asyncio.sleep(s.batch_finalize_seconds)
        elif ending == "cancelled":
            await asyncio.sleep(s.batch_cancel_seconds)
        if scan is not None and left:
            error = _EXPIRED if ending == "expired" else _CANCELLED
            for start in range(0, len(left), _CHUNK):
                block = []
                for i in left[start : start + _CHUNK]:
                    custom_id = json.loads(scan.data[scan.starts[i] : scan.ends[i]])["custom_id"]
                    block.append(self._line(i, custom_id, b"null", error))
                self.err.append(b"".join(block))
                await asyncio.sleep(0)
        with self._held():
            if self.out:
                b.output_file_id = self.files.add(f"{b.id}_output.jsonl", "batch_output", self.out).id
            if self.err:
                b.error_file_id = self.files.add(f"{b.id}_error.jsonl", "batch_output", self.err).id
            b.status, b.at[ending] = ending, int(time.time())
