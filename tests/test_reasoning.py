"""Reasoning models in chat: `max_completion_tokens` bounds the budget's worst case (reasoning included),
reasoning tokens reach status and exports; cached input tokens are priced at the cached rate."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.spec import tokens
from batch_prompt.testing import FakeServer

from .conftest import cli_env, run_cli
from .helpers_procs import chat_spec, statuses

PRICE = 1000.0  # USD per million tokens, in and out


def reasoning_spec(count: int, **model_args: Any) -> dict[str, Any]:
    spec = chat_spec(count, n=1)
    spec["model_args"] = {"n": 1, "max_completion_tokens": 50, "reasoning_effort": "low", **model_args}
    return spec


def run(db: Path, fake: FakeServer, tmp_path: Path, prices: dict[str, float], **extra: Any) -> bp.RunSummary:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o-mini": prices}))
    return bp.resume(db, base_url=fake.url, api_key="sk-test", cache_dir=str(tmp_path / "cache"), quiet=True,
                     retry=RetryPolicy.no_wait(), prices=str(path), **extra)


def test_reasoning_tokens_reach_status_and_exports(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(reasoning_tokens=5)
    db = tmp_path / "jobs.db"
    bp.create(db, **reasoning_spec(6))
    summary = run(db, fake, tmp_path, {"input": PRICE, "output": PRICE})
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 6})
    usages = [e["usage"] for e in fake.record if e["outcome"] == "ok"]
    reasoning = sum(u["completion_tokens_details"]["reasoning_tokens"] for u in usages)
    assert reasoning == 6 * 5 and summary.reasoning_tokens == reasoning
    status = bp.status(db)[0]
    assert status.reasoning_tokens == reasoning and status.models[0].reasoning_tokens == reasoning
    assert status.completion_tokens == sum(u["completion_tokens"] for u in usages)  # reasoning billed within
    out = run_cli("status", str(db), env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 0 and f"of them: {reasoning} reasoning tokens" in out.stdout
    assert json.loads(run_cli("status", str(db), "--json", env=cli_env(fake, tmp_path)).stdout)[0][
        "reasoning_tokens"] == reasoning
    bp.export(db, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["reasoning_tokens"]) for r in rows] == [5] * 6
    # the fake's requests said max_completion_tokens and reasoning_effort, as the spec asked
    assert {e["prompts"][0] for e in fake.record} == {f"q {i}" for i in range(6)}


def test_the_budget_holds_the_max_completion_tokens_worst_case(fake: FakeServer, tmp_path: Path) -> None:
    """With one request in flight at a time, a request goes while what was spent plus its worst case fits:
    the worst case is its prompt's bytes and the chat priming, and max_completion_tokens (50), reasoning
    included. Each answer costs 10 tokens (1 prompt, 4 words and 5 reasoning): a budget of the worst case
    plus 2.5 answers lets exactly 3 requests go."""
    fake.configure(reasoning_tokens=5)
    db = tmp_path / "jobs.db"
    bp.create(db, **reasoning_spec(8))
    worst = (tokens.REPLY_PRIMING + len("q 0") + tokens.TOKENS_PER_MESSAGE + 50) * PRICE / 1e6
    answer = 10 * PRICE / 1e6
    summary = run(db, fake, tmp_path, {"input": PRICE, "output": PRICE}, max_cost=worst + 2.5 * answer,
                  concurrency=1)
    record = [e for e in fake.record if e["outcome"] == "ok"]
    assert [e["usage"]["prompt_tokens"] + e["usage"]["completion_tokens"] for e in record] == [10, 10, 10]
    assert summary.exit_code == 1 and statuses(db) == Counter({"done": 3, "pending": 5})
    assert "the next request could cost up to $0.060" in summary.budget_reached[0]  # 60 tokens at PRICE


def test_cached_input_is_priced_at_the_cached_rate(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(cached_tokens=4)
    db = tmp_path / "jobs.db"
    spec = chat_spec(5, n=1, templates=["a question of some length, number {w}"])
    bp.create(db, **spec)
    prices = {"input": 1000.0, "cached_input": 100.0, "output": 2000.0}
    summary = run(db, fake, tmp_path, prices)
    usages = [e["usage"] for e in fake.record if e["outcome"] == "ok"]
    assert len(usages) == 5 and all(u["prompt_tokens"] > 4 for u in usages)
    assert {u["prompt_tokens_details"]["cached_tokens"] for u in usages} == {4}
    expected = sum((u["prompt_tokens"] - 4) * 1000.0 + 4 * 100.0 + u["completion_tokens"] * 2000.0
                   for u in usages) / 1e6
    assert summary.cost_usd == pytest.approx(expected) and summary.cached_tokens == 20
    status = bp.status(db, prices=tmp_path / "prices.json")[0]
    assert status.cost == pytest.approx(expected) and status.cached_tokens == 20
    # the estimate stays a worst case: no input assumed cached
    estimate = bp.estimate({**spec, "prices": str(tmp_path / "prices.json")})
    assert estimate.max_cost_live == pytest.approx(
        (estimate.input_tokens * 1000.0 + estimate.max_output_tokens * 2000.0) / 1e6)


def test_the_fake_caps_cached_tokens_at_the_prompts(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(cached_tokens=1000)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(2, n=1))
    run(db, fake, tmp_path, {"input": 1.0, "output": 1.0})
    for entry in fake.record:
        usage = entry["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]
