"""Hostile or broken servers cannot hang a run or make it pay twice: an absurd retry-after, truncated
bodies for ever, choices that cannot be mapped, headers and then silence (or a byte at a time). Each case
runs with a 3-attempt budget under a deadline the old behaviour (retrying for ever) could not meet, and is
judged from the fake's own record: how often each prompt was asked, and what it answered."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import API_KEY
from .helpers_procs import chat_spec, prompts_of, statuses

PROMPTS = 20


def run_within(seconds: float, db: Path, fake: FakeServer, tmp_path: Path, **options: Any) -> bp.RunSummary:
    """Resume `db` against the fake; `AssertionError` when it has not ended within `seconds`."""
    options = {"base_url": fake.url, "api_key": API_KEY, "cache_dir": str(tmp_path / "cache"), "quiet": True,
               "max_attempts": 3, "retry": RetryPolicy.no_wait(3), **options}

    async def bounded() -> bp.RunSummary:
        try:
            return await asyncio.wait_for(bp.aresume(db, **options), seconds)
        except TimeoutError:
            outcomes = Counter(entry["outcome"] for entry in fake.record)
            raise AssertionError(f"the run had not ended after {seconds} s: {outcomes}") from None

    return asyncio.run(bounded())


def asked(fake: FakeServer) -> Counter[str]:
    return Counter(prompt for entry in fake.record for prompt in entry["prompts"])


HOSTILE = [
    ("absurd retry-after", {"rate_limit_rate": 1.0, "rate_limit_retry_after": 1e9}, "RateLimitError 429",
     "it asked to wait 1e+09 s"),
    ("truncated bodies for ever", {"malformed_rate": 1.0}, "MalformedResponse", "not valid JSON"),
    ("a choice index past n", {"wrong_index_rate": 1.0}, "MalformedResponse", "indexes [5]"),
    ("headers, then silence", {"stall_rate": 1.0, "stall_seconds": 100.0}, "StalledResponse", "its body not within"),
    ("headers, then a byte at a time", {"stall_rate": 1.0, "stall_seconds": 0.1, "stall_bytes": True},
     "StalledResponse", "its body not within"),
]


@pytest.mark.parametrize(("config", "kind", "message"), [case[1:] for case in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_server_fails_each_prompt_after_its_attempts(
    fake: FakeServer, tmp_path: Path, config: dict[str, Any], kind: str, message: str
) -> None:
    fake.configure(**config)
    db = tmp_path / "jobs.db"
    spec = chat_spec(PROMPTS, n=1)
    bp.create(db, **spec)
    started = time.monotonic()
    summary = run_within(60, db, fake, tmp_path, timeout=0.5)
    assert (summary.done, summary.failed, summary.exit_code) == (0, PROMPTS, 1)
    assert asked(fake) == Counter({prompt: 3 for prompt in prompts_of(spec)})  # exactly its attempts, no more
    assert dict(summary.errors) == {kind: PROMPTS}
    example = summary.error_examples[kind]
    assert example.startswith("gave up after 3 attempts") and message in example, example
    assert statuses(db) == Counter({"failed": PROMPTS})
    billed = sum(1 for entry in fake.record if entry["status"] == 200 and entry["outcome"] == "wrong_index")
    assert bp.status(db)[0].requests == billed  # answers that could not be used were still paid for, and counted
    assert time.monotonic() - started < 30


def test_a_mapped_answer_after_bad_ones_is_kept_and_counted_once(fake: FakeServer, tmp_path: Path) -> None:
    """Bad answers now and then (a third of them): every prompt ends answered, its bad answers counted as
    paid, and no good answer bought twice."""
    fake.configure(wrong_index_rate=0.3, seed=3)
    db = tmp_path / "jobs.db"
    spec = chat_spec(PROMPTS, n=1)
    bp.create(db, **spec)
    summary = run_within(60, db, fake, tmp_path, max_attempts=8, retry=RetryPolicy.no_wait(8))
    assert (summary.done, summary.failed) == (PROMPTS, 0)
    good = Counter(p for e in fake.record if e["outcome"] == "ok" for p in e["prompts"])
    assert good == Counter({prompt: 1 for prompt in prompts_of(spec)})
    assert bp.status(db)[0].requests == len(fake.record) == summary.paid
