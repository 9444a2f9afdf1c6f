"""Tests for batch_prompt.testing: real HTTP through the openai SDK and aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
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

from batch_prompt.testing import FakeServer, format_duration

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def run(fn: Callable[[openai.AsyncOpenAI], Awaitable[T]], srv: FakeServer, **client_kw: Any) -> T:
    """Run ``fn(client)`` with a fresh openai client (aiohttp transport, no retries)."""

    async def main() -> T:
        kw: dict[str, Any] = {"api_key": "sk-test", "max_retries": 0, **client_kw}
        client = openai.AsyncOpenAI(base_url=srv.url, http_client=openai.DefaultAioHttpClient(), **kw)
        async with client:
            return await fn(client)

    return asyncio.run(main())


def chat(content: str, **kw: Any) -> Callable[[openai.AsyncOpenAI], Awaitable[Any]]:
    async def call(c: openai.AsyncOpenAI) -> Any:
        messages: Any = [{"role": "user", "content": content}]
        return await c.chat.completions.create(model="fake-model", messages=messages, **kw)

    return call


def raw_post(srv: FakeServer, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POST with aiohttp; returns (status, headers, body bytes)."""

    async def main() -> tuple[int, Any, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        base = srv.url.removesuffix("/v1")
        async with aiohttp.ClientSession() as s, s.post(base + path, data=data, headers=headers) as r:
            return r.status, r.headers, await r.read()

    return asyncio.run(main())


def raw_get(srv: FakeServer, path: str) -> Any:
    async def main() -> Any:
        async with aiohttp.ClientSession() as s, s.get(srv.url.removesuffix("/v1") + path) as r:
            return await r.json()

    return asyncio.run(main())


def outcomes(srv: FakeServer) -> list[str]:
    return [e["outcome"] for e in sorted(srv.record, key=lambda e: e["seq"])]


def test_chat_n3_contents_and_usage(server: FakeServer) -> None:
    async def call(c: openai.AsyncOpenAI) -> Any:
        return await c.chat.completions.create(
            model="fake-model",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello world"},
            ],
            n=3,
            temperature=0.7,
        )

    r = run(call, server)
    assert r.id == "chatcmpl-1" and r.object == "chat.completion" and r.model == "fake-model"
    assert r.system_fingerprint == "fp_fake"
    assert [(ch.index, ch.message.role, ch.message.content, ch.finish_reason) for ch in r.choices] == [
        (j, "assistant", f"echo {j}: hello world", "stop") for j in range(3)
    ]
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        (14 + 11) // 4,
        12,
        18,
    )
    (entry,) = server.record
    assert entry["prompts"] == ["hello world"] and entry["n"] == 3 and entry["outcome"] == "ok"
    assert entry["status"] == 200 and entry["path"] == "/v1/chat/completions" and entry["seq"] == 1
    r = run(chat("one two three four five", max_tokens=3, n=2), server)
    assert r.usage is not None and r.usage.completion_tokens == 6 and r.usage.prompt_tokens == 5


