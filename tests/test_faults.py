"""A fake server, through the command line: hangs, drops, broken bodies, wrong choices, a 5xx outage, a 429
storm, permanent 400s. Each run must end with every prompt done from a valid response, none paid for twice
(asserted from the fake server's own record), and the API key nowhere on disk. Also: a corrupted cache
entry is fetched again, never exported.

The command line runs in this process (`run_cli`, through `cli.main`) with the no-wait retry policy: what
is proved is what the run does with each fault, not how long its backoff sleeps. Crashes and signals, which
need real processes, are in test_crash.py and test_never_twice.py.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import diskcache
import pytest

from batch_prompt.testing import FakeServer

from .conftest import API_KEY, cli_env, run_cli
from .helpers_procs import (
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
Out = subprocess.CompletedProcess[str]

# Every test here runs the command line with the no-wait retry policy (see conftest.no_wait).
pytestmark = pytest.mark.usefixtures("no_wait")


def cli(tmp_path: Path, fake: FakeServer, *args: str, module: str = "batch_prompt") -> Out:
    """The command line against the fake, its output also written under logs/ as a process's would be."""
    out = run_cli(*args, env=cli_env(fake, tmp_path), cwd=tmp_path, module=module)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    number = len(list(logs.iterdir())) // 2
    (logs / f"{number}.out").write_text(out.stdout)
    (logs / f"{number}.err").write_text(out.stderr)
    return out


def run_job(fake: FakeServer, tmp_path: Path, spec: dict[str, Any], *extra: str) -> Out:
    spec_path = write_spec(tmp_path, spec)
    return cli(tmp_path, fake, *run_args(spec_path, tmp_path / "jobs.db", tmp_path / "cache", CONCURRENCY, *extra))


def assert_all_done_once(proc: Out, fake: FakeServer, tmp_path: Path, spec: dict[str, Any]) -> None:
    """Exit 0, every prompt done, each answered by the server exactly once, the export valid."""
    prompts, n = prompts_of(spec), spec["model_args"]["n"]
    assert proc.returncode == 0, proc.stderr
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


