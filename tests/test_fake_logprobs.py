"""The fake server's logprobs, shaped as OpenAI documents them, over real HTTP: chat (`logprobs: true`,
`top_logprobs` 0..20, a 400 for `top_logprobs` alone) and legacy completions (`logprobs` 0..5), the
first token's alternatives set by `top_logprobs` in its config, and the same in Batch API lines."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from batch_prompt.testing import FakeServer

TOP = {"H": -0.5, " h": -1.6, "T": -2.0, " t": -2.5, "X": -3.0}


def post(fake: FakeServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(fake.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": "Bearer sk-test"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(fake: FakeServer, content: str = "coin", **body: Any) -> tuple[int, Any]:
    return post(fake, "/chat/completions",
                {"model": "fake-model", "messages": [{"role": "user", "content": content}], **body})


def entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def test_chat_logprobs_as_openai_shapes_them(fake: FakeServer) -> None:
    status, body = chat(fake, "flip", logprobs=True, top_logprobs=2, n=2)
    assert status == 200
    for j, choice in enumerate(body["choices"]):
        assert choice["message"]["content"] == f"echo {j}: flip"  # the answer itself is unchanged
        tokens = ["echo", f" {j}:", " flip"]
        assert choice["logprobs"] == {"refusal": None, "content": [
            {**entry(t, -0.1), "top_logprobs": [entry(t, -0.1), entry(" alt1", -4.5)]} for t in tokens]}
    # as many tokens as usage counts (capped by max_tokens); top_logprobs absent or 0: empty lists
    status, body = chat(fake, "flip", logprobs=True, max_tokens=2)
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    assert body["choices"][0]["logprobs"]["content"] == [{**entry("echo", -0.1), "top_logprobs": []},
                                                         {**entry(" 0:", -0.1), "top_logprobs": []}]
    assert chat(fake, logprobs=True, top_logprobs=0)[1]["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    # not asked (or false): null, as before
    assert chat(fake)[1]["choices"][0]["logprobs"] is None
    assert chat(fake, logprobs=False)[1]["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("count", [1, 3, 5, 20])
def test_the_configured_first_token_alternatives_honour_the_count(fake: FakeServer, count: int) -> None:
    fake.configure(top_logprobs=dict(reversed(TOP.items())))  # any order: they are returned highest first
    status, body = chat(fake, logprobs=True, top_logprobs=count)
    first, second = body["choices"][0]["logprobs"]["content"][:2]
    assert status == 200 and (first["token"], first["logprob"]) == ("H", -0.5)  # the highest
    assert first["top_logprobs"] == [entry(t, lp) for t, lp in list(TOP.items())[:count]]  # at most 5 exist
    assert second["token"] == " 0:" and len(second["top_logprobs"]) == count  # later tokens: the text's own


def test_top_logprobs_without_logprobs_is_a_400(fake: FakeServer) -> None:
    for body in ({"top_logprobs": 2}, {"top_logprobs": 2, "logprobs": False}):
        status, error = chat(fake, **body)
        assert status == 400 and error["error"]["param"] == "top_logprobs", error
        assert error["error"]["type"] == "invalid_request_error"
    assert chat(fake, logprobs=True, top_logprobs=21)[0] == 400
    assert chat(fake, logprobs=1)[0] == 400  # chat's logprobs is a boolean
    assert chat(fake, top_logprobs=None)[0] == 200  # null is absent
    assert [e["status"] for e in fake.record] == [400, 400, 400, 400, 200]


def test_completions_logprobs_as_openai_shapes_them(fake: FakeServer) -> None:
    status, body = post(fake, "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["ab", "cde"],
                                               "logprobs": 2})
    assert status == 200
    for choice, prompt in zip(body["choices"], ["ab", "cde"], strict=True):
        tokens = ["echo", " 0:", f" {prompt}"]
        assert choice["logprobs"] == {
            "tokens": tokens, "token_logprobs": [-0.1] * 3,
            "top_logprobs": [{t: -0.1, " alt1": -4.5} for t in tokens],
            "text_offset": [len(prompt), len(prompt) + 4, len(prompt) + 7],  # they run on from the prompt
        }
    fake.configure(top_logprobs=TOP)
    status, body = post(fake, "/completions", {"model": "m", "prompt": "q", "logprobs": 3})
    logprobs = body["choices"][0]["logprobs"]
    assert (logprobs["tokens"][0], logprobs["token_logprobs"][0]) == ("H", -0.5)
    assert logprobs["top_logprobs"][0] == {"H": -0.5, " h": -1.6, "T": -2.0}
    assert post(fake, "/completions", {"model": "m", "prompt": "q"})[1]["choices"][0]["logprobs"] is None
    assert post(fake, "/completions", {"model": "m", "prompt": "q", "logprobs": 6})[0] == 400


def test_the_top_logprobs_setting_is_checked(fake: FakeServer) -> None:
    for bad in ({}, {"H": 0.5}, {"H": "x"}, {"H": True}, {"H": float("nan")}):
        with pytest.raises((TypeError, ValueError)):
            fake.configure(top_logprobs=bad)
    with pytest.raises(TypeError):
        fake.configure(top_logprobs=[("H", -0.1)])
    fake.configure(top_logprobs={"H": 0, "T": -1})
    assert fake.config.top_logprobs == {"H": 0, "T": -1}
    fake.configure(top_logprobs=None)
    # over HTTP too: the config endpoint refuses what configure refuses
    request = urllib.request.Request(fake.url.removesuffix("/v1") + "/_fake/config",
                                     json.dumps({"top_logprobs": {"H": 1}}).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