def test_completions_list_of_prompts(server: FakeServer) -> None:
    prompts = ["alpha", "beta gamma", "a much longer prompt here", "x"]

    async def call(c: openai.AsyncOpenAI) -> Any:
        return await c.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts, n=2)

    r = run(call, server)
    assert r.object == "text_completion" and r.id == "cmpl-1"
    assert [ch.index for ch in r.choices] == list(range(8))
    for ch in r.choices:
        i, j = divmod(ch.index, 2)
        assert ch.text == f"echo {j}: {prompts[i]}" and ch.finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == sum(max(1, len(p) // 4) for p in prompts)
    assert r.usage.completion_tokens == sum(2 * (2 + len(p.split())) for p in prompts)
    assert server.record[0]["prompts"] == prompts and server.record[0]["path"] == "/v1/completions"
    assert server.answered() == Counter(prompts)


def test_fail400_marker(server: FakeServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        run(chat("please FAIL400 now"), server)
    assert info.value.code == "invalid_prompt" and info.value.param == "messages"
    assert outcomes(server) == ["error_400"] and server.record[0]["status"] == 400
    assert server.answered() == Counter()


def test_fail500_and_error_rate(server: FakeServer) -> None:
    with pytest.raises(openai.InternalServerError):
        run(chat("FAIL500"), server)
    server.configure(error_rate=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        run(chat("fine"), server)
    assert info.value.type == "server_error"
    assert outcomes(server) == ["error_5xx", "error_5xx"]


def test_api_key(server: FakeServer) -> None:
    server.configure(api_key="sk-right")
    with pytest.raises(openai.AuthenticationError) as info:
        run(chat("hi"), server)
    assert info.value.code == "invalid_api_key"
    assert run(chat("hi"), server, api_key="sk-right").choices[0].message.content == "echo 0: hi"
    assert outcomes(server) == ["error_401", "ok"]


def test_quota_exhausted(server: FakeServer) -> None:
    server.configure(quota_exhausted=True)
    with pytest.raises(openai.RateLimitError) as info:
        run(chat("hi"), server)
    assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
    assert outcomes(server) == ["error_429"]


def test_rpm_limit_headers_and_refill(server: FakeServer) -> None:
    server.configure(rpm_limit=60, burst_seconds=1)

    async def two(c: openai.AsyncOpenAI) -> tuple[Any, openai.RateLimitError]:
        first = await c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "a"}]
        )
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
        return first, info.value

    first, err = run(two, server)
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] in ("1s", *(f"{ms}ms" for ms in range(900, 1000)))
    h = err.response.headers
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert 800 <= int(h["retry-after-ms"]) <= 1000 and h["retry-after"] == "1"
    assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in h
    assert outcomes(server) == ["ok", "error_429"]

    # 600 rpm with a 0.1 s burst: one request at once, the next 0.1 s later
    server.configure(rpm_limit=600, burst_seconds=0.1)
    run(chat("c"), server)
    with pytest.raises(openai.RateLimitError) as info:
        run(chat("d"), server)
    time.sleep(int(info.value.response.headers["retry-after-ms"]) / 1000)
    assert run(chat("d"), server).choices[0].message.content == "echo 0: d"


def test_tpm_limit(server: FakeServer) -> None:
    server.configure(tpm_limit=6000, burst_seconds=1)  # capacity 100 tokens
    status, headers, _ = raw_post(
        server,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 40},
    )
    assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "50"  # 100 - (10 + 40)
    assert headers["x-ratelimit-limit-tokens"] == "6000" and "x-ratelimit-limit-requests" not in headers
    status, headers, body = raw_post(
        server,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "n": 2},
    )  # 100 + 2 * 16 tokens
    assert status == 429 and json.loads(body)["error"]["type"] == "tokens"
    assert 400 <= int(headers["retry-after-ms"]) <= 500  # a full bucket is needed: 50 tokens at 100/s


def test_per_model_limits_are_buckets_and_headers_of_their_own(server: FakeServer) -> None:
    # as OpenAI's: each listed model has its own limit; the others share the server-wide one
    server.configure(rpm_limit=60, rpm_limits={"a": 120, "b": 180}, tpm_limits={"b": 6000}, burst_seconds=1)

    def post(model: str) -> tuple[int, Any]:
        status, headers, _ = raw_post(server, "/v1/chat/completions",
                                      {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})
        return status, headers

    got = [(model, *post(model)) for model in ("a", "a", "a", "b", "b", "b", "b", "c", "c", "d")]
    assert [(model, status) for model, status, _ in got] == [
        ("a", 200), ("a", 200), ("a", 429),  # 2 a second
        ("b", 200), ("b", 200), ("b", 200), ("b", 429),  # 3 a second, untouched by a's
        ("c", 200), ("c", 429), ("d", 429),  # 1 a second, shared by every model not listed
    ]
    limits = [(model, h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) for model, _, h in got]
    assert limits == [("a", "120", "1"), ("a", "120", "0"), ("a", "120", "0"), ("b", "180", "2"), ("b", "180", "1"),
                      ("b", "180", "0"), ("b", "180", "0"), ("c", "60", "0"), ("c", "60", "0"), ("d", "60", "0")]
    assert [h.get("x-ratelimit-limit-tokens") for model, _, h in got if model != "b"] == [None] * 6
    assert {h["x-ratelimit-limit-tokens"] for model, _, h in got if model == "b"} == {"6000"}
    _, _, body = raw_post(server, "/v1/chat/completions",
                          {"model": "a", "messages": [{"role": "user", "content": "y"}]})
    assert "Rate limit reached for requests per min (RPM) on a: Limit 120" in json.loads(body)["error"]["message"]
    with pytest.raises(ValueError, match="rpm_limits must map model names to positive integers"):
        server.configure(rpm_limits={"a": 0})
    with pytest.raises(TypeError):
        server.configure(tpm_limits=[("a", 1)])


