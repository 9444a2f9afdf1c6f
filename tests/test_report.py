"""What the researcher sees before and after a run: prices, `estimate`, `status`, `show`, `retry-failed`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import genai_prices
import pytest

import batch_prompt as bp
from batch_prompt.reports.prices import Prices
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer
from batch_prompt.testing.api import FakeRequest

from .conftest import API_KEY, run_cli

# an audit hook: any connection or name lookup, by any library, raises
NO_NETWORK = """
import sys
def _no_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
        raise OSError(f"network used: {event} {args}")
sys.addaudithook(_no_network)
"""
PRICE_FILE = {"my-model": {"input": 0.5, "output": 1.5, "batch_input": 0.25, "batch_output": 0.75}}


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def run_job(db: Path, fake: FakeServer, tmp_path: Path, **spec: Any) -> bp.RunSummary:
    job = bp.create(db, **spec)
    return job.run(base_url=fake.url, api_key=API_KEY, cache_dir=str(tmp_path / "cache"), quiet=True,
                   retry=RetryPolicy.no_wait(3))


def library_cost(model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
    """genai-prices' own figure, for a model it knows."""
    calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
                                   model, price_context={"processing": "batch"} if batch else None)
    return float(calc.total_price)


# --- prices -------------------------------------------------------------------------------------


