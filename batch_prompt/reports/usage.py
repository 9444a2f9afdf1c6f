"""The usage a server reports with its answers, and whether it adds up.

Token counts (`status`, the run summary, costs) are the `usage` the server reported. Some servers count
one generation only: llama.cpp's server, asked for `n > 1` choices or sent a list of prompts, reports
the usage of the first prompt's first choice. The answers themselves show it: a choice's text took at
least as many tokens as it has words (tokenizers split at spaces, and a word is one token or more), up
to the request's `max_tokens`. A response of several choices whose `completion_tokens` is fewer than
its choices' words need was not counted in full.

`undercounts` judges one response as the server sent it (all its choices, its whole usage); `doubt`
judges a job from a sample of its answered rows, putting packed completions (one response split into a
row per prompt, the usage shared out evenly) back together first. Neither corrects a count: it cannot
be known from here; the counts are marked as the server's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..results.table import choice_text

FIRST_CHOICE_ONLY = "token counts as the server reported them: it seems to count the first choice only"
SAMPLE = 50  # answered rows of a job looked at: a server that undercounts does so every time


def least_tokens(choices: Iterable[Any], max_tokens: int | None) -> int:
    """The fewest completion tokens `choices` can have taken: their words, each choice at most `max_tokens`."""
    least = 0
    for choice in choices:
        words = len(choice_text(choice).split()) if isinstance(choice, dict) else 0
        least += min(words, max_tokens) if max_tokens else words
    return least


def undercounts(choices: Any, usage: Any, max_tokens: int | None) -> bool:
    """True when a response of two or more `choices` reports fewer `completion_tokens` than they can have
    taken. A response with no usage, or one choice, is never judged."""
    if not isinstance(choices, list) or len(choices) < 2 or not isinstance(usage, Mapping):
        return False
    reported = usage.get("completion_tokens")
    if not isinstance(reported, int) or isinstance(reported, bool):
        return False
    return reported < least_tokens(choices, max_tokens)


def max_tokens_of(request: Mapping[str, Any]) -> int | None:
    cap = _count(request.get("max_tokens", request.get("max_completion_tokens")))
    return cap or None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def doubt(rows: Iterable[tuple[str, str]], packed: int = 1) -> str | None:
    """`FIRST_CHOICE_ONLY` when the answers of `rows` ((request JSON, response JSON) of done rows, in id
    order) show a server that counts one choice only; else None. `packed`: the job's prompts per request
    (legacy completions); the rows of one packed response are judged together, and only when all of its
    `packed` rows are in the sample (a part of one may be longer than its even share of the usage)."""
    groups: dict[Any, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for request_text, response_text in rows:
        try:
            request, response = json.loads(request_text), json.loads(response_text)
        except (TypeError, ValueError):
            continue
        if not isinstance(request, dict) or not isinstance(response, dict):
            continue
        key = response.get("id") if packed > 1 else len(groups)
        groups.setdefault(key if key is not None else len(groups), []).append((request, response))
    for group in groups.values():
        if packed > 1 and len(group) != packed:
            continue
        choices = [c for _, response in group for c in (response.get("choices") or [])]
        reported = [response.get("usage") for _, response in group]
        if not all(isinstance(u, Mapping) for u in reported):
            continue
        total = sum(_count(u.get("completion_tokens")) for u in reported if isinstance(u, Mapping))
        if undercounts(choices, {"completion_tokens": total}, max_tokens_of(group[0][0])):
            return FIRST_CHOICE_ONLY
    return None