def test_random_rate_limit(server: FakeServer) -> None:
    server.configure(rate_limit_rate=1.0, rate_limit_retry_after=0.25)
    with pytest.raises(openai.RateLimitError) as info:
        run(chat("hi"), server)
    assert info.value.response.headers["retry-after-ms"] == "250"
    assert info.value.response.headers["retry-after"] == "1"


def test_drop(server: FakeServer) -> None:
    server.configure(drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        run(chat("hi"), server)
    assert outcomes(server) == ["dropped"] and server.record[0]["status"] is None
    assert server.answered() == Counter()


def test_malformed(server: FakeServer) -> None:
    server.configure(malformed_rate=1.0)

    async def call(c: openai.AsyncOpenAI) -> Any:
        return await c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )

    raw = run(call, server)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/json")
    assert raw.content.startswith(b'{"id": "chatcmpl-1"')
    with pytest.raises(ValueError):
        json.loads(raw.content)
    assert outcomes(server) == ["malformed"] and server.answered() == Counter()


def test_wrong_choices(server: FakeServer) -> None:
    server.configure(wrong_choices_rate=1.0)
    counts = {len(run(chat(f"p{i}", n=2), server).choices) for i in range(8)}
    assert counts <= {1, 3} and counts
    assert set(outcomes(server)) == {"wrong_choices"}


def test_hang_marker_and_rate(server: FakeServer) -> None:
    with pytest.raises(openai.APITimeoutError):
        run(chat("HANG please"), server, timeout=0.5)
    assert outcomes(server) == ["hang"] and server.record[0]["status"] is None
    server.configure(hang_rate=1.0, hang_seconds=0.1)  # a short hang ends with a normal answer
    assert run(chat("slow"), server).choices[0].message.content == "echo 0: slow"
    assert outcomes(server) == ["hang", "hang"] and server.record[1]["status"] == 200
    assert server.answered() == Counter({"slow": 1})


