"""The runner over real HTTP against the fake server: results, retries, failures, cache, stop, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, cli_env, run_cli
from .helpers_procs import chat_spec, statuses


def run(db: Path, fake: FakeServer, tmp_path: Path, name: str | None = None, **options: Any) -> bp.RunSummary:
    options.setdefault("retry", RetryPolicy.no_wait(options.get("max_attempts", 8)))
    options.setdefault("quiet", True)
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    options.setdefault("api_key", API_KEY)
    options.setdefault("base_url", fake.url)
    if name is None:
        return bp.resume(db, **options)
    return bp.Job(str(db), name, 0).run(**options)


def assert_chat_results(results: list[dict[str, Any]], prompts: int, n: int) -> None:
    assert len(results) == prompts * n
    for item in results:
        prompt = item["messages"][-1]["content"]
        assert item["choice"]["message"]["content"] == f"echo {item['choice']['index']}: {prompt}"
    per_prompt = Counter(item["prompt_hash"] for item in results)
    assert set(per_prompt.values()) == {n} and len(per_prompt) == prompts


def test_chat_job_returns_prompts_times_n(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(40, n=3))
    summary = run(db, fake, tmp_path, "chat")
    assert (summary.done, summary.failed, summary.cached, summary.exit_code) == (40, 0, 0, 0)
    assert len(fake.record) == 40 and set(fake.answered().values()) == {1}
    results = bp.export(db)
    assert isinstance(results, list)
    assert_chat_results(results, 40, 3)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM prompts WHERE status='done' AND attempts=1").fetchone() == (40,)
    # what was paid for: one response per prompt, its usage summed (the rows hold the same usage)
    tokens = conn.execute("SELECT sum(prompt_tokens), sum(completion_tokens) FROM prompts").fetchone()
    assert conn.execute("SELECT model, mode, requests, answers, prompt_tokens, completion_tokens FROM spend"
                        ).fetchall() == [("gpt-4o-mini", "live", 40, 40, *tokens)]
    assert tokens[0] > 0 and tokens[1] > 0
    # cost so far: gpt-4o-mini at list price ($0.15 / $0.60 per million) of exactly the tokens recorded
    assert (summary.prompt_tokens, summary.completion_tokens) == tokens
    assert summary.cost_usd == pytest.approx((tokens[0] * 0.15 + tokens[1] * 0.60) / 1e6, rel=1e-12)


def test_completions_are_packed_and_mapped_back_by_index(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, name="legacy", api="completions", model="davinci-002", templates=["Say {w}"],
              keywords={"w": [f"w{i}" for i in range(10)]}, model_args={"n": 3, "max_tokens": 4},
              prompts_per_request=4)
    summary = run(db, fake, tmp_path, "legacy")
    assert (summary.done, summary.requests) == (10, 3)
    assert sorted(len(entry["prompts"]) for entry in fake.record) == [2, 4, 4]
    results = bp.export(db)
    assert isinstance(results, list) and len(results) == 30
    for item in results:
        assert item["choice"]["text"] == f"echo {item['choice']['index']}: {item['prompt']}"
        assert 0 <= item["choice"]["index"] < 3
    assert [r["prompt"] for r in results[:6]] == ["Say w0"] * 3 + ["Say w1"] * 3


def test_packed_request_with_a_bad_prompt_fails_only_that_prompt(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    words = [f"w{i}" for i in range(8)]
    words[5] = "FAIL400"
    bp.create(db, name="legacy", api="completions", model="m", templates=["Say {w}"], keywords={"w": words},
              prompts_per_request=8)
    summary = run(db, fake, tmp_path, "legacy")
    assert (summary.done, summary.failed, summary.exit_code) == (7, 1, 1)
    row = sqlite3.connect(db).execute("SELECT keywords, last_error FROM prompts WHERE status='failed'").fetchall()
    assert len(row) == 1 and json.loads(row[0][0]) == {"w": "FAIL400"} and "400" in row[0][1]
    assert set(fake.answered()) == {f"Say {w}" for w in words if w != "FAIL400"}
    assert max(fake.answered().values()) == 1


def test_permanent_400_fails_only_those_prompts(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, name="mixed", model="m", templates=["{w}"], keywords={"w": ["a", "FAIL400 b", "c", "FAIL400 d"]})
    summary = run(db, fake, tmp_path, "mixed")
    assert (summary.done, summary.failed, summary.exit_code) == (2, 2, 1)
    assert summary.errors == Counter({"BadRequestError 400": 2})
    outcomes = Counter(entry["outcome"] for entry in fake.record)
    assert outcomes == Counter({"ok": 2, "error_400": 2})  # a 400 is never retried
    assert statuses(db) == Counter({"done": 2, "failed": 2})


def test_transient_faults_are_retried_and_nothing_is_answered_twice(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(error_rate=0.05, drop_rate=0.02, malformed_rate=0.01, wrong_choices_rate=0.01, seed=7)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(400, n=2))
    summary = run(db, fake, tmp_path, "chat", concurrency=32)
    assert (summary.done, summary.failed, summary.exit_code) == (400, 0, 0)
    outcomes = Counter(entry["outcome"] for entry in fake.record)
    assert outcomes["ok"] == 400 and outcomes["error_5xx"] > 0 and outcomes["dropped"] > 0
    assert outcomes["malformed"] > 0
    assert len(fake.answered()) == 400 and max(fake.answered().values()) == 1
    results = bp.export(db)
    assert isinstance(results, list)
    assert_chat_results(results, 400, 2)


def test_hung_request_times_out_and_is_retried(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    fake.configure(hang_seconds=30)
    bp.create(db, name="hang", model="m", templates=["{w}"], keywords={"w": ["HANG now", "fine"]})
    summary = run(db, fake, tmp_path, "hang", timeout=0.5, max_attempts=2)
    assert (summary.done, summary.failed) == (1, 1)
    error = sqlite3.connect(db).execute("SELECT last_error, attempts FROM prompts WHERE status='failed'").fetchone()
    assert "Timeout" in error[0] and error[1] == 2
    assert [e["outcome"] for e in fake.record if e["prompts"] == ["HANG now"]] == ["hang", "hang"]


def test_401_stops_the_run_with_rows_left_pending(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(api_key="sk-the-right-one")
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(50, n=3))
    with pytest.raises(bp.FatalAPIError) as info:
        run(db, fake, tmp_path, "chat", concurrency=4)
    assert "401" in str(info.value) and API_KEY not in str(info.value)
    assert statuses(db) == Counter({"pending": 50})
    assert len(fake.record) <= 4  # stopped at once: no retries, no further requests

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(chat_spec(50, n=3)))
    out = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "c"), "--quiet",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "the API refused the run" in out.stderr and API_KEY not in out.stderr
    assert statuses(db) == Counter({"pending": 50})


def test_exhausted_quota_stops_the_run(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(quota_exhausted=True)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(20, n=3))
    with pytest.raises(bp.FatalAPIError, match="insufficient_quota"):
        run(db, fake, tmp_path, "chat", concurrency=2)
    assert statuses(db) == Counter({"pending": 20})
    assert len(fake.record) <= 2


def test_missing_key_is_a_config_error_before_any_work(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(5, n=3))
    with pytest.raises(bp.ConfigError, match="no API key"):
        bp.Job(str(db), "chat", 5).run(base_url=fake.url, quiet=True)
    assert fake.record == [] and statuses(db) == Counter({"pending": 5})


def test_overlapping_second_job_is_served_from_cache(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(30, n=3))
    run(db, fake, tmp_path, "chat")
    assert len(fake.record) == 30
    fake.reset()
    other_db = tmp_path / "other.db"
    bp.create(other_db, **chat_spec(30, name="again", n=3))
    summary = run(other_db, fake, tmp_path, "again")
    assert (summary.done, summary.cached, summary.requests) == (30, 30, 0)
    assert fake.record == []
    results = bp.export(other_db)
    assert isinstance(results, list)
    assert_chat_results(results, 30, 3)
    # --no-cache asks again; the endpoint is part of the cache key, so another server shares nothing
    fresh = run(other_db, fake, tmp_path, None, cache=False)
    assert fresh.done == 0  # nothing left to do in this file...
    bp.create(tmp_path / "third.db", **chat_spec(30, name="third", n=3))
    third = run(tmp_path / "third.db", fake, tmp_path, "third", cache=False)
    assert (third.done, third.cached, len(fake.record)) == (30, 0, 30)
    with FakeServer() as second_server:
        bp.create(tmp_path / "fourth.db", **chat_spec(30, name="fourth", n=3))
        fourth = run(tmp_path / "fourth.db", second_server, tmp_path, "fourth")
        assert (fourth.done, fourth.cached, len(second_server.record)) == (30, 0, 30)


def test_the_start_of_a_run_says_what_the_cache_answers(fake: FakeServer, tmp_path: Path) -> None:
    env, cache = cli_env(fake, tmp_path), str(tmp_path / "cache")
    first = tmp_path / "first.json"
    first.write_text(json.dumps(chat_spec(12, n=3)))
    out = run_cli("run", str(first), "--db", str(tmp_path / "a.db"), "--cache-dir", cache, "--yes", env=env,
                  cwd=tmp_path)
    assert out.returncode == 0 and "in the cache" not in out.stderr, out.stderr
    second = tmp_path / "second.json"  # 12 of its 20 prompts were asked before
    second.write_text(json.dumps(chat_spec(20, name="more", n=3)))
    out = run_cli("run", str(second), "--db", str(tmp_path / "b.db"), "--cache-dir", cache, "--yes", env=env,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert ("12 of 20 prompts to ask are already answered in the cache: free; --no-cache for fresh samples"
            in out.stderr), out.stderr
    assert "done 20 (12 from cache)" in out.stderr and len(fake.record) == 12 + 8


def test_duplicate_requests_in_one_job_are_each_a_draw_unless_deduped(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, name="dup", model="m", templates=["same {w}", "same {w}"], keywords={"w": ["a", "b"]})
    summary = run(db, fake, tmp_path, "dup")
    assert summary.done == 4 and len(fake.record) == 4
    fake.reset()
    bp.create(db, name="once", model="m", templates=["once {w}", "once {w}"], keywords={"w": ["a", "b"]}, dedupe=True)
    summary = run(db, fake, tmp_path, "once")
    assert summary.done == 4 and len(fake.record) == 2


def test_retry_failed_then_resume(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(10, n=1))
    fake.configure(error_rate=1.0)
    first = run(db, fake, tmp_path, "chat", max_attempts=2, limiter=bp_limiter_without_breaker())
    assert (first.done, first.failed) == (0, 10)
    fake.configure(error_rate=0.0)
    fake.reset()
    assert run(db, fake, tmp_path, None).done == 0  # resume does not retry failed prompts
    assert fake.record == []
    out = run_cli("retry-failed", str(db), cwd=tmp_path)
    assert out.returncode == 0 and "10 failed prompts are pending again" in out.stdout
    assert run(db, fake, tmp_path, None).done == 10 and len(fake.record) == 10


def bp_limiter_without_breaker() -> Any:
    from batch_prompt.run.limiter import Limiter

    return Limiter(breaker_threshold=10**9)


def test_corrupt_cache_entry_is_refetched(fake: FakeServer, tmp_path: Path) -> None:
    import diskcache

    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(5, n=1))
    run(db, fake, tmp_path, "chat")
    with diskcache.Cache(str(tmp_path / "cache")) as cache:
        key = sorted(cache.iterkeys())[2]
        cache.set(key, cache.get(key).replace("echo", "ECHO"))
    fake.reset()
    bp.create(tmp_path / "b.db", **chat_spec(5, n=1, name="b"))
    summary = run(tmp_path / "b.db", fake, tmp_path, "b")
    assert (summary.done, summary.cached, len(fake.record)) == (5, 4, 1)
    results = bp.export(tmp_path / "b.db")
    assert isinstance(results, list)
    assert_chat_results(results, 5, 1)


def test_run_inside_a_running_loop_says_use_arun(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    job = bp.create(db, **chat_spec(5, n=1))

    async def notebook_cell() -> bp.RunSummary:
        with pytest.raises(bp.ConfigError, match="arun"):
            job.run(api_key=API_KEY, base_url=fake.url)
        return await job.arun(api_key=API_KEY, base_url=fake.url, quiet=True, cache_dir=str(tmp_path / "c"))

    summary = asyncio.run(notebook_cell())
    assert summary.done == 5 and len(fake.record) == 5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_commits_and_resume_finishes(fake: FakeServer, tmp_path: Path, sig: signal.Signals) -> None:
    fake.configure(latency=0.2)
    db = tmp_path / "jobs.db"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(chat_spec(300, n=1)))
    env = cli_env(fake, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_prompt", "run", str(spec), "--db", str(db), "--concurrency", "10",
         "--cache-dir", str(tmp_path / "cache")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(fake.answered()) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"python -m batch_prompt.resume {db}" in err
    counts = statuses(db)
    assert counts["running"] == 0 and counts["done"] >= 30 and counts["done"] + counts["pending"] == 300
    assert counts["done"] == len(fake.answered())  # every answer that arrived was committed
    out = run_cli("resume", str(db), "--cache-dir", str(tmp_path / "cache"), "--quiet", module="batch_prompt",
                  env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert statuses(db) == Counter({"done": 300})
    assert len(fake.answered()) == 300 and max(fake.answered().values()) == 1


def test_resume_module_and_progress_lines(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(20, n=1))
    out = run_cli(str(db), "--cache-dir", str(tmp_path / "cache"), module="batch_prompt.resume",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "chat: 20/20 done, 0 failed" in out.stderr  # a plain log line when not on a terminal
    assert "done 20 (0 from cache), failed 0, requests 20 paid for, tokens " in out.stderr
    assert out.stderr.count("at list price") == 2  # the last progress line and the summary (gpt-4o-mini)
    assert json.loads(run_cli("status", str(db), "--json", cwd=tmp_path).stdout)[0]["done"] == 20


def test_bad_run_options_exit_2(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(3, n=1))
    env = cli_env(fake, tmp_path)
    for args, message in [
        (["--concurrency", "0"], "concurrency must be a positive integer"),
        (["--timeout", "-1"], "timeout must be positive"),
        (["--rpm", "0"], "rpm must be positive"),
        (["--concurrency", "many"], "invalid int value"),
        (["--base-url", "ftp://x"], "base URL must start with http"),
        (["--cache-dir", "/proc/nope/cache"], "cannot use cache folder"),
    ]:
        out = run_cli("resume", str(db), *args, env=env, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    env.pop("OPENAI_API_KEY")
    out = run_cli("resume", str(db), env=env, cwd=tmp_path)
    assert out.returncode == 2 and "no API key" in out.stderr
    assert statuses(db) == Counter({"pending": 3}) and fake.record == []


def test_api_key_never_lands_on_disk(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(error_rate=0.1, seed=3)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(chat_spec(50, n=1, templates=["q {w}", "FAIL400 {w}"])))
    env = cli_env(fake, tmp_path)
    out = run_cli("run", str(spec), "--db", str(tmp_path / "jobs.db"), "--cache-dir", str(tmp_path / "cache"),
                  env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    fake.configure(api_key="sk-other")
    bp.create(tmp_path / "jobs.db", **chat_spec(5, n=1, name="denied", templates=["Z {w}"]))
    denied = run_cli("resume", str(tmp_path / "jobs.db"), "--cache-dir", str(tmp_path / "cache"), env=env,
                     cwd=tmp_path)
    assert denied.returncode == 2
    run_cli("export", str(tmp_path / "jobs.db"), "-o", str(tmp_path / "r.pkl"), cwd=tmp_path)
    run_cli("export", str(tmp_path / "jobs.db"), "-o", str(tmp_path / "r.jsonl"), cwd=tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path
    for text in (out.stdout, out.stderr, denied.stdout, denied.stderr):
        assert API_KEY not in text


def test_spec_rate_limit_paces_requests(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(6, n=1, rpm=120))  # 2/s, a bucket of 1 s: 2 at once, then one per 0.5 s
    summary = run(db, fake, tmp_path, "chat")
    assert summary.done == 6
    times = sorted(entry["t"] for entry in fake.record)
    assert 1.9 <= times[-1] - times[0] <= 3.0
    with pytest.raises(bp.SpecError, match="'tpm' must be a positive number"):
        bp.create(db, **chat_spec(6, n=1, name="bad", tpm=0))
    # a run option overrides the spec's limit
    bp.create(tmp_path / "fast.db", **chat_spec(6, n=1, name="fast", rpm=120, templates=["F {w}"]))
    fake.reset()
    run(tmp_path / "fast.db", fake, tmp_path, "fast", rpm=60_000)
    times = sorted(entry["t"] for entry in fake.record)
    assert times[-1] - times[0] < 1.0


def test_unwritable_cache_stops_the_run_with_rows_pending(fake: FakeServer, tmp_path: Path, immutable: Any) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(10, n=1))
    cache_dir = tmp_path / "cache"
    from batch_prompt.store.cache import ResponseCache

    ResponseCache(cache_dir, "x").close()
    immutable(cache_dir / "cache.db")
    out = run_cli("resume", str(db), "--cache-dir", str(cache_dir), "--concurrency", "2", "--quiet",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "cannot use cache folder" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert statuses(db) == Counter({"pending": 10}) and fake.record == []  # refused before any call


def test_cache_write_failure_is_a_typed_error(tmp_path: Path) -> None:
    from batch_prompt.store.cache import ResponseCache

    with ResponseCache(tmp_path / "cache", "http://x") as cache:
        cache.set("a" * 64, '{"ok": 1}')
        connection = cache._cache._con  # diskcache's own SQLite connection: make its disk "full"
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(bp.CacheError, match="cannot write the response cache"):
            cache.set("b" * 64, '{"text": "' + "x" * 20_000 + '"}')
        assert cache.get("a" * 64) == '{"ok": 1}'


def test_an_outage_longer_than_the_attempt_budget_fails_no_prompt(fake: FakeServer, tmp_path: Path) -> None:
    from batch_prompt.run.limiter import Limiter

    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(20, n=1))
    fake.configure(outage_until=time.monotonic() + 2.0)  # every request 503 for 2 s
    limiter = Limiter(breaker_threshold=3, breaker_max_pause=0.1)  # probe every 0.1 s once it is open
    retry = RetryPolicy(max_attempts=2, initial=0.05, maximum=0.05, jitter=0)  # a short real backoff
    summary = run(db, fake, tmp_path, "chat", concurrency=4, retry=retry, limiter=limiter)
    assert (summary.done, summary.failed) == (20, 0)
    failed_calls = [e for e in fake.record if e["outcome"] == "error_5xx"]
    assert 10 <= len(failed_calls) <= 4 + 2 * 20 + 5  # the first wave, then about one probe per pause
    assert len(fake.answered()) == 20 and max(fake.answered().values()) == 1


def test_a_run_waits_out_a_database_locked_by_another_process(fake: FakeServer, tmp_path: Path) -> None:
    """Another process holds the write lock for 3 s mid-run (past the store's own busy wait): the run keeps
    sending what it has claimed, waits the lock out instead of dying, and ends with every prompt answered
    once."""
    import threading

    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(200, n=1))
    fake.configure(latency=0.05)
    held: list[float] = []

    def hold_lock() -> None:
        while len(fake.answered()) < 20:
            time.sleep(0.01)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.append(time.monotonic())
        time.sleep(3.0)
        held.append(time.monotonic())
        conn.execute("COMMIT")

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    summary = run(db, fake, tmp_path, "chat", concurrency=8, rpm=1_000_000)
    holder.join()
    assert (summary.done, summary.failed, summary.exit_code) == (200, 0, 0)
    assert statuses(db) == Counter({"done": 200})
    assert set(fake.answered().values()) == {1} and len(fake.answered()) == 200
    during = [e for e in fake.record if held[0] < e["t"] < held[1]]
    assert during, "nothing was sent while the database was locked"  # the network did not wait for SQLite


def test_unreachable_endpoint_is_a_config_error(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(30, n=1))
    env = cli_env(None, tmp_path)
    for mode in ("live", "batch"):  # a port no one listens on: said at its third refusal, in either mode
        started = time.monotonic()
        out = run_cli("resume", str(db), "--base-url", "http://127.0.0.1:9/v1", "--concurrency", "20", "--mode", mode,
                      "--cache-dir", str(tmp_path / "c"), "--quiet", env=env, cwd=tmp_path, timeout=60)
        assert time.monotonic() - started < 3, f"{mode}: {time.monotonic() - started:.1f} s"
        assert "connection refused" in out.stderr, out.stderr
        assert out.returncode == 2, out.stderr
        assert "cannot reach http://127.0.0.1:9/v1" in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert statuses(db) == Counter({"pending": 30})
    for key, url, message in [("sk-ok", "http://[::1", "not a valid URL"), ("sk-bad\n", None, "API key has a")]:
        env["OPENAI_API_KEY"] = key
        args = ["resume", str(db), "--quiet", *(["--base-url", url] if url else [])]
        out = run_cli(*args, env=env, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_refusals_say_an_endpoint_is_wrong_at_once_timeouts_only_over_seconds() -> None:
    """Three refused connections before any answer are enough; three timeouts are not, until they have
    gone on for UNREACHABLE_SECONDS (a server slow to accept is not a wrong one); an answer clears both."""
    from batch_prompt.run.lanes import UNREACHABLE_SECONDS, EndpointState
    from batch_prompt.spec.endpoints import Endpoint

    endpoint = Endpoint("http://127.0.0.1:9/v1", "sk-test")
    refused, slow, answered = EndpointState(endpoint), EndpointState(endpoint), EndpointState(endpoint)
    for _ in range(3):
        refused.could_not_connect("connection refused", refused=True)
        slow.could_not_connect("timed out")
    assert isinstance(refused.fatal, bp.ConfigError) and "connection refused" in str(refused.fatal)
    assert slow.fatal is None
    assert slow.first_unreached is not None
    slow.first_unreached -= UNREACHABLE_SECONDS  # as if the first had been that long ago
    slow.could_not_connect("timed out")
    assert isinstance(slow.fatal, bp.ConfigError) and refused.fatal.endpoint == "http://127.0.0.1:9/v1"
    answered.reached = True
    for _ in range(20):
        answered.could_not_connect("connection refused", refused=True)
    assert answered.fatal is None


@contextlib.asynccontextmanager
async def local_server(routes: dict[str, Any]) -> AsyncIterator[str]:
    """A bare aiohttp server on a loopback port answering POSTs to `routes` (path -> handler); yields
    its root URL. For answers the fake server does not give (a trickling body, a custom refusal)."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_whole_request_deadline_beats_a_trickling_body(tmp_path: Path) -> None:
    from aiohttp import web

    from batch_prompt.run.client import make_client, resolve_endpoint
    from batch_prompt.run.failures import RequestTimeout

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        for _ in range(100):  # one byte every 0.1 s: no single read ever times out
            await response.write(b" ")
            await asyncio.sleep(0.1)
        return response

    async def go() -> float:
        async with local_server({"/v1/chat/completions": trickle}) as root:
            client = make_client(resolve_endpoint(f"{root}/v1", "sk-x"), 0.5, 4)
            started = time.monotonic()
            try:
                with pytest.raises(RequestTimeout):
                    await client.send("chat", {"model": "m", "messages": []})
                return time.monotonic() - started
            finally:
                await client.close()

    assert asyncio.run(go()) < 2.0


def test_requests_carry_the_sdks_headers_and_the_body_as_stored(tmp_path: Path) -> None:
    """The hot path builds requests once per client from the SDK's own headers: check what arrives."""
    from aiohttp import web

    from batch_prompt.run.client import make_client, resolve_endpoint

    seen: list[tuple[str, Any, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.copy(), await request.json()))  # case-insensitive
        if request.path.endswith("/completions") and "chat" not in request.path:
            return web.json_response({"error": {"message": "no such model", "type": "invalid_request_error",
                                                "code": "model_not_found"}}, status=404)
        return web.json_response({"choices": [{"index": 0, "message": {"content": "ok"}}]}, headers={"x-extra": "1"})

    async def go() -> tuple[dict[str, Any], Any, BaseException]:
        routes = {"/prefix/v1/chat/completions": handler, "/prefix/v1/completions": handler}
        async with local_server(routes) as root:
            client = make_client(resolve_endpoint(f"{root}/prefix/v1", "sk-header-test-1234"), 5, 4)
            try:
                chat = {"model": "m", "messages": [{"role": "user", "content": "é"}]}
                data, headers = await client.send("chat", chat)
                with pytest.raises(Exception) as refused:
                    await client.send("completions", {"model": "m", "prompt": ["a", "b"]})
                return data, headers.get("x-extra"), refused.value
            finally:
                await client.close()

    import openai

    data, extra, refused = asyncio.run(go())
    assert data == {"choices": [{"index": 0, "message": {"content": "ok"}}]} and extra == "1"
    assert [path for path, _, _ in seen] == ["/prefix/v1/chat/completions", "/prefix/v1/completions"]
    headers = seen[0][1]
    assert headers["Authorization"] == "Bearer sk-header-test-1234"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"AsyncOpenAI/Python {openai.__version__}"
    assert headers["X-Stainless-Lang"] == "python" and headers["X-Stainless-Async"] == "async:asyncio"
    assert seen[0][2] == {"model": "m", "messages": [{"role": "user", "content": "é"}]}
    assert seen[1][2] == {"model": "m", "prompt": ["a", "b"]}
    # a refusal is the SDK's own exception type, built by the SDK from the response
    assert type(refused) is openai.NotFoundError and refused.status_code == 404 and refused.code == "model_not_found"


@pytest.mark.parametrize("org_project", [None, ("org-test", "proj-test")])
def test_the_live_path_sends_the_sdks_own_headers(org_project: tuple[str, str] | None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The live path builds the headers `AsyncOpenAI` sends without importing the SDK: they must stay its."""
    import openai

    from batch_prompt.run.sdk import request_headers

    if org_project is not None:
        monkeypatch.setenv("OPENAI_ORG_ID", org_project[0])
        monkeypatch.setenv("OPENAI_PROJECT_ID", org_project[1])

    async def sdk_headers() -> dict[str, object]:
        client = openai.AsyncOpenAI(api_key="sk-header-test-1234", base_url="http://127.0.0.1:9/v1")
        try:
            return {**client.default_headers, **client.auth_headers}
        finally:
            await client.close()

    expected = {name: value for name, value in asyncio.run(sdk_headers()).items() if isinstance(value, str)}
    assert request_headers("sk-header-test-1234") == expected


def test_a_live_run_whose_calls_succeed_never_imports_the_sdk(fake: FakeServer, tmp_path: Path) -> None:
    """Importing openai takes longer than a small job's whole run: the first request does not wait for it."""
    (tmp_path / "spec.json").write_text(json.dumps(chat_spec(5, n=1)))
    code = ("import sys\nfrom batch_prompt.cli import main\ncode = main(sys.argv[1:])\n"
            "print('SDK', 'openai' in sys.modules)\nsys.exit(code)")
    out = subprocess.run(
        [sys.executable, "-c", code, "run", "spec.json", "--db", "jobs.db", "--quiet", "--yes",
         "--cache-dir", str(tmp_path / "cache")],
        env=cli_env(fake, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "SDK False" in out.stdout and statuses(tmp_path / "jobs.db") == {"done": 5}


def test_changed_run_fields_update_the_job(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(4, n=1, rpm=60_000))
    again = bp.create(db, **chat_spec(4, n=1, rpm=120))
    assert not again.created
    conn = sqlite3.connect(db)
    assert json.loads(conn.execute("SELECT spec FROM jobs").fetchone()[0])["rpm"] == 120
    assert conn.execute("SELECT count(*) FROM prompts").fetchone() == (4,)


def _limited_files(soft: int, hard: int) -> Any:
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_concurrency_beyond_the_open_file_limit_is_refused_before_any_work(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(10, n=1))
    before = db.read_bytes()
    out = subprocess.run(
        [sys.executable, "-m", "batch_prompt.resume", str(db), "--concurrency", "500", "--cache-dir",
         str(tmp_path / "cache")], env=cli_env(fake, tmp_path), cwd=tmp_path, capture_output=True, text=True,
        timeout=60, preexec_fn=_limited_files(256, 256),
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "concurrency 500 needs about 564 open files" in out.stderr and "lower --concurrency to 192" in out.stderr
    assert db.read_bytes() == before and fake.record == []
    too_many = run_cli("resume", str(db), "--concurrency", "20000", env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert too_many.returncode == 2 and "concurrency 20000 is more than 10,000" in too_many.stderr
    assert db.read_bytes() == before and fake.record == []


def test_a_low_soft_file_limit_is_raised_to_fit_the_concurrency(fake: FakeServer, tmp_path: Path) -> None:
    """300 connections open at once under a soft limit of 100 (hard 4096): the run raises its own soft
    limit, so no connection fails (every request is answered at the first attempt). A told limit, so no
    careful start: all 300 go at once."""
    fake.configure(latency=0.3)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(300, n=1))
    out = subprocess.run(
        [sys.executable, "-m", "batch_prompt.resume", str(db), "--concurrency", "300", "--rpm", "1000000",
         "--cache-dir", str(tmp_path / "cache")], env=cli_env(fake, tmp_path), cwd=tmp_path, capture_output=True,
        text=True, timeout=120, preexec_fn=_limited_files(100, 4096),
    )
    assert out.returncode == 0, out.stderr
    assert "done 300 (0 from cache), failed 0, requests 300 paid for, tokens" in out.stderr
    assert len(fake.record) == 300 and set(fake.answered().values()) == {1}
    times = sorted(entry["t"] for entry in fake.record)
    assert times[-1] - times[0] < 0.3  # all 300 were in flight at once


LIBRARY_CALLER = """
import gc, resource, sys
import batch_prompt as bp
from batch_prompt.run.progress import Progress

class Seen(Progress):
    def start(self, view):
        super().start(view)
        self.during = (gc.get_freeze_count(), gc.get_threshold())

resource.setrlimit(resource.RLIMIT_NOFILE, (100, 4096))
job = bp.create(sys.argv[1], templates=["q {i}"], keywords={"i": list(range(5))}, model="gpt-4o-mini")
try:
    job.run(concurrency=300, base_url=sys.argv[2], api_key="sk-x", cache_dir=sys.argv[3], quiet=True)
except bp.ConfigError as exc:
    print("refused:", exc)
print("soft limit after:", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
seen = Seen()
before = gc.get_threshold()
summary = job.run(concurrency=4, base_url=sys.argv[2], api_key="sk-x", cache_dir=sys.argv[3], progress=seen)
print("done:", summary.done, "gc untouched:", seen.during == (0, before))
"""


def test_a_library_caller_gets_no_process_wide_policy(fake: FakeServer, tmp_path: Path) -> None:
    """`job.run()` from Python neither raises the open-file limit nor retunes the garbage collector (the
    command line opts in): a concurrency that does not fit the soft limit is refused, naming it."""
    out = subprocess.run([sys.executable, "-c", LIBRARY_CALLER, str(tmp_path / "jobs.db"), fake.url,
                          str(tmp_path / "cache")], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env=cli_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "refused: concurrency 300 needs about 364 open files, but this process may open only 100 (ulimit -n): "
        "lower the concurrency to 36 or less, or raise the limit (resource.setrlimit)",
        "soft limit after: 100",
        "done: 5 gc untouched: True",
    ]
    assert len(fake.record) == 5


def test_an_outage_in_a_log_is_one_line_and_its_end_another(fake: FakeServer, tmp_path: Path) -> None:
    """A log (no terminal) gets the outage once, not a countdown line a second, and a line when it is over."""
    import io

    from batch_prompt.run.limiter import Limiter
    from batch_prompt.run.progress import LogProgress

    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(40, n=1))
    fake.configure(outage_until=time.monotonic() + 3.0, latency=0.1)  # then a second more of answers
    log = io.StringIO()
    limiter = Limiter(breaker_threshold=3, breaker_max_pause=2.0)
    retry = RetryPolicy(max_attempts=8, initial=0.05, maximum=0.05, jitter=0)
    summary = run(db, fake, tmp_path, "chat", concurrency=4, retry=retry, limiter=limiter,
                  progress=LogProgress(log, interval=1_000))
    assert (summary.done, summary.failed) == (40, 0)
    notes = [line.split(" ", 2)[2] for line in log.getvalue().splitlines() if "chat:" not in line]
    outage = [note for note in notes if "server unreachable" in note and not note.startswith("nothing")]
    assert len(outage) == 1, notes
    over = [note for note in notes if note.startswith("nothing holds the run back now")]
    assert over == ["nothing holds the run back now (it was paused: server unreachable)"], notes
    assert notes.index(over[0]) > notes.index(outage[0])


def test_the_repeats_of_a_seeded_request_are_sent_with_seed_plus_k(fake: FakeServer, tmp_path: Path) -> None:
    """A server that honours seeds would answer k repeats sent with one seed with one draw k times: the k-th
    sample goes with `seed + k` (the first with the seed as given, so its hash and cache entry are as
    before), a repeated keyword dict counts as a later sample too, and the export shows each row's seed."""
    db = tmp_path / "jobs.db"
    spec = chat_spec(2, n=1, repeats=3, model_args={"n": 1, "max_tokens": 8, "seed": 7})
    spec["keywords"]["w"].append("0")  # a third row asking what the first asks: samples 3, 4, 5
    job = bp.create(db, **spec)
    summary = run(db, fake, tmp_path)
    assert summary.done == 9 and summary.requests == 9
    sent = sorted((entry["prompts"][0], entry["seed"]) for entry in fake.record)
    assert sent == [("q 0", 7 + k) for k in range(6)] + [("q 1", 7 + k) for k in range(3)]
    exported = sorted((item["messages"][-1]["content"], item["model_args"]["seed"]) for item in bp.iter_results(db))
    assert exported == sent
    plain = bp.create(tmp_path / "other.db", **{**spec, "keywords": {"w": ["0"]}, "repeats": 1})
    first = sqlite3.connect(db).execute("SELECT hash FROM prompts WHERE sample_index = 0 ORDER BY id").fetchone()
    assert sqlite3.connect(tmp_path / "other.db").execute("SELECT hash FROM prompts").fetchone() == first
    assert job.name == plain.name == "chat"


def test_seeded_legacy_completions_are_not_packed_under_one_seed(fake: FakeServer, tmp_path: Path) -> None:
    """Packed prompts share a request, and so a seed: seeded samples go one a request, each with its own."""
    db = tmp_path / "jobs.db"
    bp.create(db, name="legacy", api="completions", model="gpt-3.5-turbo-instruct", templates=["say {w}"],
              keywords={"w": ["a", "b"]}, repeats=2, prompts_per_request=8, model_args={"max_tokens": 4, "seed": 3})
    assert run(db, fake, tmp_path).done == 4
    assert sorted((tuple(entry["prompts"]), entry["seed"]) for entry in fake.record) == [
        (("say a",), 3), (("say a",), 4), (("say b",), 3), (("say b",), 4)]