def test_list_prices_are_genai_prices_and_need_no_network(tmp_path: Path) -> None:
    code = NO_NETWORK + """
import json
from batch_prompt.reports.prices import Prices
p = Prices()
print(json.dumps([p.cost(m, mode, 1000, 2000) for m in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o")
                  for mode in ("live", "batch")] + [p.known("my-llama"), p.cost("my-llama", "live", 1, 1)]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    *costs, known, unknown = json.loads(out.stdout)
    expected = [library_cost(m, 1000, 2000, batch) for m in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o")
                for batch in (False, True)]
    assert costs == pytest.approx(expected, rel=1e-12)
    assert costs[0] == pytest.approx((1000 * 0.15 + 2000 * 0.60) / 1e6)  # today's list price, a dated snapshot too
    assert costs[1] == pytest.approx(costs[0] / 2)  # genai-prices' own batch price: half, as OpenAI's rule
    assert (known, unknown) == (False, None)


def test_price_overrides_json_and_toml(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", '[my-model]\ninput = 0.5\noutput = 1.5\n\n["gpt-4o-mini"]\ninput = 1\n'
                                      'output = 2\nbatch_output = 0.1\n')
    prices = Prices.load(toml)
    assert prices.cost("my-model", "live", 1_000_000, 2_000_000) == 0.5 + 3.0
    assert prices.cost("my-model", "batch", 1_000_000, 2_000_000) == 0.25 + 1.5  # half, when not given
    assert prices.cost("gpt-4o-mini", "batch", 1_000_000, 1_000_000) == 0.5 + 0.1  # the override wins
    on_top = prices.overlay(write(tmp_path / "p.json", PRICE_FILE))
    assert on_top.cost("my-model", "batch", 1_000_000, 1_000_000) == 0.25 + 0.75
    assert on_top.known("gpt-4o-mini") and not on_top.known("other")
    for bad, message in [({"m": {"input": 1}}, "needs 'output'"), ({"m": {"input": -1, "output": 1}}, ">= 0"),
                         ({"m": {"input": 1, "output": 1, "cached": 1}}, "unknown field 'cached'"),
                         ([1], "must map model names"), ("{nope", "neither valid JSON nor valid TOML")]:
        with pytest.raises(bp.ConfigError, match=message):
            Prices.load(write(tmp_path / "bad", bad))
    with pytest.raises(bp.ConfigError, match="price file not found"):
        Prices.load(tmp_path / "missing.json")


# --- estimate -----------------------------------------------------------------------------------

# "Say w00" is 7 characters: ceil(7 / 4) = 2 tokens + 4 for the message, so 6 input tokens a prompt
ESTIMATE_SPEC = {"name": "say", "api": "chat", "model": ["my-model", "gpt-4o-mini"], "templates": ["Say {w}"],
                 "keywords": {"w": [f"w{i:02d}" for i in range(12)]}, "model_args": {"max_tokens": 12}}


def test_estimate_figures_and_wording(tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.json", ESTIMATE_SPEC)
    prices = write(tmp_path / "prices.json", PRICE_FILE)
    result = bp.estimate(spec, prices=prices, cache_dir=tmp_path / "no-cache-here")
    mine, mini = result.models
    assert (mine.model, mine.prompts, mine.requests, mine.input_tokens, mine.max_output_tokens) == (
        "my-model", 12, 12, 72, 144)
    assert mine.max_cost_live == pytest.approx((72 * 0.5 + 144 * 1.5) / 1e6)
    assert mine.max_cost_batch == pytest.approx((72 * 0.25 + 144 * 0.75) / 1e6)
    assert mini.max_cost_live == pytest.approx(library_cost("gpt-4o-mini", 72, 144), rel=1e-12)
    assert mini.max_cost_batch == pytest.approx(library_cost("gpt-4o-mini", 72, 144, batch=True), rel=1e-12)
    assert (result.prompts, result.input_tokens, result.cached, result.unpriced) == (24, 144, 0, ())
    assert not (tmp_path / "no-cache-here").exists()

    out = run_cli("estimate", str(spec), "--prices", str(prices), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "12 prompts in 12 requests to my-model: ~72 input tokens, at most 144 output tokens: "
        "at most $0.00025 at list price ($0.00013 in batch mode)",
        "12 prompts in 12 requests to gpt-4o-mini: ~72 input tokens, at most 144 output tokens: "
        "at most $0.000097 at list price ($0.000049 in batch mode)",
        "in all: 24 prompts in 24 requests: ~144 input tokens, at most 288 output tokens: "
        "at most $0.00035 at list price ($0.00017 in batch mode)",
    ]
    data = json.loads(run_cli("estimate", str(spec), "--prices", str(prices), "--json", cwd=tmp_path).stdout)
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["max_cost_live"] == pytest.approx(mine.max_cost_live + mini.max_cost_live)

    unpriced = run_cli("estimate", str(spec), cwd=tmp_path)  # no price file: my-model is named, not skipped
    lines = unpriced.stdout.splitlines()
    assert lines[0].endswith(": no known price for `my-model`: give one with --prices FILE")
    assert lines[2].endswith(": no known price for `my-model`: give one with --prices FILE")


def test_estimate_counts_what_the_cache_already_answers(fake: FakeServer, tmp_path: Path) -> None:
    # a first job asked six of the same requests of the same endpoint: they are answered, and cached
    first = {**ESTIMATE_SPEC, "name": "first", "model": "my-model", "keywords": {"w": [f"w{i:02d}" for i in range(6)]}}
    run_job(tmp_path / "first.db", fake, tmp_path, **first)
    spec = write(tmp_path / "spec.json", ESTIMATE_SPEC)
    result = bp.estimate(spec, cache_dir=tmp_path / "cache", base_url=fake.url)
    assert [(m.model, m.cached) for m in result.models] == [("my-model", 6), ("gpt-4o-mini", 0)]
    out = run_cli("estimate", str(spec), "--cache-dir", str(tmp_path / "cache"), "--base-url", fake.url + "/",
                  cwd=tmp_path)
    assert out.stdout.splitlines()[-1] == (
        "6 of 24 prompts are already answered in the cache: free; --no-cache for fresh samples")
    # the cache is per endpoint: another server's answers do not count
    assert bp.estimate(spec, cache_dir=tmp_path / "cache", base_url="http://elsewhere/v1").cached == 0
    env = {**__import__("os").environ, "OPENAI_BASE_URL": fake.url}  # the endpoint from the environment
    out = run_cli("estimate", str(spec), "--cache-dir", str(tmp_path / "cache"), "--json", env=env, cwd=tmp_path)
    assert json.loads(out.stdout)["cached"] == 6


def test_estimate_bad_price_file_is_one_line(tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.json", ESTIMATE_SPEC)
    out = run_cli("estimate", str(spec), "--prices", str(write(tmp_path / "p.json", {"m": {"input": "x"}})),
                  cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("batch-prompt: error: price file")
    assert out.stderr.count("\n") == 1


# --- status, show, retry-failed -----------------------------------------------------------------

GRID = {"name": "grid", "api": "chat", "model": ["gpt-4o-mini", "my-model"], "templates": ["Tell {w}"],
        "keywords": {"w": ["a", "FAIL400 b", "c", "FAIL400 d", "e"]}, "model_args": {"n": 2, "max_tokens": 8}}


def answered_usage(fake: FakeServer) -> Counter[str]:
    """Usage of every answer the fake server gave, summed by model, as the fake itself computes it."""
    usage: Counter[str] = Counter()
    for entry in fake.record:
        if entry["outcome"] != "ok":
            continue
        body = {"model": entry["model"], "messages": [{"role": "user", "content": p} for p in entry["prompts"]],
                "n": entry["n"], "max_tokens": GRID["model_args"]["max_tokens"]}
        answer = json.loads(FakeRequest(True, json.dumps(body).encode()).response(entry["seq"]))["usage"]
        usage[f"{entry['model']} prompt"] += answer["prompt_tokens"]
        usage[f"{entry['model']} completion"] += answer["completion_tokens"]
    return usage


@pytest.fixture
def grid_db(fake: FakeServer, tmp_path: Path) -> Path:
    """A job with two models, four prompts rejected (400), one answered from the cache (an earlier job)."""
    run_job(tmp_path / "warm.db", fake, tmp_path, **{**GRID, "name": "warm", "model": "gpt-4o-mini",
                                                      "keywords": {"w": ["a"]}})
    fake.reset()
    db = tmp_path / "jobs.db"
    summary = run_job(db, fake, tmp_path, **GRID)
    assert (summary.done, summary.cached, summary.failed) == (6, 1, 4)
    return db


def test_status_json_tokens_are_what_the_server_answered(grid_db: Path, fake: FakeServer, tmp_path: Path) -> None:
    prices = write(tmp_path / "prices.json", PRICE_FILE)
    out = run_cli("status", str(grid_db), "--json", "--prices", str(prices), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [job] = json.loads(out.stdout)
    usage = answered_usage(fake)
    assert usage["gpt-4o-mini prompt"] > 0 and usage["my-model completion"] > 0
    assert (job["job"], job["api"], job["mode"], job["state"]) == ("grid", "chat", "live", "ready")
    assert {k: job[k] for k in ("total", "done", "pending", "running", "failed", "cached", "requests")} == {
        "total": 10, "done": 6, "pending": 0, "running": 0, "failed": 4, "cached": 1, "requests": 5}
    assert (job["prompt_tokens"], job["completion_tokens"]) == (
        usage["gpt-4o-mini prompt"] + usage["my-model prompt"],
        usage["gpt-4o-mini completion"] + usage["my-model completion"])
    models = {m["model"]: m for m in job["models"]}
    assert {name: (m["total"], m["done"], m["failed"], m["cached"], m["requests"]) for name, m in models.items()} == {
        "gpt-4o-mini": (5, 3, 2, 1, 2), "my-model": (5, 3, 2, 0, 3)}
    for name, m in models.items():
        assert (m["prompt_tokens"], m["completion_tokens"]) == (usage[f"{name} prompt"], usage[f"{name} completion"])
    mini, mine = models["gpt-4o-mini"], models["my-model"]
    assert mini["cost"] == pytest.approx(library_cost("gpt-4o-mini", mini["prompt_tokens"],
                                                      mini["completion_tokens"]), rel=1e-12)
    assert mine["cost"] == pytest.approx((mine["prompt_tokens"] * 0.5 + mine["completion_tokens"] * 1.5) / 1e6)
    assert job["cost"] == pytest.approx(mini["cost"] + mine["cost"]) and job["unpriced"] == []
    [errors] = job["errors"]
    assert (errors["kind"], errors["count"]) == ("BadRequestError 400", 4)
    assert "Invalid prompt: contains FAIL400" in errors["example"]
    assert json.loads(json.dumps([s.to_dict() for s in bp.status(grid_db, prices=prices)])) == [job]

    # without the price file my-model is named, and the job's total is unknown
    [plain] = bp.status(grid_db)
    assert (plain.cost, plain.unpriced) == (None, ("my-model",))
    text = run_cli("status", str(grid_db), cwd=tmp_path).stdout.splitlines()
    assert text[0] == "grid (chat, live): 6 of 10 prompts done (1 from the cache), 4 failed"
    assert text[2] == "  cost unknown: no known price for `my-model`: give one with --prices FILE"
    assert text[-2] == "  4 failed with BadRequestError 400, e.g.:"
    assert "FAIL400" in text[-1] and all(len(line) <= 100 for line in text)


def test_status_of_a_job_not_run_yet(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **GRID)
    [job] = bp.status(db)
    assert (job.total, job.pending, job.done, job.cached, job.requests, job.cost, job.errors) == (10, 10, 0, 0, 0,
                                                                                                   0.0, ())
    assert run_cli("status", str(db), cwd=tmp_path).stdout.splitlines() == [
        "grid (chat, live): 0 of 10 prompts done, 10 pending", "  nothing paid for yet",
        "  gpt-4o-mini: 0 of 5 done, 5 pending", "  my-model: 0 of 5 done, 5 pending"]


def test_show_failed_lists_the_rejected_prompts(grid_db: Path, tmp_path: Path) -> None:
    out = run_cli("show", str(grid_db), "--status", "failed", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    views = json.loads(out.stdout)
    assert [(v["model"], v["keywords"]["w"], v["status"], v["error_kind"]) for v in views] == [
        (model, w, "failed", "BadRequestError 400") for w in ("FAIL400 b", "FAIL400 d")
        for model in ("gpt-4o-mini", "my-model")]
    assert all("400" in v["error"] and v["answers"] == [] for v in views)
    assert views[0]["prompt"] == [{"role": "user", "content": "Tell FAIL400 b"}]
    text = run_cli("show", str(grid_db), "--status", "failed", "--limit", "1", cwd=tmp_path).stdout.splitlines()
    assert text[0] == "grid #3 gpt-4o-mini failed: BadRequestError 400 (1 attempt)"
    assert text[1:3] == ["  prompt: user: Tell FAIL400 b", '  keywords: {"w": "FAIL400 b"}']
    assert text[3].startswith("  error: BadRequestError 400") and len(text) == 4

    done = bp.show(grid_db, status="done", limit=2)
    assert [(v.keywords, v.answers, v.cached) for v in done] == [
        ({"w": "a"}, ("echo 0: Tell a", "echo 1: Tell a"), True), ({"w": "a"}, ("echo 0: Tell a", "echo 1: Tell a"),
                                                                    False)]
    text = run_cli("show", str(grid_db), "--status", "done", "--limit", "1", cwd=tmp_path).stdout.splitlines()
    assert text == ["grid #1 gpt-4o-mini done (from the cache)", "  prompt: user: Tell a", '  keywords: {"w": "a"}',
                    "  answer: echo 0: Tell a (+1 more choice)"]
    assert len(bp.show(grid_db)) == 10 and len(bp.show(grid_db, job="grid", limit=3)) == 3
    pending = run_cli("show", str(grid_db), "--status", "pending", cwd=tmp_path)
    assert pending.stdout == f"no pending prompts in {grid_db}\n"
    missing = run_cli("show", str(grid_db), "--job", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr == (
        f"batch-prompt: error: no job named 'nope' in {grid_db} (jobs: 'grid')\n")


def test_retry_failed_by_error_type_and_job(grid_db: Path, tmp_path: Path) -> None:
    out = run_cli("retry-failed", str(grid_db), "--error-type", "RetryExhausted", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("0 failed prompts (RetryExhausted) are pending again")
    out = run_cli("retry-failed", str(grid_db), "--job", "grid", "--error-type", "BadRequestError 400", cwd=tmp_path)
    assert out.stdout.startswith("4 failed prompts (BadRequestError 400) are pending again")
    statuses = Counter(r[0] for r in sqlite3.connect(grid_db).execute("SELECT status FROM prompts"))
    assert statuses == Counter({"done": 6, "pending": 4})
    assert run_cli("retry-failed", str(grid_db), "--job", "nope", cwd=tmp_path).returncode == 2


def test_reading_needs_no_key_and_no_network(grid_db: Path, tmp_path: Path) -> None:
    """status, show, export and estimate in a process that can open no socket and has no key."""
    code = NO_NETWORK + """
from batch_prompt.cli import main
db, out, spec = sys.argv[1:4]
codes = [main(["status", db]), main(["show", db, "--json"]), main(["estimate", spec])]
codes += [main(["export", db, "-o", f"{out}.{suffix}"]) for suffix in ("pkl", "jsonl", "csv", "parquet", "db")]
print(codes, file=sys.stderr)
sys.exit(max(codes))
"""
    spec = write(tmp_path / "spec.json", GRID)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OPENAI_")}
    out = subprocess.run([sys.executable, "-c", code, str(grid_db), str(tmp_path / "r"), str(spec)], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(list(tmp_path.glob("r.*"))) == 5
