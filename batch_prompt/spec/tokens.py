"""Token cost estimates for the tokens-per-minute limiter (before a request is sent).

A request costs its prompt tokens plus `max_tokens` (or `max_completion_tokens`, or the Responses API's
`max_output_tokens`) x `n` per prompt, as
OpenAI counts it against a TPM limit. Prompt tokens come from `tiktoken` when it is installed, otherwise
from the heuristic of 1 token per 4 characters (rounded up) plus 4 per chat message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

DEFAULT_MAX_TOKENS = 16  # the legacy completions API's default; chat has none, so this is a floor
UNBOUNDED_CHAT_TOKENS = 4096  # what a budget reserves per choice of a chat request that sets no token limit
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


@lru_cache(maxsize=1)
def _encoder() -> Callable[[str], int] | None:
    try:
        import tiktoken  # optional
    except ImportError:
        return None
    try:
        encoding = tiktoken.get_encoding("o200k_base")
    except Exception:  # tiktoken downloads its tables on first use; offline it cannot: fall back
        return None
    return lambda text: len(encoding.encode(text))


def count_text(text: str) -> int:
    encode = _encoder()
    if encode is not None:
        return encode(text)
    return -(-len(text) // CHARS_PER_TOKEN)


def estimate_parts(body: dict[str, Any], unbounded: int = DEFAULT_MAX_TOKENS) -> tuple[int, int]:
    """(prompt tokens, most completion tokens) of one request body (chat, completions packed or not, or
    responses: its input counted as chat messages).

    A chat request without a token limit has none: its choices count `unbounded` tokens each (a budget
    passes `UNBOUNDED_CHAT_TOKENS`). Never raises on odd values: an `n` or token limit that is not a
    positive integer counts as its default.
    """
    texts, chat = _texts(body)
    if chat:
        prompt = sum(count_text(str(text)) + TOKENS_PER_MESSAGE for text in texts)
    else:
        prompt = sum(count_text(str(text)) for text in texts)
    return prompt, _most_completion(body, chat, 1 if chat else len(texts), unbounded)


REPLY_PRIMING = 3  # tokens a chat request's reply is primed with, besides its messages
BOS_TOKENS = 1  # a begin-of-text token a completions prompt may be given


def budget_parts(body: dict[str, Any]) -> tuple[int, int]:
    """(most prompt tokens, most completion tokens) of one request, for a budget: an upper bound that no
    tokenizer beats, whatever the text (code, digits, CJK, one-letter words): a byte-level tokenizer makes
    at most one token of each UTF-8 byte, and a chat message adds `TOKENS_PER_MESSAGE` of its own. The
    completion part is `estimate_parts`' with `UNBOUNDED_CHAT_TOKENS` per choice of a chat request with no
    limit."""
    texts, chat = _texts(body)
    if chat:
        prompt = REPLY_PRIMING + sum(_bytes(text) + TOKENS_PER_MESSAGE for text in texts)
    else:
        prompt = sum(_bytes(text) + BOS_TOKENS for text in texts)
    return prompt, _most_completion(body, chat, 1 if chat else len(texts), UNBOUNDED_CHAT_TOKENS)


def _texts(body: dict[str, Any]) -> tuple[list[Any], bool]:
    """What a request body asks about: its messages' contents (chat: True), or its prompts (completions).
    The Responses API's `instructions` (a system message, billed as input) count as one more message."""
    messages = body.get("messages", body.get("input"))  # the Responses API's input: messages, or one text
    instructions = [body["instructions"]] if "input" in body and body.get("instructions") is not None else []
    if isinstance(messages, str):
        return [*instructions, messages], True
    if isinstance(messages, list):
        return [*instructions, *(m.get("content", "") if isinstance(m, dict) else m for m in messages)], True
    raw = body.get("prompt", "")
    return (raw if isinstance(raw, list) else [raw]), False


def _most_completion(body: dict[str, Any], chat: bool, prompts: int, unbounded: int) -> int:
    """`max_completion_tokens` (or `max_tokens`) x `n` x prompts; a chat request with no limit counts
    `unbounded` a choice, a completions request the legacy default."""
    n = _positive_int(body.get("n"), 1)
    default = unbounded if chat else DEFAULT_MAX_TOKENS
    max_tokens = _positive_int(body.get("max_completion_tokens"), _positive_int(body.get("max_tokens"), default))
    max_tokens = _positive_int(body.get("max_output_tokens"), max_tokens)  # the Responses API's, reasoning included
    return max_tokens * n * prompts


def _bytes(content: Any) -> int:
    """UTF-8 bytes of a message's content (a string, or a list of parts: their text, and any other part as JSON)."""
    if isinstance(content, str):
        return len(content.encode("utf-8", "surrogatepass"))
    return len(json.dumps(content, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _positive_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


class TokenEstimator:
    """`estimate`, calibrated during a run by the prompt tokens the server reports in `usage`.

    The scale (server count / our count, clamped to [0.25, 4]) applies once `WARMUP` responses are in,
    so a heuristic that is off by 20% does not leave 20% of a token limit unused for the whole run.
    """

    WARMUP = 10

    def __init__(self) -> None:
        self.ours = 0
        self.theirs = 0
        self.responses = 0

    @property
    def scale(self) -> float:
        if self.responses < self.WARMUP or self.ours <= 0:
            return 1.0
        return min(4.0, max(0.25, self.theirs / self.ours))

    def cost(self, body: dict[str, Any]) -> tuple[int, int]:
        """(TPM cost to reserve, our uncalibrated prompt estimate to hand back to `observe`)."""
        prompt, completion = estimate_parts(body)
        return int(prompt * self.scale + completion), prompt

    def observe(self, our_prompt: int, usage: Any) -> None:
        """Learn from a response's `usage` (ignored when it has no integer `prompt_tokens`)."""
        theirs = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(theirs, int) and theirs >= 0:
            self.ours += our_prompt
            self.theirs += theirs
            self.responses += 1