def test_latency_and_client_closed(server: FakeServer) -> None:
    server.configure(latency=0.2, latency_jitter=0.05)
    t0 = time.monotonic()
    run(chat("hi"), server)
    assert 0.2 <= time.monotonic() - t0 < 1.0
    server.configure(latency=2.0)
    with pytest.raises(openai.APITimeoutError):
        run(chat("gone"), server, timeout=0.2)
    deadline = time.monotonic() + 2
    while outcomes(server) != ["ok", "client_closed"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes(server) == ["ok", "client_closed"]
    assert server.answered() == Counter({"hi": 1})


def test_fail_first_and_outage(server: FakeServer) -> None:
    server.configure(fail_first=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            run(chat("x"), server)
    run(chat("x"), server)
    server.reset()
    server.configure(fail_first=0, outage_until=time.monotonic() + 0.3)
    with pytest.raises(openai.InternalServerError) as info:
        run(chat("y"), server)
    assert info.value.status_code == 503
    time.sleep(0.3)
    run(chat("y"), server)
    assert outcomes(server) == ["error_5xx", "ok"]


def test_answered_counts(server: FakeServer) -> None:
    for p in ["a", "b", "a", "FAIL400 c"]:
        with contextlib.suppress(openai.BadRequestError):
            run(chat(p), server)
    assert server.answered() == Counter({"a": 2, "b": 1})
    assert [e["seq"] for e in server.record] == [1, 2, 3, 4]
    server.reset()
    assert server.record == [] and server.answered() == Counter()
    assert run(chat("z"), server).id == "chatcmpl-1"


def test_invalid_requests(server: FakeServer) -> None:
    status, _, body = raw_post(server, "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = raw_post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert status == 400 and json.loads(body)["error"]["param"] == "model"
    status, _, _ = raw_post(server, "/v1/completions", {"model": "m"})
    assert status == 400
    status, _, _ = raw_post(server, "/v1/chat/completions", {"model": "m", "messages": [], "n": 1})
    assert status == 400
    assert outcomes(server) == ["invalid"] * 4
    status, _, body = raw_post(server, "/v1/embeddings", {"model": "m"})
    assert status == 404 and "error" in json.loads(body)


def test_models(server: FakeServer) -> None:
    async def call(c: openai.AsyncOpenAI) -> list[str]:
        return [m.id async for m in c.models.list()]

    assert "fake-model" in run(call, server)


def test_configure_validation(server: FakeServer) -> None:
    with pytest.raises(TypeError):
        server.configure(eror_rate=0.5)
    with pytest.raises(TypeError):
        FakeServer(bogus=1)
    with pytest.raises(TypeError):
        server.configure(rpm_limit="60")
    with pytest.raises(ValueError):
        server.configure(latency=-1.0)


def test_seeded_faults_are_reproducible() -> None:
    runs = []
    for _ in range(2):
        with FakeServer(seed=7, error_rate=0.5) as srv:
            for i in range(12):
                raw_post(
                    srv,
                    "/v1/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
                )
            runs.append(outcomes(srv))
    assert runs[0] == runs[1] and set(runs[0]) == {"ok", "error_5xx"}


def test_control_endpoints(server: FakeServer) -> None:
    run(chat("hi"), server)
    record = raw_get(server, "/_fake/record")
    assert [(e["seq"], e["prompts"], e["outcome"]) for e in record] == [(1, ["hi"], "ok")]
    assert raw_get(server, "/_fake/answered") == {"hi": 1}
    status, _, body = raw_post(server, "/_fake/config", {"error_rate": 1.0, "seed": 3})
    assert status == 200 and json.loads(body)["error_rate"] == 1.0
    assert server.config.error_rate == 1.0
    status, _, _ = raw_post(server, "/_fake/config", {"no_such_setting": 1})
    assert status == 400
    with pytest.raises(openai.InternalServerError):
        run(chat("hi"), server)
    status, _, _ = raw_post(server, "/_fake/reset", {})
    assert status == 200 and raw_get(server, "/_fake/record") == [] and raw_get(server, "/_fake/answered") == {}


def test_stop_with_request_in_flight() -> None:
    srv = FakeServer(hang_rate=1.0).start()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    deadline = time.monotonic() + 2
    while not srv.record and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 3
    assert outcomes(srv) == ["hang"]
    sock.close()


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.12) == "120ms"
    assert format_duration(0.0001) == "1ms"
    assert format_duration(0.9999) == "1s"
    assert format_duration(1) == "1s"
    assert format_duration(8.64) == "8.64s"
    assert format_duration(360) == "6m0s"
    assert format_duration(61.5) == "1m1.5s"
    assert format_duration(3725) == "1h2m5s"


def test_cli_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "batch_prompt.testing", "--port", "0", "--api-key", "k", "--seed", "1"]
    cmd += ["--latency", "0.01", "--rpm-limit", "6000", "--burst-seconds", "1", "--rpm-limits", "m=600",
            "--rpm-limits", "gpt-4o-mini=120", "--tpm-limits", "m=100000"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            ready, _, _ = select.select([proc.stdout], [], [], 15)
            assert ready, "no URL line"
            line = proc.stdout.readline()
            assert line.startswith("FAKE_SERVER_URL=http://127.0.0.1:") and line.endswith("/v1\n")
            url = line.strip().split("=", 1)[1]

            async def call() -> Any:
                client = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
                async with client:
                    return await client.chat.completions.with_raw_response.create(
                        model="m", messages=[{"role": "user", "content": "cli"}]
                    )

            raw = asyncio.run(call())
            assert raw.parse().choices[0].message.content == "echo 0: cli"
            assert raw.headers["x-ratelimit-limit-requests"] == "600"  # model m's own

            async def config() -> Any:
                base = url.removesuffix("/v1")
                async with aiohttp.ClientSession() as s, s.get(base + "/_fake/config") as r:
                    return await r.json()

            cfg = asyncio.run(config())
            assert (cfg["api_key"], cfg["seed"], cfg["latency"], cfg["burst_seconds"]) == ("k", 1, 0.01, 1.0)
            assert (cfg["rpm_limits"], cfg["tpm_limits"]) == ({"m": 600, "gpt-4o-mini": 120}, {"m": 100000})
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert proc.stdout.read() == ""  # exactly one line on stdout
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
