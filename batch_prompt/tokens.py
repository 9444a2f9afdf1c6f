"""Token cost estimates for the tokens-per-minute limiter (before a request is sent).

A request costs its prompt tokens plus `max_tokens` (or `max_completion_tokens`) x `n` per prompt, as
OpenAI counts it against a TPM limit. Prompt tokens come from `tiktoken` when it is installed, otherwise
from the heuristic of 1 token per 4 characters (rounded up) plus 4 per chat message.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

DEFAULT_MAX_TOKENS = 16  # the legacy completions API's default; chat has none, so this is a floor
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


def estimate(body: dict[str, Any]) -> int:
    """Estimated TPM cost of one request body (chat or completions, one prompt or a packed list)."""
    n = int(body.get("n") or 1)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    if "messages" in body:
        prompt = sum(count_text(str(m.get("content", ""))) + TOKENS_PER_MESSAGE for m in body["messages"])
        prompts = 1
    else:
        texts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        prompt = sum(count_text(str(t)) for t in texts)
        prompts = len(texts)
    return int(prompt + int(max_tokens) * n * prompts)
