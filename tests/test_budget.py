"""The budget (--max-cost): a job's spend, counted across resumes, never passes it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
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
    assert "job 'chat' reached its budget of $0.05" in out.stderr and "resume with a larger budget: " in out.stderr
    assert "python -m batch_prompt.resume" in out.stderr and "--max-cost 0.1" in out.stderr
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


def byte_server_cost(fake: FakeServer) -> float:
    """What the fake answered at PRICE, its usage counted per UTF-8 byte (`usage_bytes`: 4 more a message)."""
    tokens = 0
    for entry in fake.record:
        if entry["status"] != 200:
            continue
        for prompt in entry["prompts"]:
            tokens += len(prompt.encode()) + 4
            tokens += sum(min(len(f"echo {j}: {prompt}".split()), 8) for j in range(entry["n"]))
    return tokens * PRICE / 1e6


def test_the_budget_holds_whatever_the_tokenizer_counts(fake: FakeServer, tmp_path: Path) -> None:
    """Prompts of CJK text and digits, which a tokenizer counts far above 1 token per 4 characters (here
    the worst a byte-level one can: a token per UTF-8 byte): the server's own usage never passes the budget."""
    fake.configure(latency=0.05, usage_bytes=True)
    db = tmp_path / "jobs.db"
    spec = {**chat_spec(60, n=1), "templates": ["数字 {w} 一二三四五六七八九十 3.14159265358979 2718281828"]}
    bp.create(db, **spec)
    summary = run(db, fake, tmp_path, max_cost=0.5, concurrency=20)
    spent = byte_server_cost(fake)
    assert 0.25 < spent <= 0.5, spent  # at the server's count, not ours
    assert summary.exit_code == 1 and summary.budget_reached and statuses(db)["pending"] > 0
    assert bp.status(db, prices=price_file(tmp_path))[0].cost == pytest.approx(spent)
    # the same budget again: nothing more is sent; a larger one goes on
    before = len(fake.record)
    summary = run(db, fake, tmp_path, max_cost=0.5, concurrency=20)
    assert summary.budget_reached and len(fake.record) == before and summary.larger_budget is not None
    larger = summary.larger_budget
    run(db, fake, tmp_path, max_cost=larger, concurrency=20)
    assert len(fake.record) > before and byte_server_cost(fake) <= larger


def test_answers_paid_for_by_a_killed_run_count_when_taken_from_the_cache(fake: FakeServer, tmp_path: Path) -> None:
    """A run killed after caching answers and before recording them: its resume takes them from the cache
    (free now) and counts what they cost then, in the job's spend and against its budget; answers the cache
    holds for other rows (another job's, counted there) stay free."""
    from batch_prompt.store.cache import ResponseCache
    from batch_prompt.store.database import Store

    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(20, n=1))
    bp.create(db, **chat_spec(20, name="other", n=1))  # the same requests, as another job
    usage = {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200}
    with Store(db) as store, ResponseCache(tmp_path / "cache", fake.url.lower()) as cache:
        job = store.job("chat")
        assert job is not None
        rows = store.claim(job, "gpt-4o-mini", "test:1:x", 5, 60)  # what the killed run held
        for row in rows:
            body = {"id": f"x{row.id}", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                                     "finish_reason": "stop"}], "usage": usage}
            cache.set(row.hash, json.dumps(body), tag=f"{job.name}@{job.created_at}#{row.id}")
        store.release([row.id for row in rows], "test:1:x")
    summary = run(db, fake, tmp_path)
    assert summary.exit_code == 0 and len(fake.record) == 15  # 5 from the cache, the rest asked
    report = {job.job: job for job in bp.status(db, prices=price_file(tmp_path))}
    assert report["chat"].prompt_tokens == 5 * 100 + sum(
        max(1, len(p) // 4) for e in fake.record for p in e["prompts"])
    assert report["chat"].requests == 20 and report["other"].requests == 0  # other: the same answers, free
    assert report["other"].done == 20 and len(fake.answered()) == 15


def test_two_processes_resuming_one_job_share_its_budget(fake: FakeServer, tmp_path: Path, procs: Any) -> None:
    """Two real processes resume the same job at once, each given the budget: together they spend at most it
    (the database holds the spend and what each has in flight)."""
    fake.configure(latency=0.1)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(400, n=1))
    prices = price_file(tmp_path)
    args = [str(db), "--cache-dir", str(tmp_path / "cache"), "--concurrency", "8", "--quiet",
            "--max-cost", "0.3", "--prices", str(prices)]
    first, second = procs.resume(*args), procs.resume(*args)
    assert (first.wait(60), second.wait(60)) == (1, 1), (first.stderr, second.stderr)
    spent = server_cost(fake)
    assert 0.2 < spent <= 0.3, spent
    assert bp.status(db, prices=prices)[0].cost == pytest.approx(spent)
    assert set(fake.answered().values()) == {1}


@pytest.mark.parametrize(("limit", "spent", "next_cost", "larger"), [
    (0.4, 0.0, 1.11, 1.2), (0.4, 0.7, 0.0101, 0.8), (0.05, 0.049, 0.2, 0.25), (1.0, 0.0, 0.5, 2.0),
    (0.3, 0.0, 0.65, 0.65),
])
def test_the_larger_budget_suggested_lets_the_next_request_go(limit: float, spent: float, next_cost: float,
                                                               larger: float) -> None:
    """Rounded up, never down: $1.11 needed was once said as max_cost=1.1, which stops again at once."""
    from batch_prompt.run.budget import Budget

    budget = Budget(None, limit, None, spent, lambda: 0.0)  # type: ignore[arg-type]
    budget.next_cost = next_cost
    assert budget.larger() == larger and budget.larger() >= spent + next_cost
