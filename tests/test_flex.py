"""Flex processing (`--service-tier flex`): requests at the flex tier, priced at the flex price; a 429
"resource unavailable" is capacity, waited out at no attempt's cost; `--flex-fallback S` sends a prompt
that waited that long at the default tier, priced at the default price."""

from __future__ import annotations

import json
import sqlite3
import time
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.errors import ConfigError
from batch_prompt.options import SERVICE_TIERS
from batch_prompt.reports.prices import Prices
from batch_prompt.run.failures import Verdict
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import cli_env, run_cli
from .helpers_procs import chat_spec, statuses, write_spec

LIVE = {"input": 1000.0, "output": 2000.0}
FLEX = {"flex_input": 100.0, "flex_output": 200.0}


def price_file(tmp_path: Path, name: str = "prices.json", **extra: float) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"gpt-4o-mini": {**LIVE, **extra}}))
    return path


def priced(entries: list[dict[str, Any]], rate_in: float, rate_out: float) -> float:
    """What the fake's answers cost at these rates (USD per million tokens), from its own usage."""
    return sum(e["usage"]["prompt_tokens"] * rate_in + e["usage"]["completion_tokens"] * rate_out
               for e in entries) / 1e6


def options(fake: FakeServer, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"base_url": fake.url, "api_key": "sk-test", "cache_dir": str(tmp_path / "cache"), "quiet": True,
            "prices": str(price_file(tmp_path, **FLEX)), **extra}


def test_a_flex_job_with_capacity_429s_finishes_without_failures_at_the_flex_price(
        fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(flex_capacity_rate=0.3, seed=7)
    db = tmp_path / "jobs.db"
    job = bp.create(db, **chat_spec(40, n=1))
    # one attempt a prompt: a capacity 429 that used one would fail it
    summary = job.run(**options(fake, tmp_path, service_tier="flex", retry=RetryPolicy.no_wait(max_attempts=1),
                                concurrency=8))
    assert summary.exit_code == 0 and summary.failed == 0 and statuses(db) == Counter({"done": 40})
    record = fake.record
    outcomes = Counter(e["outcome"] for e in record)
    assert outcomes["ok"] == 40 and outcomes["capacity_429"] > 0  # 30% of requests, seeded
    assert set(outcomes) == {"ok", "capacity_429"}
    assert {e["service_tier"] for e in record} == {"flex"}  # every request, the retried ones too
    assert summary.capacity_waits == outcomes["capacity_429"] and summary.fell_back == 0
    assert summary.flex == 40 and summary.paid == 40
    answered = [e for e in record if e["outcome"] == "ok"]
    assert Counter(p for e in answered for p in e["prompts"]) == Counter(f"q {i}" for i in range(40))
    expected = priced(answered, FLEX["flex_input"], FLEX["flex_output"])
    assert summary.cost_usd == pytest.approx(expected)
    status = bp.status(db, prices=price_file(tmp_path, **FLEX))[0]
    assert status.cost == pytest.approx(expected) and status.flex_requests == 40
    # the row's request is as created: the tier is the run's, never part of the request's identity
    conn = sqlite3.connect(db)
    requests = [json.loads(r[0]) for r in conn.execute("SELECT request FROM prompts")]
    conn.close()
    assert not any("service_tier" in r for r in requests)
    assert "flex: 40 answers at the flex tier" in str(summary)


def test_without_a_flex_price_flex_is_at_the_batch_price(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    prices = price_file(tmp_path, "batch.json", batch_input=300.0, batch_output=600.0)
    summary = bp.create(db, **chat_spec(6, n=1)).run(**{**options(fake, tmp_path), "prices": str(prices)},
                                                     service_tier="flex")
    answered = [e for e in fake.record if e["outcome"] == "ok"]
    assert summary.exit_code == 0 and len(answered) == 6
    assert summary.cost_usd == pytest.approx(priced(answered, 300.0, 600.0))
    assert bp.status(db, prices=prices)[0].cost == pytest.approx(priced(answered, 300.0, 600.0))


def test_flex_fallback_sends_at_the_default_tier_after_the_wait(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(flex_capacity_rate=1.0)  # flex never has capacity
    db = tmp_path / "jobs.db"
    job = bp.create(db, **chat_spec(4, n=1))
    started = time.monotonic()
    summary = job.run(**options(fake, tmp_path, service_tier="flex", flex_fallback=0.5, concurrency=4,
                                retry=RetryPolicy(max_attempts=1, initial=0.05, maximum=0.1, jitter=0.0)))
    took = time.monotonic() - started
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 4})
    record = fake.record
    answered = [e for e in record if e["outcome"] == "ok"]
    assert len(answered) == 4 and {e["service_tier"] for e in answered} == {"default"}
    refused = [e for e in record if e["outcome"] == "capacity_429"]
    assert refused and {e["service_tier"] for e in refused} == {"flex"}
    for prompt in (f"q {i}" for i in range(4)):  # each waited its 0.5 s on flex before going at default
        first = min(e["t"] for e in refused if e["prompts"] == [prompt])
        sent = next(e["t"] for e in answered if e["prompts"] == [prompt])
        assert sent - first >= 0.5
    assert 0.5 <= took < 5
    assert summary.fell_back == 4 and summary.flex == 0 and summary.capacity_waits == len(refused)
    expected = priced(answered, LIVE["input"], LIVE["output"])  # answered at default: the default price
    assert summary.cost_usd == pytest.approx(expected)
    assert bp.status(db, prices=price_file(tmp_path, **FLEX))[0].cost == pytest.approx(expected)
    assert "4 requests sent at the default tier after --flex-fallback" in str(summary)


def test_a_capacity_retry_after_of_a_day_waits_no_longer_than_the_fallback(fake: FakeServer, tmp_path: Path) -> None:
    """A capacity 429 saying `retry-after: 86400` is waited out at most until `--flex-fallback` (it once held
    each prompt the longest server wait, 60 s, before the fallback was looked at)."""
    fake.configure(flex_capacity_rate=1.0, flex_retry_after=86400)
    db = tmp_path / "jobs.db"
    job = bp.create(db, **chat_spec(4, n=1))
    started = time.monotonic()
    summary = job.run(**options(fake, tmp_path, service_tier="flex", flex_fallback=0.3, concurrency=4,
                                retry=RetryPolicy(max_attempts=1)))
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 4}) and time.monotonic() - started < 5
    outcomes = Counter((e["service_tier"], e["outcome"]) for e in fake.record)
    assert outcomes == Counter({("flex", "capacity_429"): 4, ("default", "ok"): 4}) and summary.fell_back == 4


