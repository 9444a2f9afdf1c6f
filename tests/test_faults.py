"""A hostile server, through the command line: hangs, drops, broken bodies, wrong choices, a 5xx outage, a 429
storm, permanent 400s. Each run must end with every prompt done from a valid response, none paid for twice
(asserted from the fake server's own record), and the API key nowhere on disk. Also: a corrupted cache
entry is fetched again, never exported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from batch_prompt.testing import FakeServer

from .conftest import API_KEY
from .helpers_procs import (
    Proc,
    Procs,
    chat_spec,
    check_export,
    outcomes,
    prompts_of,
    resume_args,
    run_args,
    statuses,
    write_spec,
)

CONCURRENCY = 16


@pytest.fixture
def hostile(fake: FakeServer) -> Iterator[FakeServer]:
    """The fake server; every setting (also those the shared fixture does not reset) restored afterwards."""
    saved = dataclasses.asdict(fake.config)
    try:
        yield fake
    finally:
        fake.configure(**saved)


def run_job(procs: Procs, tmp_path: Path, spec: dict[str, Any], *extra: str, timeout: float = 60) -> Proc:
    spec_path = write_spec(tmp_path, spec)
    return procs.run(*run_args(spec_path, tmp_path / "jobs.db", tmp_path / "cache", CONCURRENCY, *extra),
                     timeout=timeout)


def assert_all_done_once(proc: Proc, fake: FakeServer, tmp_path: Path, spec: dict[str, Any]) -> None:
    """Exit 0, every prompt done, each answered by the server exactly once, the export valid."""
    prompts, n = prompts_of(spec), spec["model_args"]["n"]
    assert proc.popen.returncode == 0, proc.stderr
    db = tmp_path / "jobs.db"
    assert statuses(db) == Counter({"done": len(prompts)})
    assert fake.answered() == Counter({p: 1 for p in prompts})
    check_export(db, prompts, n)
    conn = sqlite3.connect(db)
    for (response,) in conn.execute("SELECT response FROM prompts"):
        assert len(json.loads(response)["choices"]) == n
    conn.close()


def longest_silence(record: list[dict[str, Any]], start: float) -> str:
    """Where a run stalled: the longest time without a request, in seconds since `start`."""
    times = sorted(float(entry["t"]) - start for entry in record)
    gap, since = max((b - a, a) for a, b in itertools.pairwise(times))
    return f"no request from {since:.1f} s to {since + gap:.1f} s after start ({len(times)} requests)"


def test_hung_requests_time_out_and_are_retried(hostile: FakeServer, procs: Procs, tmp_path: Path) -> None:
    hostile.configure(latency=0.01, hang_rate=0.1, hang_seconds=30, seed=11)
    spec = chat_spec(100, "hang")
    started = time.monotonic()
    proc = run_job(procs, tmp_path, spec, "--timeout", "1", timeout=40)
    elapsed = time.monotonic() - started
    assert outcomes(hostile)["hang"] >= 5
    # About 10 requests hang at once and time out together: that is one outage's worth of failures in a row,
    # which may pause the pool a second or two, not for the length of a doubling per failure.
    assert elapsed < 15, f"took {elapsed:.1f} s; {longest_silence(hostile.record, started)}"
    assert_all_done_once(proc, hostile, tmp_path, spec)


@pytest.mark.parametrize(
    ("fault", "outcome", "n", "seed"),
    [("drop_rate", "dropped", 1, 12), ("reset_rate", "reset", 1, 15), ("malformed_rate", "malformed", 1, 13),
     ("wrong_choices_rate", "wrong_choices", 3, 14)],
    ids=["dropped-connections", "reset-mid-body", "truncated-json", "wrong-number-of-choices"],
)
def test_broken_answers_are_retried(
    hostile: FakeServer, procs: Procs, tmp_path: Path, fault: str, outcome: str, n: int, seed: int
) -> None:
    hostile.configure(latency=0.01, seed=seed, **{fault: 0.2})
    spec = chat_spec(150, outcome, n=n)
    proc = run_job(procs, tmp_path, spec)
    assert outcomes(hostile)[outcome] >= 10
    assert_all_done_once(proc, hostile, tmp_path, spec)


def test_5xx_outage_backs_off_and_finishes(hostile: FakeServer, procs: Procs, tmp_path: Path) -> None:
    """Every request gets 503 for a few seconds: the circuit breaker pauses the pool (few requests during
    the outage, no prompt burns its attempts) and the run resumes soon after the outage ends."""
    prompts, outage = 150, 3.0
    spec = chat_spec(prompts, "outage")
    spec_path = write_spec(tmp_path, spec)
    hostile.configure(latency=0.01)
    outage_until = time.monotonic() + outage
    hostile.configure(outage_until=outage_until)
    proc = procs.start(*run_args(spec_path, tmp_path / "jobs.db", tmp_path / "cache", CONCURRENCY))
    try:
        proc.popen.wait(timeout=outage + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        record = hostile.record
        raise AssertionError(
            f"still running {outage + 15:.0f} s after start, with a {outage:.0f} s outage; requests: "
            f"{dict(Counter(e['outcome'] for e in record))}, the last one {record[-1]['t'] - outage_until:+.1f} s "
            "after the outage's end"
        ) from None
    failures = [e for e in hostile.record if e["outcome"] == "error_5xx"]
    assert failures and all(e["t"] < outage_until for e in failures)
    # The first wave fails, then only the breaker's probes go: nowhere near prompts x max attempts.
    assert len(failures) <= CONCURRENCY + 8, len(failures)
    first_ok = min(e["t"] for e in hostile.record if e["outcome"] == "ok")
    assert first_ok - outage_until < 8.0, f"first answer {first_ok - outage_until:.1f} s after the outage"
    assert_all_done_once(proc, hostile, tmp_path, spec)


def test_429_storm_is_waited_out(hostile: FakeServer, procs: Procs, tmp_path: Path) -> None:
    hostile.configure(latency=0.01, rate_limit_rate=0.5, rate_limit_retry_after=0.2, seed=15)
    spec = chat_spec(150, "storm")
    proc = run_job(procs, tmp_path, spec, "--max-attempts", "3")  # 429s must not use up attempts
    assert outcomes(hostile)["error_429"] >= 50
    assert_all_done_once(proc, hostile, tmp_path, spec)


def test_permanent_400_fails_only_those_prompts_and_again_after_retry_failed(
    hostile: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    bad = {3, 17, 42}
    spec = chat_spec(60, "perm", fail400=bad)
    prompts = prompts_of(spec)
    bad_prompts = {prompts[i] for i in bad}
    good_prompts = [p for p in prompts if p not in bad_prompts]
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    first = run_job(procs, tmp_path, spec)
    assert first.popen.returncode == 1, first.stderr
    assert statuses(db) == Counter({"done": 57, "failed": 3})
    conn = sqlite3.connect(db)
    failed = conn.execute("SELECT keywords, last_error, attempts FROM prompts WHERE status = 'failed'").fetchall()
    conn.close()
    assert {f"perm {json.loads(k)['w']}" for k, _, _ in failed} == bad_prompts
    assert all("400" in error and attempts == 1 for _, error, attempts in failed), failed
    assert Counter(p for e in hostile.record if e["outcome"] == "error_400" for p in e["prompts"]) == Counter(
        {p: 1 for p in bad_prompts}
    )  # a 400 is never retried
    assert hostile.answered() == Counter({p: 1 for p in good_prompts})
    assert "3 prompts failed" in first.stderr

    retried = procs.run("retry-failed", str(db))
    assert retried.popen.returncode == 0 and "3 failed prompts" in retried.stdout
    assert statuses(db) == Counter({"done": 57, "pending": 3})
    hostile.reset()
    again = procs.run(*resume_args(db, cache, CONCURRENCY), module="batch_prompt.resume")
    assert again.popen.returncode == 1, again.stderr
    assert sorted(p for e in hostile.record for p in e["prompts"]) == sorted(bad_prompts)
    assert {e["outcome"] for e in hostile.record} == {"error_400"}
    assert statuses(db) == Counter({"done": 57, "failed": 3})
    check_export(db, good_prompts, 2)


def test_api_key_is_nowhere_on_disk_after_a_faulty_run(hostile: FakeServer, procs: Procs, tmp_path: Path) -> None:
    hostile.configure(latency=0.005, error_rate=0.1, drop_rate=0.05, malformed_rate=0.05, rate_limit_rate=0.1,
                      seed=16)
    spec = chat_spec(80, "secret", fail400={5, 6})
    first = run_job(procs, tmp_path, spec)
    assert first.popen.returncode == 1, first.stderr
    db = tmp_path / "jobs.db"
    assert statuses(db) == Counter({"done": 78, "failed": 2})
    assert procs.run("status", str(db)).popen.returncode == 0
    assert procs.run("status", str(db), "--json").popen.returncode == 0
    assert procs.run("export", str(db), "-o", str(tmp_path / "results.pkl")).popen.returncode == 0
    assert procs.run("export", str(db), "-o", str(tmp_path / "results.jsonl")).popen.returncode == 0
    # Then a server that refuses the key: the run stops on the 401, and still the key is written nowhere.
    hostile.configure(api_key="sk-the-other-key-0000")
    assert procs.run("retry-failed", str(db)).popen.returncode == 0
    refused = procs.run(*resume_args(db, tmp_path / "cache", CONCURRENCY), module="batch_prompt.resume")
    assert refused.popen.returncode == 2 and "401" in refused.stderr
    procs.close()

    key = API_KEY.encode()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cache.db" for p in files) and any(p.suffix == ".err" for p in files)
    leaks = [str(p.relative_to(tmp_path)) for p in files if key in p.read_bytes()]
    assert leaks == []


@pytest.mark.parametrize("damage", ["garbage", "edited", "truncated"])
def test_corrupt_cache_entry_is_fetched_again(
    hostile: FakeServer, procs: Procs, tmp_path: Path, damage: str
) -> None:
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    spec = chat_spec(20, "cached")
    prompts = prompts_of(spec)
    first = run_job(procs, tmp_path, spec)
    assert first.popen.returncode == 0, first.stderr
    assert len(hostile.record) == 20

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT hash, keywords FROM prompts").fetchall()
    conn.close()
    (victim_hash,) = [h for h, keywords in rows if json.loads(keywords) == {"w": "7"}]
    key = f"{hostile.url.rstrip('/').lower()} {victim_hash}"
    with diskcache.Cache(str(cache)) as entries:
        assert key in set(entries.iterkeys())
        value = entries.get(key)
        assert isinstance(value, str) and "echo 0: cached 7" in value
        if damage == "garbage":
            entries.set(key, "garbage")
    if damage != "garbage":
        # Change the stored text behind diskcache's back, as a bad disk or a stray edit would.
        new = value.replace("cached 7", "cached 8") if damage == "edited" else value[: len(value) // 2]
        raw = sqlite3.connect(cache / "cache.db")
        with raw:
            changed = raw.execute("UPDATE Cache SET value = ? WHERE key = ?", (new, key)).rowcount
        raw.close()
        assert changed == 1

    hostile.reset()
    again = spec | {"name": "again"}
    second = procs.run(*run_args(write_spec(tmp_path, again, "again.json"), db, cache, CONCURRENCY))
    assert second.popen.returncode == 0, second.stderr
    assert [e["prompts"] for e in hostile.record] == [["cached 7"]]
    conn = sqlite3.connect(db)
    cached = conn.execute(
        "SELECT keywords, cached FROM prompts WHERE job_id = (SELECT id FROM jobs WHERE name = 'again')"
    ).fetchall()
    conn.close()
    assert sorted(json.loads(k)["w"] for k, c in cached if not c) == ["7"] and len(cached) == 20
    check_export(db, prompts, 2, job="again")

    # The entry was repaired: a third job costs nothing.
    hostile.reset()
    third = procs.run(*run_args(write_spec(tmp_path, spec | {"name": "third"}, "third.json"), db, cache))
    assert third.popen.returncode == 0 and hostile.record == []
    check_export(db, prompts, 2, job="third")
