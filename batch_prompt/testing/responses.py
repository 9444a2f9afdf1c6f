"""The fake server's Responses API (``POST /v1/responses``, live and as batch lines), and `request_for`,
which parses a request body for the endpoint it was sent to.

A request is checked as OpenAI checks it (a 400 ``invalid_request_error`` naming ``param``): an unknown
parameter (the names of the openai SDK's ``ResponseCreateParams``: ``max_tokens``, ``n``, ``messages``,
``response_format`` are chat's, unknown here), ``model`` or ``input`` missing, an ``input`` that is
neither a string nor a list of ``{"role", "content"}`` messages, a ``max_output_tokens`` below 16.

The answer is the chat endpoint's (``echo 0: PROMPT`` for the last input message's text, or the text
after ``REPLY:``), shaped as OpenAI documents a Response: ``{"id": "resp_...", "object": "response",
"created_at", "status", "model", "output": [{"type": "message", "role": "assistant", "content":
[{"type": "output_text", "text", "annotations": []}], ...}], "usage": {"input_tokens",
"input_tokens_details": {"cached_tokens"}, "output_tokens", "output_tokens_details":
{"reasoning_tokens"}, "total_tokens"}, "service_tier", ...}`` (``FakeConfig.cached_tokens`` of the input
tokens said cached, at most all of them). ``FakeConfig.reasoning_tokens`` hidden
tokens are spent first (a ``reasoning`` output item, counted in ``output_tokens``); when they and the
text need more than ``max_output_tokens`` (which includes them), the text is cut (at a token: a word with
its leading space) and the response is ``incomplete`` with ``incomplete_details.reason``
``max_output_tokens``, its message item left out when no text is left. Choice faults (``wrong_choices``,
``missing_choice``, ``wrong_index``) have no choices to act on here: such an answer is whole.
"""

from __future__ import annotations

import json
import time
import typing
from functools import lru_cache
from typing import Any

from .api import TOKEN, FakeConfig, FakeRequest, _answer, _text, error_body, read_body

ROLES = ("user", "assistant", "system", "developer")
MIN_OUTPUT_TOKENS = 16  # OpenAI: "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16"


def request_for(path: str, raw: bytes | None, body: Any, config: FakeConfig) -> FakeRequest:
    """The request sent to ``path`` (an endpoint: ``/v1/chat/completions``, ``/v1/completions`` or
    ``/v1/responses``), parsed from ``raw`` (or, when it is None, ``body``, a batch line's), with the
    answer settings of ``config``."""
    req = (ResponsesRequest(raw, body, config.reasoning_tokens) if path.endswith("/responses")
           else FakeRequest(path.endswith("/chat/completions"), raw, body))
    req.per_byte = config.usage_bytes
    req.first_top = config.top_logprobs
    req.reasoning, req.cached = config.reasoning_tokens, config.cached_tokens
    return req


@lru_cache(maxsize=1)
def known_parameters() -> frozenset[str]:
    """The Responses API's request parameters: the openai SDK's ``ResponseCreateParams`` keys."""
    from openai.types.responses import response_create_params

    return frozenset(typing.get_type_hints(response_create_params.ResponseCreateParamsBase))


class ResponsesRequest(FakeRequest):
    """A ``/v1/responses`` request: its input's messages are counted and answered as chat messages."""

    __slots__ = ()

    def __init__(self, raw: bytes | None, body: Any = None, reasoning: int = 0) -> None:
        self.chat, self.per_byte, self.reasoning, self.cached = True, False, reasoning, 0  # counted as chat messages
        self.model, self.n, self.max_tokens, self.seed, self.service_tier = "", 1, None, None, "default"
        self.prompts, self.texts = [], []
        self.error = self.logprobs = self.first_top = None
        found, self.error = read_body(raw, body)
        if found is not None:
            self.error = self._check(found)

    def _check(self, body: dict[str, Any]) -> bytes | None:
        for key in body:
            if key not in known_parameters():
                return error_body(f"Unknown parameter: '{key}'.", "invalid_request_error", key, "unknown_parameter")
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        tier = body.get("service_tier")
        self.service_tier = tier if tier in ("flex", "priority", "scale") else "default"
        for name in ("model", "input"):
            if body.get(name) is None:
                return error_body(f"Missing required parameter: '{name}'.", "invalid_request_error", name,
                                  "missing_required_parameter")
        if not self.model:
            return error_body("Invalid type for 'model': expected a string.", "invalid_request_error", "model",
                              "invalid_type")
        cap = body.get("max_output_tokens")
        if cap is not None:
            if isinstance(cap, bool) or not isinstance(cap, int):
                return error_body("Invalid type for 'max_output_tokens': expected an integer.",
                                  "invalid_request_error", "max_output_tokens", "invalid_type")
            if cap < MIN_OUTPUT_TOKENS:
                return error_body(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                                  f"{MIN_OUTPUT_TOKENS}, but got {cap} instead.", "invalid_request_error",
                                  "max_output_tokens", "integer_below_min_value")
            self.max_tokens = cap
        given = body["input"]
        instructions = body.get("instructions")
        texts = [instructions] if isinstance(instructions, str) else []
        if isinstance(given, str):
            texts.append(given)
        elif isinstance(given, list) and given:
            for i, item in enumerate(given):
                if not isinstance(item, dict) or item.get("role") not in ROLES or "content" not in item:
                    return error_body(f"Invalid value for 'input[{i}]': expected a message with a role "
                                      f"({', '.join(ROLES)}) and content.", "invalid_request_error", f"input[{i}]",
                                      "invalid_value")
                texts.append(_text(item["content"]))
        else:
            return error_body("Invalid value for 'input': expected a string or a list of input items.",
                              "invalid_request_error", "input", "invalid_value")
        self.texts = texts
        self.prompts = [texts[-1]]
        return None

    def response(self, seq: int | str, choices_delta: int = 0, first_choice_usage: bool = False,
                 drop: float | None = None, wrong_index: bool = False, record: dict[str, Any] | None = None) -> bytes:
        """The JSON body of a Response (see the module docstring); the choice faults' arguments are ignored.
        ``record``: a record entry, given the answer's usage (``record["usage"]``, as sent)."""
        tokens = TOKEN.findall(_answer(self.prompts[-1], 0))
        cap = self.max_tokens
        reasoning = self.reasoning if cap is None else min(self.reasoning, cap)
        shown = len(tokens) if cap is None else min(len(tokens), cap - reasoning)
        text = "".join(tokens[:shown])
        prompt, completion = self.prompt_tokens(), reasoning + shown
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": min(self.cached, prompt)},
                 "output_tokens": completion,
                 "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + completion}
        if record is not None:
            record["usage"] = json.loads(json.dumps(usage))
        complete = shown == len(tokens)
        output: list[dict[str, Any]] = []
        if reasoning:
            output.append({"id": f"rs_{seq}", "type": "reasoning", "summary": []})
        if shown or complete:
            output.append({"id": f"msg_{seq}", "type": "message", "status": "completed" if complete else "incomplete",
                           "role": "assistant",
                           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
        out = {
            "id": f"resp_{seq}", "object": "response", "created_at": int(time.time()),
            "status": "completed" if complete else "incomplete", "background": False, "error": None,
            "incomplete_details": None if complete else {"reason": "max_output_tokens"},
            "instructions": None, "max_output_tokens": cap, "model": self.model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "service_tier": self.service_tier, "store": True, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "user": None, "metadata": {},
        }
        return json.dumps(out).encode()