def test_the_command_line_sends_flex_and_says_how_many_fell_back(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(flex_capacity_rate=1.0)
    spec = write_spec(tmp_path, chat_spec(2, n=1))
    db = tmp_path / "jobs.db"
    out = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "c"), "--yes", "--quiet",
                  "--service-tier", "flex", "--flex-fallback", "0", "--prices", str(price_file(tmp_path, **FLEX)),
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 requests sent at the default tier after --flex-fallback" in out.stderr
    assert [e["service_tier"] for e in fake.record if e["outcome"] == "ok"] == ["default", "default"]


def test_a_spec_can_ask_for_flex_in_its_model_args(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    spec = chat_spec(3, n=1)
    spec["model_args"] = {**spec["model_args"], "service_tier": "flex"}
    summary = bp.create(db, **spec).run(**options(fake, tmp_path))
    assert summary.exit_code == 0 and summary.flex == 3
    assert [e["service_tier"] for e in fake.record] == ["flex"] * 3


def test_an_unknown_service_tier_is_exit_2_and_writes_nothing(fake: FakeServer, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, chat_spec(2, n=1))
    db = tmp_path / "jobs.db"
    out = run_cli("run", str(spec), "--db", str(db), "--service-tier", "cheap", "--yes",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--service-tier" in out.stderr and "'cheap'" in out.stderr
    assert not db.exists() and fake.record == []
    bad = chat_spec(2, n=1)
    bad["model_args"] = {**bad["model_args"], "service_tier": "cheap"}
    out = run_cli("run", str(write_spec(tmp_path, bad, "bad.json")), "--db", str(db), "--yes",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "service_tier" in out.stderr and not db.exists()
    with pytest.raises(ConfigError, match="service_tier must be one of"):
        bp.create(db, **chat_spec(2, n=1)).run(**options(fake, tmp_path), service_tier="cheap")
    assert fake.record == []


def test_the_tiers_are_the_sdks() -> None:
    from openai.types.chat import completion_create_params

    hints = typing.get_type_hints(completion_create_params.CompletionCreateParamsBase)
    (literal,) = [a for a in typing.get_args(hints["service_tier"]) if a is not type(None)]
    assert set(typing.get_args(literal)) == set(SERVICE_TIERS)


def test_a_capacity_429_is_its_own_verdict_and_costs_no_attempt() -> None:
    from batch_prompt.run.failures import Failure

    policy = RetryPolicy(max_attempts=2, initial=1.0, maximum=8.0, jitter=0.0)
    capacity = Failure(Verdict.CAPACITY, "RateLimitError 429", "resource unavailable", 429)
    assert [policy.decide(capacity, n) for n in (1, 2, 3, 50)] == [1.0, 2.0, 4.0, 8.0]  # never gives up
    assert policy.decide(Failure(Verdict.RETRY, "x", "y"), 2) is None


def test_flex_prices_from_genai_prices() -> None:
    """genai-prices' own flex price where it has one (o4-mini), else the batch price (gpt-4o-mini)."""
    import genai_prices

    rate = Prices().rate("o4-mini")
    assert rate is not None
    flex = genai_prices.calc_price(genai_prices.Usage(input_tokens=10**6, output_tokens=10**6), "o4-mini",
                                   provider_id="openai", price_context={"service_tier": "flex"})
    assert rate.cost("flex", 10**6, 10**6) == pytest.approx(float(flex.total_price))
    mini = Prices().rate("gpt-4o-mini")
    assert mini is not None and mini.cost("flex", 1000, 1000) == mini.cost("batch", 1000, 1000)
