"""The fake server's API model: its settings, OpenAI-shaped request parsing, answers and error bodies.
The rate-limit buckets it enforces are `limits.py`; the HTTP side (routes, faults, the record) is `server.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

MODELS = ("fake-model", "gpt-4o-mini", "gpt-3.5-turbo-instruct")


@dataclasses.dataclass
class FakeConfig:
    """Fault settings (all faults are off by default) and the pace of batches (fast by default)."""

    api_key: str | None = None
    latency: float = 0.0
    latency_jitter: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 3600.0
    wrong_choices_rate: float = 0.0
    batch_api: bool = True  # False: the Files and Batch endpoints answer 404, as llama.cpp's server does
    missing_choice_rate: float = 0.0  # a 200 (billed) whose choices lack one, at a random index
    # Hostile servers: a billed 200 whose last choice has an index past every prompt's (index 5 for n=1);
    # a 200's headers, then nothing (`stall_bytes` 0) or the body dribbled a byte every `stall_seconds`
    # (slowloris: every read is quick, the whole never comes in time)
    wrong_index_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 1.0
    stall_bytes: bool = False
    rate_limit_rate: float = 0.0
    rate_limit_retry_after: float = 0.2
    quota_exhausted: bool = False
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    rpm_limits: dict[str, int] | None = None  # model -> its own limit (as OpenAI's, per model): see limits.py
    tpm_limits: dict[str, int] | None = None
    burst_seconds: float = 60.0
    headers_per_minute: bool = False
    fail_first: int = 0
    outage_until: float | None = None
    seed: int = 0
    # usage as llama.cpp's server reports it for n > 1 or a list of prompts: one generation's tokens (the
    # first prompt's, the first choice's), whatever the number of choices
    usage_first_choice_only: bool = False
    # prompt tokens counted as a byte-level tokenizer's worst case, one per UTF-8 byte (+4 per chat
    # message), where the default counts 1 per 4 characters: code, digits and CJK text are counted so
    usage_bytes: bool = False
    # the Batch API (batches.py, lifecycle.py); a batch runs under the settings in force at its creation
    batch_validate_seconds: float = 0.0
    batch_lines_per_second: float | None = None  # None: as fast as the CPU allows; 0: never (until cancel or expiry)
    batch_finalize_seconds: float = 0.0
    batch_cancel_seconds: float = 0.0
    batch_window_seconds: float = 86400.0  # the "24h" completion window, scaled down for tests
    batch_expire_after: int | None = None  # expire as soon as this many lines are done
    batch_error_rate: float = 0.0  # per-line 500s (transient) in the error file
    batch_max_lines: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    # when logprobs are asked for: the first token's top alternatives {token: logprob}, so a test knows them
    # exactly (the first token is the highest; the request's count keeps the k highest, in order; the text
    # is unchanged). None: the text's own first token at -0.1 with made-up alternatives (`default_top`), as
    # every later token always is
    top_logprobs: dict[str, float] | None = None
    # OpenAI's flex processing: this share of requests sent with `service_tier: "flex"` is answered 429
    # "resource unavailable" (out of flex capacity; not billed)
    flex_capacity_rate: float = 0.0
    flex_retry_after: float | None = None  # a retry-after (seconds) sent with those 429s; None: none
    # reasoning models: hidden reasoning tokens per choice, billed in completion_tokens and said in
    # `completion_tokens_details.reasoning_tokens`; prompt tokens said cached (`prompt_tokens_details`,
    # at most the prompt's)
    reasoning_tokens: int = 0
    cached_tokens: int = 0


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "api_key": (str, type(None)),
    "quota_exhausted": (bool,),
    "headers_per_minute": (bool,),
    "usage_first_choice_only": (bool,),
    "usage_bytes": (bool,),
    "batch_api": (bool,),
    "stall_bytes": (bool,),
    "rpm_limit": (int, type(None)),
    "tpm_limit": (int, type(None)),
    "rpm_limits": (dict, type(None)),
    "tpm_limits": (dict, type(None)),
    "fail_first": (int,),
    "seed": (int,),
    "outage_until": (int, float, type(None)),
    "flex_retry_after": (int, float, type(None)),
    "batch_lines_per_second": (int, float, type(None)),
    "batch_expire_after": (int, type(None)),
    "batch_max_lines": (int,),
    "batch_max_bytes": (int,),
    "top_logprobs": (dict, type(None)),
    "reasoning_tokens": (int,),
    "cached_tokens": (int,),
}


def check_config(kw: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(FakeConfig)}
    for key, value in kw.items():
        if key not in names:
            raise TypeError(f"unknown fake server setting: {key!r}")
        allowed = _FIELD_TYPES.get(key, (int, float))
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise TypeError(f"bad type for {key}: {type(value).__name__}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{key} must be >= 0")
        if isinstance(value, dict) and key == "top_logprobs":
            _check_top(value)
        elif isinstance(value, dict):
            for model, limit in value.items():
                if not isinstance(model, str) or isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                    raise ValueError(f"{key} must map model names to positive integers, not {model!r}: {limit!r}")
    if kw.get("burst_seconds") == 0:
        raise ValueError("burst_seconds must be > 0")


def _check_top(top: dict[Any, Any]) -> None:
    if not top:
        raise ValueError("top_logprobs must name at least one token")
    for token, logprob in top.items():
        number = isinstance(logprob, int | float) and not isinstance(logprob, bool)
        if not isinstance(token, str) or not number or not -math.inf < logprob <= 0:
            raise ValueError(f"top_logprobs must map tokens to logprobs <= 0, not {token!r}: {logprob!r}")


def format_duration(seconds: float) -> str:
    """Format a duration like OpenAI's reset headers: ``120ms``, ``1s``, ``8.64s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 0.9995:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(round(seconds, 3), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes >= 60:
        return f"{int(minutes // 60)}h{int(minutes % 60)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def read_body(raw: bytes | None, body: Any) -> tuple[dict[str, Any] | None, bytes | None]:
    """A request's JSON object: parsed from ``raw`` (an HTTP body), or ``body`` when ``raw`` is None (a
    batch line's); else None and the 400 body OpenAI answers."""
    if raw is not None:
        try:
            body = json.loads(raw)
        except ValueError:
            return None, error_body("We could not parse the JSON body of your request.", "invalid_request_error")
    if not isinstance(body, dict):
        return None, error_body("The request body must be a JSON object.", "invalid_request_error")
    return body, None


