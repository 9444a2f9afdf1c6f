"""Batch mode at its seams: stopped while it waits, it ends like live mode (exit 130, no traceback, its
batches left open and collected by the next resume); the run's choices are kept from the start; expiry
by the provider costs no attempt; cancel says one thing."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import run_cli
from .helpers_procs import Proc, Procs, chat_spec, prompts_of, resume_args, run_args, statuses, write_spec

FAST = dict(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:.0f} s")
        time.sleep(0.05)


def stop(proc: Proc, *signals: int) -> tuple[int, float]:
    """Send the signals (one after another), then wait: the exit code and the seconds it took."""
    started = time.monotonic()
    for sig in signals:
        proc.popen.send_signal(sig)
        time.sleep(0.1)
    code = proc.wait(timeout=30)
    return code, time.monotonic() - started


def test_a_run_waiting_on_a_batch_stops_like_a_live_one(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    fake.configure(**{**FAST, "batch_validate_seconds": 12.0})  # the batch waits 12 s, whoever asks
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    spec = chat_spec(30, n=1)
    path = write_spec(tmp_path, spec)
    waiting = "batches: 1 submitted"
    first = procs.start(*run_args(path, db, cache)[:-1], "--mode", "batch", "--poll", "0.05", "--grace", "2")
    wait_for(lambda: fake.batches and waiting in first.stderr, "the batch to be submitted")
    code, took = stop(first, signal.SIGINT)
    assert (code, "Traceback" in first.stderr) == (130, False), first.stderr
    assert took < 5 and "interrupted: resume with: python -m batch_prompt.resume" in first.stderr, first.stderr
    second = procs.resume(*resume_args(db, cache)[:-1], "--poll", "0.05")  # SIGTERM stops it the same way
    wait_for(lambda: "batches:" in second.stderr, "the resume to wait on the batch")
    code, took = stop(second, signal.SIGTERM)
    assert (code, "Traceback" in second.stderr, took < 5) == (130, False, True), second.stderr
    third = procs.resume(*resume_args(db, cache)[:-1], "--poll", "0.05", "--grace", "60")
    wait_for(lambda: "batches:" in third.stderr, "the resume to wait on the batch")
    code, took = stop(third, signal.SIGINT, signal.SIGINT)  # a second Ctrl-C ends at once, grace or not
    assert code in (130, -signal.SIGINT) and "Traceback" not in third.stderr and took < 5, (code, third.stderr)
    assert [b["status"] for b in fake.batches] == ["validating"]  # left open at the provider
    assert statuses(db) == Counter({"running": 30})
    last = run_cli(*resume_args(db, cache), "--poll", "0.05", module="batch_prompt.resume", env=procs.env)
    assert last.returncode == 0, last.stderr
    assert statuses(db) == Counter({"done": 30}) and len(fake.batches) == 1
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})


def test_batches_that_expire_part_way_again_and_again_fail_no_prompt(fake: FakeServer, tmp_path: Path) -> None:
    """Each batch expires once 5 of its lines are done (the rest come back `batch_expired` in the error file):
    the provider's capacity, not the prompts' fault. With 2 attempts each, all 30 end answered, once."""
    fake.configure(**{**FAST, "batch_expire_after": 5})
    db = tmp_path / "jobs.db"
    spec = chat_spec(30, n=1)
    bp.create(db, **spec)
    summary = bp.resume(db, base_url=fake.url, api_key="sk-test", cache_dir=str(tmp_path / "cache"), quiet=True,
                        poll=0.05, retry=RetryPolicy.no_wait(2), max_attempts=2, mode="batch")
    assert (summary.done, summary.failed, summary.exit_code) == (30, 0, 0)
    assert [b["status"] for b in fake.batches] == ["expired"] * 5 + ["completed"]
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})
    attempts = sqlite3.connect(db).execute("SELECT max(attempts) FROM prompts").fetchone()[0]
    assert attempts == 1  # the answer's own call; the expiries cost none


def test_batches_are_collected_where_they_were_sent(
    fake: FakeServer, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """Batches submitted with --base-url A: a plain resume collects them at A (the job remembers A); a
    resume sent to another endpoint B still collects A's batches at A, and asks B for nothing."""
    from batch_prompt import cli

    other = FakeServer().start()
    try:
        for server in (fake, other):
            server.configure(**{**FAST, "batch_validate_seconds": 0.3})
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-1234")
        monkeypatch.setenv("OPENAI_BASE_URL", other.url)  # where a resume would go by default
        db, cache = tmp_path / "jobs.db", tmp_path / "cache"
        spec = chat_spec(30, n=1)
        path = write_spec(tmp_path, spec)
        common = ["--cache-dir", str(cache), "--quiet", "--poll", "0.05", "--yes"]
        assert cli.main(["run", str(path), "--db", str(db), "--base-url", fake.url, "--mode", "batch", "--no-wait",
                         "--batch-size", "10", *common[:-1]]) == 0
        assert len(fake.batches) == 3
        capsys.readouterr()
        assert cli.main(["resume", str(db), *common[:-1]]) == 0  # plain: at A, where the job was sent
        assert statuses(db) == Counter({"done": 30}) and other.batches == [] and other.record == []
        assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})
        # the endpoint changed while batches were open at the first: they are still collected there
        second = tmp_path / "second.db"
        spec2 = chat_spec(20, prefix="second", name="second", n=1)
        path2 = write_spec(tmp_path, spec2, "second.json")
        assert cli.main(["run", str(path2), "--db", str(second), "--base-url", fake.url, "--mode", "batch",
                         "--no-wait", *common[:-1]]) == 0
        assert cli.main(["resume", str(second), "--base-url", other.url, *common[:-1]]) == 0
        assert statuses(second) == Counter({"done": 20}) and other.batches == [] and other.record == []
        assert sqlite3.connect(second).execute("SELECT DISTINCT base_url, api_key_env FROM batches").fetchall() == [
            (fake.url, "OPENAI_API_KEY")]
        assert "sk-test-key-1234" not in (tmp_path / "second.db").read_bytes().decode(errors="replace")
    finally:
        other.stop()


def test_cancel_says_one_thing(fake: FakeServer, tmp_path: Path, monkeypatch: Any,
                               capsys: Any) -> None:
    """A batch someone already asked to cancel: `cancel` does not ask again, says so, and collects it."""
    import openai

    from batch_prompt import cli

    fake.configure(**{**FAST, "batch_lines_per_second": 0.0, "batch_cancel_seconds": 0.5})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-1234")
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(12, n=1))
    common = ["--base-url", fake.url, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--poll", "0.05"]
    assert cli.main(["resume", str(db), "--mode", "batch", "--no-wait", *common]) == 0
    openai.OpenAI(base_url=fake.url, api_key="sk-test").batches.cancel(fake.batches[0]["id"])
    capsys.readouterr()
    assert cli.main(["cancel", str(db), *common]) == 0
    err = capsys.readouterr().err
    assert "0 open batches asked to cancel (1 being cancelled already); 0 prompts answered by what they completed, " \
           "12 pending again" in err, err
    assert "still in batches" not in err and statuses(db) == Counter({"pending": 12})
