"""A fake OpenAI-compatible HTTP server on loopback, for tests, benchmarks and a no-key demo.

It answers ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/responses`` (the
Responses API: ``responses.py``) and ``GET /v1/models`` deterministically: every choice is
``"echo {j}: {prompt}"`` (``j`` is the sample index), so a client can tell which prompt and sample
each answer belongs to (a prompt holding ``REPLY:`` is answered with the text after it, verbatim, so a
test picks its answers).  Faults can be injected:

* rates (seeded ``random.Random``; each request draws the same fixed number of values at
  arrival, so request ``seq`` k meets the same fate for a given seed): ``error_rate`` (500),
  ``drop_rate`` (connection closed, no response), ``reset_rate`` (a 200 whose connection is
  cut mid-body, after its headers and half its bytes), ``malformed_rate`` (200 with truncated
  JSON), ``hang_rate`` (sleep ``hang_seconds`` first), ``wrong_choices_rate`` (one choice
  fewer or one more than ``n``), ``missing_choice_rate`` (a billed 200 whose choices lack one, at a random
  index: outcome ``missing_choice``), ``rate_limit_rate`` (a 429: retry after ``rate_limit_retry_after`` s);
* prompt markers: ``FAIL400`` (permanent 400), ``FAIL500`` (always 500), ``HANG``;
* logprobs as OpenAI shapes them when asked for (chat ``logprobs: true`` with ``top_logprobs`` 0..20,
  which without it is a 400; legacy ``logprobs`` 0..5): a token per word of the answer, each at -0.1
  with made-up alternatives, the first token's alternatives ``top_logprobs`` ({token: logprob}) when set;
* ``usage_first_choice_only``: usage counted as llama.cpp's server counts it for ``n > 1`` or a list
  of prompts (the first prompt's first choice only);
* service tiers as OpenAI serves them: a request's ``service_tier`` is echoed in a chat answer ("flex",
  "priority", "scale", else "default") and recorded; ``flex_capacity_rate``: that share of flex requests
  answered 429 ``resource_unavailable`` (flex processing out of capacity: not billed; a retry-after only
  with ``flex_retry_after``; outcome ``capacity_429``), drawn from a seeded generator of its own, one value a request;
* usage details: ``reasoning_tokens`` hidden reasoning tokens per choice (billed in ``completion_tokens``,
  said in ``completion_tokens_details.reasoning_tokens``), ``cached_tokens`` of the prompt tokens said
  cached (``prompt_tokens_details.cached_tokens``, at most the prompt tokens), chat answers only;
* ``quota_exhausted`` (429 insufficient_quota), ``fail_first`` (the first N requests get 500),
  ``outage_until`` (a ``time.monotonic()`` deadline before which every request gets 503);
* ``rpm_limit`` / ``tpm_limit``: continuously refilling token buckets (capacity
  ``limit * burst_seconds / 60``), with OpenAI's ``x-ratelimit-*``, ``retry-after`` and
  ``retry-after-ms`` headers (``headers_per_minute``: counted in a minute's units, as OpenAI's
  are while it enforces over shorter windows; see ``limits.Bucket``); ``rpm_limits`` /
  ``tpm_limits`` (model -> limit): a model's own buckets and headers, as OpenAI limits per model.

Checks run in this order: auth (401), body validation (400 "invalid"), outage (503),
fail_first (500), quota (429), FAIL400, flex capacity (429), rpm/tpm buckets (429, not counted), random 429.  Those
answer at once.  Otherwise the request counts against the buckets; HANG / hang_rate is decided
(and recorded) on arrival; ``latency`` (+ uniform ``latency_jitter``) is slept; then FAIL500,
error, drop, reset, malformed, wrong_choices, missing_choice, wrong_index and stall apply in that order;
otherwise the answer is ok. Hostile modes: ``wrong_index_rate`` (a billed 200 whose last choice has an
index past every prompt's), ``stall_rate`` (a 200's headers, then silence, or with ``stall_bytes`` the
body a byte every ``stall_seconds``: outcome ``stalled``, never answered); an absurd
``rate_limit_retry_after`` (``1e9``) with ``rate_limit_rate``; truncated bodies forever with
``malformed_rate=1``.

Every completion request (not ``/v1/models`` or ``/_fake/*``) is recorded (``FakeServer.record``) with its
outcome and arrival time ``t`` (a 200 whose body is whole: its ``usage``); ``"client_closed"``: the client
went away before the answer was written.  ``answered()`` counts prompts whose full 200 response was
written (outcome "ok", "missing_choice", or a "hang" that ended in time), so tests can assert nothing was answered
twice.  Run it in-process (``with FakeServer(latency=0.1) as srv: ... srv.url``, a background
thread with its own event loop) or as a process::

    python -m batch_prompt.testing --port 0 --latency 0.2

which prints one line ``FAKE_SERVER_URL=http://127.0.0.1:PORT/v1`` and serves until
SIGINT/SIGTERM; it is then controlled over HTTP: ``GET /_fake/record``, ``GET /_fake/answered``,
``GET|POST /_fake/config`` and ``POST /_fake/reset``.  It only ever binds 127.0.0.1.

It also serves the Files and Batch APIs (``files.py``, ``batches.py``; a batch's life is
``lifecycle.py``, paced by the ``batch_*`` settings): a batch line answered with a 200 counts in
``answered()`` as a live request does, and ``FakeServer.files`` / ``FakeServer.batches``
(``GET /_fake/files``, ``GET /_fake/batches``) say which files exist and which batches were made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple

from aiohttp import web

from .api import (
    FAIL400_ERROR,
    FLEX_CAPACITY_ERROR,
    MODELS,
    SERVER_ERROR,
    FakeConfig,
    FakeRequest,
    check_config,
    error_body,
    format_duration,
)
from .batches import BatchAPI
from .limits import Limits
from .responses import request_for

__all__ = ["FakeConfig", "FakeServer", "format_duration"]

HOST = "127.0.0.1"
# Outcomes of a full 200 that a provider bills: each prompt in them counts in answered().
ANSWERED = ("ok", "hang", "missing_choice", "wrong_index")  # billed 200s
_N_DRAWS = 8  # random values drawn per request, whatever the config (keeps seeds reproducible)


class _Admission(NamedTuple):
    entry: dict[str, Any]
    front: tuple[int, str, bytes] | None  # (status, outcome, body) answered at once, without latency
    headers: dict[str, str]
    latency: float
    draws: list[float]


class FakeServer:
    """The fake server; see the module docstring.  ``FakeServer(port=0, **FakeConfig fields)``."""

    def __init__(self, port: int = 0, **config: Any) -> None:
        check_config(config)
        self.port = port
        self._lock = threading.Lock()
        self._config = FakeConfig(**config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._batch_api = BatchAPI(self._lock, lambda: self._config, self._count_batch_answers)
        self._reset_state()

    # -- state (always called with the lock held, or before start) -----------------------------
    def _reset_state(self) -> None:
        self._record: list[dict[str, Any]] = []
        self._answered: Counter[str] = Counter()
        self._seq = 0
        self._rng = random.Random(self._config.seed)
        self._capacity_rng = random.Random(self._config.seed)  # its own: other rates' fates stay as they were
        self._make_buckets()
        self._batch_api.clear()

    def _count_batch_answers(self, prompts: list[str]) -> None:
        self._answered.update(prompts)  # the lock is held (BatchAPI's contract)

    def _make_buckets(self) -> None:
        self._limits = Limits(self._config, time.monotonic())

    # -- public API (thread-safe) ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL for openai's ``base_url``: ``http://127.0.0.1:<port>/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def config(self) -> FakeConfig:
        with self._lock:
            return dataclasses.replace(self._config)

    @property
    def record(self) -> list[dict[str, Any]]:
        """A copy of the request record (one dict per completion request)."""
        with self._lock:
            return [dict(e) for e in self._record]

    def answered(self) -> Counter[str]:
        """How many times each prompt got a full 200 response, live or as a batch line."""
        with self._lock:
            return Counter(self._answered)

    @property
    def files(self) -> list[dict[str, Any]]:
        """The File objects of the files that exist (uploads and batch outputs), oldest first."""
        with self._lock:
            return self._batch_api.files.store.record()

    @property
    def batches(self) -> list[dict[str, Any]]:
        """One dict per batch created, oldest first: id, input_file_id, endpoint, metadata, lines,
        status, request_counts, output_file_id, error_file_id, errors."""
        with self._lock:
            return self._batch_api.record()

    def reset(self) -> None:
        """Clear the record, the sequence counter, the rate-limit buckets, files and batches; reseed the RNG."""
        with self._lock:
            self._reset_state()

    def configure(self, **kw: Any) -> None:
        """Change fault settings (``FakeConfig`` fields); unknown key -> TypeError."""
        check_config(kw)
        with self._lock:
            self._config = dataclasses.replace(self._config, **kw)
            if kw.keys() & {"rpm_limit", "tpm_limit", "rpm_limits", "tpm_limits", "burst_seconds",
                            "headers_per_minute"}:
                self._make_buckets()
            if "seed" in kw:
                self._rng = random.Random(self._config.seed)
                self._capacity_rng = random.Random(self._config.seed)

    # -- request handling -----------------------------------------------------------------------
    def _admit(self, req: FakeRequest, path: str, auth_ok: bool) -> _Admission:
        """Number the request, draw its random values, apply the front-door checks (under the lock)."""
        with self._lock:
            c, now = self._config, time.monotonic()
            self._seq += 1
            seq = self._seq
            draws = [self._rng.random() for _ in range(_N_DRAWS)]
            capacity = self._capacity_rng.random()
            entry: dict[str, Any] = {
                "seq": seq,
                "path": path,
                "model": req.model,
                "prompts": req.prompts,
                "n": req.n,
                "seed": req.seed,
                "service_tier": req.service_tier,
                "outcome": "",
                "status": None,
                "t": now,
            }
            headers: dict[str, str] = {}
            front: tuple[int, str, bytes] | None = None
            if not auth_ok:
                body = error_body("Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")
                front = (401, "error_401", body)
            elif req.error is not None:
                front = (400, "invalid", req.error)
            elif c.outage_until is not None and now < c.outage_until:
                body = error_body("The engine is currently overloaded, please try again later.", "server_error")
                front = (503, "error_5xx", body)
            elif seq <= c.fail_first:
                front = (500, "error_5xx", SERVER_ERROR)
            elif c.quota_exhausted:
                body = error_body(
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    None,
                    "insufficient_quota",
                )
                front = (429, "error_429", body)
            elif req.has("FAIL400"):
                front = (400, "error_400", FAIL400_ERROR)
            elif req.service_tier == "flex" and capacity < c.flex_capacity_rate:
                front = (429, "capacity_429", FLEX_CAPACITY_ERROR)
                if c.flex_retry_after is not None:
                    headers = {"retry-after": str(math.ceil(c.flex_retry_after))}
            else:
                tokens = req.prompt_tokens() + (req.max_tokens or 16) * req.n * len(req.prompts)
                refused = self._limits.admit(req.model, tokens, now)
                if refused is not None:
                    kind, limit, cost, wait = refused
                    unit = "RPM" if kind == "requests" else "TPM"
                    too_large = " (Request too large)" if cost > limit else ""
                    msg = (
                        f"Rate limit reached for {kind} per min ({unit}) on {req.model}{too_large}: "
                        f"Limit {limit}, Requested {cost}. Please try again in {format_duration(wait)}."
                    )
                    front = (429, "error_429", error_body(msg, kind, None, "rate_limit_exceeded"))
                elif draws[1] < c.rate_limit_rate:
                    wait = c.rate_limit_retry_after
                    msg = "Rate limit reached for requests (simulated). Try again in " + format_duration(wait) + "."
                    front = (429, "error_429", error_body(msg, "requests", None, "rate_limit_exceeded"))
                if front is not None:
                    headers = {
                        "retry-after": str(math.ceil(wait)),
                        "retry-after-ms": str(math.ceil(wait * 1000)),
                    }
            headers.update(self._limits.headers(req.model))
            latency = 0.0
            if front is None:
                latency = c.latency + draws[0] * c.latency_jitter
                if req.has("HANG") or draws[4] < c.hang_rate:
                    entry["outcome"] = "hang"  # recorded on arrival
                    latency += c.hang_seconds
                    self._record.append(entry)
            return _Admission(entry, front, headers, latency, draws)

    def _finish(self, entry: dict[str, Any], outcome: str, status: int | None) -> None:
        """Set the outcome (before anything is written: the client may look at once) and record it."""
        with self._lock:
            if entry["outcome"] != "hang":
                self._record.append(entry)
            entry.update(outcome=outcome, status=status)
            if status == 200 and outcome in ANSWERED:
                self._answered.update(entry["prompts"])

    def _unanswer(self, entry: dict[str, Any]) -> None:
        """The response could not be written after all: the client went away."""
        with self._lock:
            if entry["status"] != 200:
                return
            if entry["outcome"] in ANSWERED:
                self._answered.subtract(entry["prompts"])
                self._answered = +self._answered  # drop zero counts
            entry.update(outcome="hang" if entry["outcome"] == "hang" else "client_closed", status=None)

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        req = request_for(request.path, raw, None, self._config)
        key = self._config.api_key
        auth_ok = key is None or request.headers.get("Authorization") == f"Bearer {key}"
        adm = self._admit(req, request.path, auth_ok)
        entry, c = adm.entry, self._config
        recorded = entry["outcome"] == "hang"
        try:
            if adm.front is not None:
                status, outcome, body = adm.front
            else:
                if adm.latency > 0:
                    await asyncio.sleep(adm.latency)
                draws, status, delta, body = adm.draws, 200, 0, b""
                if recorded:
                    outcome = "hang"
                elif req.has("FAIL500") or draws[2] < c.error_rate:
                    status, outcome, body = 500, "error_5xx", SERVER_ERROR
                elif draws[3] < c.drop_rate:
                    self._finish(entry, "dropped", None)
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response()  # never written: the transport is closed
                elif draws[3] < c.drop_rate + c.reset_rate:  # one draw: drop and reset exclude each other
                    self._finish(entry, "reset", 200)
                    body = req.response(entry["seq"], 0, c.usage_first_choice_only)
                    return await self._reset_mid_body(request, body, adm.headers)
                elif draws[5] < c.malformed_rate:
                    outcome = "malformed"
                elif draws[6] < c.wrong_choices_rate:
                    outcome, delta = "wrong_choices", (-1 if draws[7] < 0.5 else 1)
                elif draws[6] < c.wrong_choices_rate + c.missing_choice_rate:
                    outcome = "missing_choice"
                elif draws[6] < c.wrong_choices_rate + c.missing_choice_rate + c.wrong_index_rate:
                    outcome = "wrong_index"
                elif draws[4] < c.hang_rate + c.stall_rate:  # (hang_rate took the draws below it)
                    self._finish(entry, "stalled", None)
                    recorded = True
                    return await self._stall(request, req.response(entry["seq"]), adm.headers)
                else:
                    outcome = "ok"
                if status == 200:
                    drop = draws[7] if outcome == "missing_choice" else None
                    body = req.response(entry["seq"], delta, c.usage_first_choice_only, drop, outcome == "wrong_index",
                                        record=None if outcome == "malformed" else entry)
                    if outcome == "malformed":
                        body = body[: len(body) // 2]
            self._finish(entry, outcome, status)
            recorded = True
            resp = web.Response(body=body, status=status, headers=adm.headers, content_type="application/json")
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except ConnectionError:
                self._unanswer(entry)
            return resp
        except asyncio.CancelledError:  # the client went away (handler_cancellation=True)
            if recorded:
                self._unanswer(entry)
            else:
                self._finish(entry, "client_closed", None)
            raise

    async def _stall(self, request: web.Request, body: bytes, headers: Mapping[str, str]) -> web.StreamResponse:
        """Send the headers of a 200, then nothing, or the body a byte every `stall_seconds` (slowloris),
        until the client gives up."""
        resp = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(len(body)):
            await asyncio.sleep(self._config.stall_seconds)
            if self._config.stall_bytes:
                await resp.write(body[i : i + 1])
        return resp

    @staticmethod
    async def _reset_mid_body(request: web.Request, body: bytes, headers: Mapping[str, str]) -> web.StreamResponse:
        """Send the headers of a full 200 and half its body, then cut the connection."""
        resp = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        return resp

    async def _models(self, request: web.Request) -> web.StreamResponse:
        key = self._config.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            body = error_body("Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")
            return web.Response(body=body, status=401, content_type="application/json")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "batch-prompt"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        body = error_body(
            f"Unknown request URL: {request.method} {request.path}.",
            "invalid_request_error",
            None,
            "unknown_url",
        )
        return web.Response(body=body, status=404, content_type="application/json")

    # -- control endpoints ----------------------------------------------------------------------
    async def _ctl_record(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.record)

    async def _ctl_answered(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(self.answered()))

    async def _ctl_config(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            try:
                kw = await request.json()
                if not isinstance(kw, dict):
                    raise TypeError("config must be a JSON object")
                self.configure(**kw)
            except (ValueError, TypeError) as exc:
                return web.Response(
                    body=error_body(str(exc), "invalid_request_error"), status=400, content_type="application/json"
                )
        return web.json_response(dataclasses.asdict(self.config))

    async def _ctl_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.json_response({"ok": True})

    # -- lifecycle ------------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._completion)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/responses", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_fake/record", self._ctl_record)
        app.router.add_get("/_fake/answered", self._ctl_answered)
        app.router.add_route("*", "/_fake/config", self._ctl_config)
        app.router.add_post("/_fake/reset", self._ctl_reset)
        self._batch_api.add_routes(app.router)
        app.router.add_route("*", "/v1/{tail:.*}", self._not_found)
        return app

    async def astart(self) -> FakeServer:
        """Start serving on the running event loop (the CLI uses this; tests use ``start``)."""
        runner = web.AppRunner(self._app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.25)
        await runner.setup()
        await web.TCPSite(runner, HOST, self.port, backlog=2048).start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def astop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self._batch_api.aclose()

    def start(self) -> FakeServer:
        """Serve from a background thread with its own event loop; returns once listening."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self.astop())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeServer:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()
