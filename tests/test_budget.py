"""The budget (--max-cost): a job's spend, counted across resumes, never passes it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import cli_env, run_cli
from .helpers_procs import chat_spec, statuses, write_spec

PRICE = 1000.0  # USD per million tokens, in and out: one token costs a tenth of a cent


def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o-mini": {"input": PRICE, "output": PRICE}}))
    return path


def server_cost(fake: FakeServer) -> float:
    """What the fake answered, at PRICE, counted as the fake counts usage (chat: one message each)."""
    tokens = 0
    for entry in fake.record:
        if entry["outcome"] != "ok":
            continue
        for prompt in entry["prompts"]:
            tokens += max(1, len(prompt) // 4)  # prompt tokens
            tokens += sum(min(len(f"echo {j}: {prompt}".split()), 8) for j in range(entry["n"]))
    return tokens * PRICE / 1e6


def run(db: Path, fake: FakeServer, tmp_path: Path, **options: Any) -> bp.RunSummary:
    options = {"base_url": fake.url, "api_key": "sk-test", "cache_dir": str(tmp_path / "cache"), "quiet": True,
               "retry": RetryPolicy.no_wait(), "prices": str(price_file(tmp_path)), **options}
    return bp.resume(db, **options)


def test_the_budget_stops_the_run_before_the_spend_passes_it(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(latency=0.02)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(100, n=1))
    summary = run(db, fake, tmp_path, max_cost=0.2, concurrency=8)
    spent = server_cost(fake)
    assert 0.1 < spent <= 0.2  # as close as the worst-case reservations allow, never past it
    assert summary.exit_code == 1 and len(summary.budget_reached) == 1
    assert "reached its budget of $0.2" in summary.budget_reached[0]
    counts = statuses(db)
    assert counts["done"] == len(fake.answered()) and counts["pending"] == 100 - counts["done"]  # pending, not failed
    assert bp.status(db, prices=price_file(tmp_path))[0].cost == pytest.approx(spent)
    # a resume with a larger budget goes on, and the spend so far counts
    summary = run(db, fake, tmp_path, max_cost=0.4, concurrency=8)
    assert 0.3 < server_cost(fake) <= 0.4 and summary.budget_reached
    summary = run(db, fake, tmp_path, max_cost=10.0)
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 100})
    assert set(fake.answered().values()) == {1}


def test_the_spec_can_set_the_budget_and_the_command_line_says_it(fake: FakeServer, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {**chat_spec(60, n=1), "max_cost": 0.05, "prices": str(price_file(tmp_path))})
    db = tmp_path / "jobs.db"
    out = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "c"), "--quiet", "--yes",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "job 'chat' reached its budget of $0.05" in out.stderr and "resume with a larger --max-cost" in out.stderr
    assert server_cost(fake) <= 0.05 and statuses(db)["pending"] > 0


def test_a_budget_without_a_price_is_refused_naming_the_model(fake: FakeServer, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {**chat_spec(5, n=1), "model": ["gpt-4o-mini", "my-llama"]})
    db = tmp_path / "jobs.db"
    out = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "c"), "--max-cost", "1", "--yes",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "'my-llama' has no known price" in out.stderr and fake.record == []


def test_batch_mode_submits_only_what_the_budget_allows(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(100, n=1))
    summary = run(db, fake, tmp_path, mode="batch", max_cost=0.2, poll=0.05)
    lines = sum(b["lines"] for b in fake.batches)
    assert 0 < lines < 100 and summary.budget_reached
    # at the batch price (half the override's live price, by OpenAI's rule), within the budget
    assert server_cost(fake) / 2 <= 0.2
    assert statuses(db) == Counter({"done": lines, "pending": 100 - lines})


def test_a_chat_request_without_a_token_limit_reserves_a_long_answer(fake: FakeServer, tmp_path: Path) -> None:
    """No max_tokens: the answer's length has no bound but the model's, so a budget reserves
    UNBOUNDED_CHAT_TOKENS per choice (here $4.10 a request) rather than a short answer's cost."""
    db = tmp_path / "jobs.db"
    spec = chat_spec(10, n=1)
    del spec["model_args"]["max_tokens"]
    bp.create(db, **spec)
    summary = run(db, fake, tmp_path, max_cost=1.0)
    assert summary.budget_reached and summary.exit_code == 1
    assert fake.record == [] and statuses(db) == Counter({"pending": 10})
    assert run(db, fake, tmp_path, max_cost=50.0).exit_code == 0 and len(fake.answered()) == 10