def _int_field(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"Invalid value for '{key}': must be an integer in [{lo}, {hi}].")
    return value


class FakeRequest:
    """A parsed completion request (or as much as could be parsed)."""

    __slots__ = ("cached", "chat", "error", "first_top", "logprobs", "max_tokens", "model", "n", "per_byte",
                 "prompts", "reasoning", "seed", "service_tier", "texts")

    def __init__(self, chat: bool, raw: bytes | None, body: Any = None) -> None:
        """Parse ``raw`` (an HTTP body), or when it is None take ``body`` as already decoded (a batch line's)."""
        self.per_byte = False  # prompt tokens counted as a byte-level tokenizer's worst case (`usage_bytes`)
        self.reasoning = self.cached = 0  # `FakeConfig.reasoning_tokens` and `cached_tokens` (chat)
        self.chat = chat
        self.model, self.n, self.max_tokens = "", 1, None
        self.seed: int | None = None
        self.service_tier = "default"
        self.prompts: list[str] = []  # chat: [last message]; completions: the prompts
        self.texts: list[str] = []  # every text searched for markers and counted as prompt tokens
        self.error: bytes | None = None
        self.logprobs: int | None = None  # logprobs asked for: this many top alternatives per token
        self.first_top: dict[str, float] | None = None  # the first token's alternatives (`FakeConfig.top_logprobs`)
        body, self.error = read_body(raw, body)
        if body is None:
            return
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        seed = body.get("seed")
        self.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None  # as asked (recorded)
        tier = body.get("service_tier")
        self.service_tier = tier if tier in ("flex", "priority", "scale") else "default"  # as OpenAI answers
        try:
            self.n = _int_field(body, "n", 1, 1, 128) or 1
            self.max_tokens = _int_field(body, "max_tokens", None, 1, 10**7)
            if self.max_tokens is None:
                self.max_tokens = _int_field(body, "max_completion_tokens", None, 1, 10**7)
            field = "messages" if chat else "prompt"
            value = body.get(field)
            if chat and isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
                self.texts = [_text(m.get("content")) for m in value]
                self.prompts = [self.texts[-1]]
            elif not chat and isinstance(value, str):
                self.prompts = self.texts = [value]
            elif not chat and isinstance(value, list) and value and all(isinstance(p, str) for p in value):
                self.prompts = self.texts = list(value)
            else:
                raise ValueError(f"You must provide a valid '{field}' parameter.")
            if not self.model:
                raise ValueError("You must provide a model parameter.")
            self.logprobs = _logprobs_asked(chat, body)
        except ValueError as exc:
            text = str(exc)
            named = next((p for p in ("top_logprobs", "logprobs") if f"'{p}'" in text), None)
            param = "model" if "model" in text else named
            self.error = error_body(text, "invalid_request_error", param)

    def has(self, marker: str) -> bool:
        return any(marker in t for t in self.texts)

    def prompt_tokens(self, first_only: bool = False) -> int:
        if self.per_byte:
            if self.chat:
                return sum(len(t.encode()) + 4 for t in self.texts)
            return sum(len(p.encode()) for p in self.prompts[: 1 if first_only else None])
        if self.chat:
            return max(1, sum(len(t) for t in self.texts) // 4)
        return sum(max(1, len(p) // 4) for p in self.prompts[: 1 if first_only else None])

    def response(self, seq: int | str, choices_delta: int = 0, first_choice_usage: bool = False,
                 drop: float | None = None, wrong_index: bool = False, record: dict[str, Any] | None = None) -> bytes:
        """The JSON body of a successful answer (with ``choices_delta`` choices too many). With
        ``first_choice_usage`` its usage counts the first prompt and its first choice only (llama.cpp's).
        ``drop`` (in [0, 1)) leaves out the choice at that fraction of the list, its index missing.
        ``record``: a record entry, given the answer's usage (``record["usage"]``)."""
        n, cap = self.n, self.max_tokens
        texts = [(i * n + j, _answer(p, j)) for i, p in enumerate(self.prompts) for j in range(n)]
        if drop is not None:
            del texts[int(drop * len(texts))]
        if choices_delta < 0:
            texts = texts[:choices_delta]
        elif choices_delta > 0:
            texts.append((len(texts), _answer(self.prompts[-1], n)))
        if wrong_index:  # the last choice numbered past every prompt's choices
            texts[-1] = (len(self.prompts) * n + 4, texts[-1][1])
        counted = texts[:1] if first_choice_usage else texts
        # a choice's hidden reasoning tokens come first, within its limit (max_completion_tokens includes them)
        thought = (min(self.reasoning, cap) if cap else self.reasoning) if self.chat else 0
        completion = sum(min(len(t.split()), cap - thought) if cap else len(t.split()) for _, t in counted)
        prompt = self.prompt_tokens(first_only=first_choice_usage)
        reasoning = thought * len(counted)
        completion += reasoning  # billed as output, never shown
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.chat and (self.reasoning or self.cached):  # (as OpenAI details them)
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached, prompt), "audio_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                                  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        if record is not None:
            record["usage"] = dict(usage)
        base: dict[str, Any] = {
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "fp_fake",
        }
        if self.chat:
            choices: list[dict[str, Any]] = [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": t},
                    "finish_reason": "stop",
                    "logprobs": self._logprobs(k, t),
                }
                for k, t in texts
            ]
            out = {"id": f"chatcmpl-{seq}", "object": "chat.completion", **base, "choices": choices,
                   "service_tier": self.service_tier}
        else:
            choices = [{"index": k, "text": t, "finish_reason": "stop", "logprobs": self._logprobs(k, t)}
                       for k, t in texts]
            out = {"id": f"cmpl-{seq}", "object": "text_completion", **base, "choices": choices}
        out["usage"] = usage
        return json.dumps(out).encode()

    def _logprobs(self, index: int, text: str) -> dict[str, Any] | None:
        """A choice's `logprobs` as OpenAI shapes them (None when not asked for): one entry per token of
        `text` (as many as its usage counts), the first token's alternatives `first_top` when set."""
        if self.logprobs is None:
            return None
        entries = [default_top(token) for token in TOKEN.findall(text)[: self.max_tokens]]
        if entries and self.first_top is not None:
            entries[0] = sorted(self.first_top.items(), key=lambda kv: -kv[1])
        k = self.logprobs  # each entry's first pair is the token itself
        if self.chat:
            content = [{**_token(*top[0]), "top_logprobs": [_token(*alt) for alt in top[:k]]} for top in entries]
            return {"content": content, "refusal": None}
        tokens = [top[0][0] for top in entries]
        start = len(self.prompts[min(index // self.n, len(self.prompts) - 1)])  # offsets run on from the prompt
        offsets = [start + sum(map(len, tokens[:i])) for i in range(len(tokens))]
        return {"tokens": tokens, "token_logprobs": [top[0][1] for top in entries],
                "top_logprobs": [dict(top[:k]) for top in entries], "text_offset": offsets}


TOKEN = re.compile(r"\s*\S+")  # the fake's tokens: words with their leading space (as many as usage counts)


def default_top(token: str) -> list[tuple[str, float]]:
    """A token's 20 top alternatives when none were configured: itself at -0.1, then made-up ones (the 20
    probabilities sum to less than 1, as a real distribution's top does)."""
    return [(token, -0.1), *((f" alt{i}", -4.0 - 0.5 * i) for i in range(1, 20))]


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _logprobs_asked(chat: bool, body: dict[str, Any]) -> int | None:
    """How many top alternatives per token the request asks for, or None for no logprobs (as OpenAI
    checks them: chat `logprobs` a boolean, `top_logprobs` 0..20 and only with it; legacy `logprobs` 0..5)."""
    if not chat:
        return _int_field(body, "logprobs", None, 0, 5)
    asked, top = body.get("logprobs"), _int_field(body, "top_logprobs", None, 0, 20)
    if asked is not None and not isinstance(asked, bool):
        raise ValueError("Invalid type for 'logprobs': expected a boolean.")
    if top is not None and asked is not True:
        raise ValueError("Invalid value for 'top_logprobs': 'logprobs' must be set to true if 'top_logprobs' is used.")
    return (top or 0) if asked else None


def _answer(prompt: str, sample: int) -> str:
    """The fake's answer: `echo K: PROMPT` for sample K, or, for a prompt holding `REPLY:`, the text after
    it verbatim (every sample), so a test chooses the answer (a JSON object, a word) through the prompt."""
    _, marker, reply = prompt.partition(REPLY)
    return reply if marker else f"echo {sample}: {prompt}"


REPLY = "REPLY:"
FAIL400_ERROR = error_body("Invalid prompt: contains FAIL400", "invalid_request_error", "messages", "invalid_prompt")
# OpenAI's flex processing out of capacity: "429 Resource Unavailable" (no charge; retry, or use the default tier)
FLEX_CAPACITY_ERROR = error_body("Resource unavailable: flex processing is temporarily out of capacity. Please "
                                 "retry later, or send the request at the default service tier.",
                                 "resource_unavailable", None, "resource_unavailable")
SERVER_ERROR = error_body("The server had an error while processing your request. Sorry about that!", "server_error")