def test_hung_requests_time_out_and_are_retried(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(latency=0.01, hang_rate=0.1, hang_seconds=30, seed=11)
    spec = chat_spec(100, "hang")
    started = time.monotonic()
    proc = run_job(fake, tmp_path, spec, "--timeout", "1")
    elapsed = time.monotonic() - started
    assert outcomes(fake)["hang"] >= 5
    # About 10 requests hang at once and time out together: that is one outage's worth of failures in a row,
    # which may pause the pool a second or two, not for the length of a doubling per failure.
    assert elapsed < 15, f"took {elapsed:.1f} s; {longest_silence(fake.record, started)}"
    assert_all_done_once(proc, fake, tmp_path, spec)


@pytest.mark.parametrize(
    ("fault", "outcome", "n", "seed"),
    [("drop_rate", "dropped", 1, 12), ("reset_rate", "reset", 1, 15), ("malformed_rate", "malformed", 1, 13),
     ("wrong_choices_rate", "wrong_choices", 3, 14)],
    ids=["dropped-connections", "reset-mid-body", "truncated-json", "wrong-number-of-choices"],
)
def test_broken_answers_are_retried(
    fake: FakeServer, tmp_path: Path, fault: str, outcome: str, n: int, seed: int
) -> None:
    fake.configure(latency=0.01, seed=seed, **{fault: 0.2})
    spec = chat_spec(150, outcome, n=n)
    proc = run_job(fake, tmp_path, spec)
    assert outcomes(fake)[outcome] >= 10
    assert_all_done_once(proc, fake, tmp_path, spec)


def test_5xx_outage_backs_off_and_finishes(fake: FakeServer, tmp_path: Path) -> None:
    """Every request gets 503 for a few seconds: the circuit breaker pauses the pool (few requests during
    the outage, no prompt burns its attempts) and the run resumes soon after the outage ends."""
    prompts, outage = 150, 3.0
    spec = chat_spec(prompts, "outage")
    spec_path = write_spec(tmp_path, spec)
    fake.configure(latency=0.01)
    outage_until = time.monotonic() + outage
    fake.configure(outage_until=outage_until)
    proc = cli(tmp_path, fake, *run_args(spec_path, tmp_path / "jobs.db", tmp_path / "cache", CONCURRENCY))
    elapsed, record = time.monotonic() - (outage_until - outage), fake.record
    assert elapsed < outage + 15, (
        f"ran {elapsed:.0f} s, with a {outage:.0f} s outage; requests: "
        f"{dict(Counter(e['outcome'] for e in record))}, the last one {record[-1]['t'] - outage_until:+.1f} s "
        "after the outage's end"
    )
    failures = [e for e in fake.record if e["outcome"] == "error_5xx"]
    assert failures and all(e["t"] < outage_until for e in failures)
    # The first wave fails, then only the breaker's probes go: nowhere near prompts x max attempts.
    assert len(failures) <= CONCURRENCY + 8, len(failures)
    first_ok = min(e["t"] for e in fake.record if e["outcome"] == "ok")
    assert first_ok - outage_until < 8.0, f"first answer {first_ok - outage_until:.1f} s after the outage"
    assert_all_done_once(proc, fake, tmp_path, spec)


def test_429_storm_is_waited_out(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(latency=0.01, rate_limit_rate=0.5, rate_limit_retry_after=0.05, seed=15)
    spec = chat_spec(150, "storm")
    proc = run_job(fake, tmp_path, spec, "--max-attempts", "3")  # 429s must not use up attempts
    assert outcomes(fake)["error_429"] >= 50
    assert_all_done_once(proc, fake, tmp_path, spec)


def test_permanent_400_fails_only_those_prompts_and_again_after_retry_failed(
    fake: FakeServer, tmp_path: Path
) -> None:
    bad = {3, 17, 42}
    spec = chat_spec(60, "perm", fail400=bad)
    prompts = prompts_of(spec)
    bad_prompts = {prompts[i] for i in bad}
    good_prompts = [p for p in prompts if p not in bad_prompts]
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    first = run_job(fake, tmp_path, spec)
    assert first.returncode == 1, first.stderr
    assert statuses(db) == Counter({"done": 57, "failed": 3})
    conn = sqlite3.connect(db)
    failed = conn.execute("SELECT keywords, last_error, attempts FROM prompts WHERE status = 'failed'").fetchall()
    conn.close()
    assert {f"perm {json.loads(k)['w']}" for k, _, _ in failed} == bad_prompts
    assert all("400" in error and attempts == 1 for _, error, attempts in failed), failed
    assert Counter(p for e in fake.record if e["outcome"] == "error_400" for p in e["prompts"]) == Counter(
        {p: 1 for p in bad_prompts}
    )  # a 400 is never retried
    assert fake.answered() == Counter({p: 1 for p in good_prompts})
    assert "3 prompts failed" in first.stderr

    retried = cli(tmp_path, fake, "retry-failed", str(db))
    assert retried.returncode == 0 and "3 failed prompts" in retried.stdout
    assert statuses(db) == Counter({"done": 57, "pending": 3})
    fake.reset()
    again = cli(tmp_path, fake, *resume_args(db, cache, CONCURRENCY), module="batch_prompt.resume")
    assert again.returncode == 1, again.stderr
    assert sorted(p for e in fake.record for p in e["prompts"]) == sorted(bad_prompts)
    assert {e["outcome"] for e in fake.record} == {"error_400"}
    assert statuses(db) == Counter({"done": 57, "failed": 3})
    check_export(db, good_prompts, 2)


def test_api_key_is_nowhere_on_disk_after_a_faulty_run(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(latency=0.005, error_rate=0.1, drop_rate=0.05, malformed_rate=0.05, rate_limit_rate=0.1,
                   seed=16)
    spec = chat_spec(80, "secret", fail400={5, 6})
    first = run_job(fake, tmp_path, spec)
    assert first.returncode == 1, first.stderr
    db = tmp_path / "jobs.db"
    assert statuses(db) == Counter({"done": 78, "failed": 2})
    assert cli(tmp_path, fake, "status", str(db)).returncode == 0
    assert cli(tmp_path, fake, "status", str(db), "--json").returncode == 0
    assert cli(tmp_path, fake, "export", str(db), "-o", str(tmp_path / "results.pkl")).returncode == 0
    assert cli(tmp_path, fake, "export", str(db), "-o", str(tmp_path / "results.jsonl")).returncode == 0
    # Then a server that refuses the key: the run stops on the 401, and still the key is written nowhere.
    fake.configure(api_key="sk-the-other-key-0000")
    assert cli(tmp_path, fake, "retry-failed", str(db)).returncode == 0
    refused = cli(tmp_path, fake, *resume_args(db, tmp_path / "cache", CONCURRENCY), module="batch_prompt.resume")
    assert refused.returncode == 2 and "401" in refused.stderr

    key = API_KEY.encode()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cache.db" for p in files) and any(p.suffix == ".err" for p in files)
    leaks = [str(p.relative_to(tmp_path)) for p in files if key in p.read_bytes()]
    assert leaks == []


@pytest.mark.parametrize("damage", ["garbage", "edited", "truncated"])
def test_corrupt_cache_entry_is_fetched_again(
    fake: FakeServer, tmp_path: Path, damage: str
) -> None:
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    spec = chat_spec(20, "cached")
    prompts = prompts_of(spec)
    first = run_job(fake, tmp_path, spec)
    assert first.returncode == 0, first.stderr
    assert len(fake.record) == 20

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT hash, keywords FROM prompts").fetchall()
    conn.close()
    (victim_hash,) = [h for h, keywords in rows if json.loads(keywords) == {"w": "7"}]
    key = f"{fake.url.rstrip('/').lower()} {victim_hash}"
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

    fake.reset()
    again = spec | {"name": "again"}
    second = cli(tmp_path, fake, *run_args(write_spec(tmp_path, again, "again.json"), db, cache, CONCURRENCY))
    assert second.returncode == 0, second.stderr
    assert [e["prompts"] for e in fake.record] == [["cached 7"]]
    conn = sqlite3.connect(db)
    cached = conn.execute(
        "SELECT keywords, cached FROM prompts WHERE job_id = (SELECT id FROM jobs WHERE name = 'again')"
    ).fetchall()
    conn.close()
    assert sorted(json.loads(k)["w"] for k, c in cached if not c) == ["7"] and len(cached) == 20
    check_export(db, prompts, 2, job="again")

    # The entry was repaired: a third job costs nothing.
    fake.reset()
    third = cli(tmp_path, fake, *run_args(write_spec(tmp_path, spec | {"name": "third"}, "third.json"), db, cache))
    assert third.returncode == 0 and fake.record == []
    check_export(db, prompts, 2, job="third")
