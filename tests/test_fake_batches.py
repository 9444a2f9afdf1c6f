"""The fake server's Files and Batch APIs over real HTTP: the openai SDK, and aiohttp where it can't reach."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from batch_prompt.testing import FakeServer


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
