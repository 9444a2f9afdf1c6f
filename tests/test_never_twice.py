"""Never pay twice (issue 10): each way an outside campaign bought an answer twice, lost one or crashed, as
a real process against the fake, judged by the fake's own record of what it answered and how often."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, cli_env, run_cli
from .helpers_procs import Procs, chat_spec, check_export, prompts_of, run_args, statuses, write_spec


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def arrived(fake: FakeServer) -> int:
    return len(fake.record)


def leased(db: Path) -> int:
    """Running rows whose lease has not expired yet."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM prompts WHERE status = 'running' AND lease_expires > ?",
                                (time.time(),)).fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only; the test is skipped where mounting is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small filesystem needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- 1. stopped past --timeout: the answers that arrived meanwhile are read, not bought again ---------


def test_a_process_stopped_past_its_timeout_keeps_the_answers_that_arrived(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    fake.configure(latency=1.0)
    spec = chat_spec(60, "stopped", n=1)
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    run = procs.start(*run_args(write_spec(tmp_path, spec), db, cache, 20, "--timeout", "3"))
    wait_for(lambda: arrived(fake) >= 20, what="20 requests in flight")
    os.kill(run.pid, signal.SIGSTOP)
    time.sleep(3.5)  # past the 3 s timeout (the time itself is the test's condition); the server answers meanwhile
    os.kill(run.pid, signal.SIGCONT)
    assert run.wait() == 0, run.stderr
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})  # none of the 20 bought again
    check_export(db, prompts_of(spec), 1)


# --- 2. stopped past the lease while another resumer works ---------------------------------------------


def test_a_process_stopped_past_its_lease_sends_no_row_it_lost(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    """A works through fake 1; stopped past its 3 s lease, B (through fake 2) takes the expired rows; A wakes.
    A sends nothing B answered, and only what A had in flight at the stop is ever paid twice."""
    fake.configure(latency=1.0)
    spec = chat_spec(120, "leased", n=1)
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    lease = ("--lease-seconds", "3", "--rpm", "60000")  # told the limit: no careful start, 10 at once
    with FakeServer(latency=0.3) as other:
        a = procs.start(*run_args(write_spec(tmp_path, spec), db, cache, 10, *lease))
        wait_for(lambda: arrived(fake) >= 10, what="A's first answers")  # (the record holds finished requests)
        time.sleep(0.5)  # the next 10 written, none answered yet: exactly 10 in flight
        os.kill(a.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        answered_before = {p for entry in fake.record for p in entry["prompts"]}
        # A's lease expires (the server answers A's 10 meanwhile)
        wait_for(lambda: arrived(fake) >= 20 and not leased(db), what="A's 10 answered and its lease expired")
        b = procs.resume(*(str(db), "--cache-dir", str(cache), "--concurrency", "10", "--quiet",
                           "--base-url", other.url, *lease))
        wait_for(lambda: len(other.record) >= 20, what="B at work")
        woke = time.monotonic()
        os.kill(a.pid, signal.SIGCONT)
        assert b.wait() == 0, b.stderr
        assert a.wait() in (0, 1), a.stderr  # 1: rows left running by the other process at its end
        # after waking, A sends none of the rows it had queued and B took meanwhile
        after_wake = {p for entry in fake.record if entry["t"] >= woke for p in entry["prompts"]}
        assert not after_wake & set(other.answered()), sorted(after_wake & set(other.answered()))
        paid = fake.answered() + other.answered()
        in_flight = {p for e in fake.record if e["t"] < stopped for p in e["prompts"]} - answered_before
        assert len(in_flight) == 10
    assert set(paid) == set(prompts_of(spec))
    twice = [p for p, count in paid.items() if count > 1]
    assert set(twice) <= in_flight and max(paid.values()) == 2  # only what was in flight at the stop
    assert statuses(db) == Counter({"done": 120})
    check_export(db, prompts_of(spec), 1)
    # count what was paid: the job's tokens include the answers kept only as cache entries
    conn = sqlite3.connect(db)
    (paid_prompt_tokens,) = conn.execute("SELECT sum(prompt_tokens) FROM spend").fetchone()
    conn.close()
    assert paid_prompt_tokens == sum(count * max(1, len(p) // 4) for p, count in paid.items())


# --- 3. a big create beside a running resume ------------------------------------------------------------


def test_a_big_create_beside_a_running_resume_does_not_stop_its_requests(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    fake.configure(latency=0.05)
    spec = chat_spec(600, "working", name="working", n=1)
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    assert run_cli("create", str(write_spec(tmp_path, spec)), "--db", str(db)).returncode == 0
    resume = procs.resume(str(db), "--cache-dir", str(cache), "--concurrency", "2", "--quiet")
    wait_for(lambda: arrived(fake) >= 20, what="the resume at work")
    big = write_spec(tmp_path, chat_spec(200_000, "big", name="big", n=1), "big.json")
    create = procs.start("create", str(big), "--db", str(db))
    started = time.monotonic()
    assert create.wait() == 0, create.stderr
    ended = time.monotonic()
    fake.configure(latency=0.0)  # the rest of the resume, quickly
    assert resume.wait() == 0, resume.stderr
    times = sorted(entry["t"] for entry in fake.record if started <= entry["t"] <= ended)
    gaps = [b - a for a, b in zip([started, *times], [*times, ended], strict=True)]
    assert ended - started > 2 and max(gaps) < 1.5, (ended - started, max(gaps))  # requests kept flowing
    assert statuses(db, "working") == Counter({"done": 600}) and statuses(db, "big") == Counter({"pending": 200_000})
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})


def test_a_create_that_was_killed_is_invisible_and_redone(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(10, "first", name="first", n=1))
    big = write_spec(tmp_path, chat_spec(150_000, "big", name="big", n=1), "big.json")
    create = procs.start("create", str(big), "--db", str(db))
    wait_for(lambda: statuses(db, "big")["pending"] >= 50_000, what="a first chunk committed")
    create.kill()
    assert [job.job for job in bp.status(db)] == ["first", "big"]
    assert bp.status(db)[1].state == "creating" and bp.export(db) == []
    again = run_cli("create", str(big), "--db", str(db))
    assert again.returncode == 0, again.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT name, state, n_prompts FROM jobs ORDER BY id").fetchall() == [
        ("first", "ready", 10), ("big", "ready", 150_000)]
    (rows, hashes) = conn.execute("SELECT count(*), count(DISTINCT hash) FROM prompts WHERE job_id = 2").fetchone()
    conn.close()
    assert rows == hashes == 150_000


# --- 4. a full disk ------------------------------------------------------------------------------------


def test_a_full_cache_disk_loses_no_answer(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    fake.configure(latency=0.05)
    spec = chat_spec(200, "full " + "x" * 3000, n=1)
    db = tmp_path / "jobs.db"
    with small_disk(tmp_path / "small", "300k") as cache:
        run = run_cli(*run_args(write_spec(tmp_path, spec), db, cache, 20), env=procs.env, cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.count("\n") <= 3, run.stderr
        assert "cache" in run.stderr and "Traceback" not in run.stderr
        answered = set(fake.answered())
        done = statuses(db)["done"]
        assert done == len(answered) and len(answered) > 0  # everything that arrived is recorded
        subprocess.run(["mount", "-o", "remount,size=20m", str(cache)], check=True)
        again = run_cli(*run_args(tmp_path / "spec.json", db, cache, 20), env=procs.env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})


def test_a_full_database_disk_loses_no_answer_in_flight(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    fake.configure(latency=0.2)
    spec = chat_spec(400, "dbfull " + "y" * 1000, n=1)
    made = tmp_path / "made.db"
    bp.create(made, **spec)
    room = made.stat().st_size + 400_000  # the job, and room for a few dozen answers
    with small_disk(tmp_path / "small", str(room)) as disk:
        db = disk / "jobs.db"
        shutil.copyfile(made, db)
        # (a process: the rows its failed writes leave running are a dead process's, for the resume to take)
        run = procs.run(*run_args(write_spec(tmp_path, spec), db, tmp_path / "cache", 20, "--yes"))
        assert run.popen.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert "full" in run.stderr or "disk" in run.stderr, run.stderr
        first = set(fake.answered())
        assert 0 < len(first) < 400
        subprocess.run(["mount", "-o", "remount,size=50m", str(disk)], check=True)
        again = run_cli(str(db), "--cache-dir", str(tmp_path / "cache"), "--quiet", module="batch_prompt.resume",
                        env=procs.env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert statuses(db) == Counter({"done": 400})
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})  # what arrived was kept in the cache


# --- 5. a damaged cache --------------------------------------------------------------------------------


def test_a_cache_that_cannot_be_read_is_one_line_never_a_traceback(fake: FakeServer, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, chat_spec(20, "damaged", n=1))
    cache = tmp_path / "cache"
    out = run_cli("run", str(spec), "--db", str(tmp_path / "a.db"), "--cache-dir", str(cache), "--quiet",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    index = cache / "cache.db"
    data = bytearray(index.read_bytes())
    data[4096:8192] = os.urandom(4096)  # damaged pages in the cache's own SQLite file
    index.write_bytes(bytes(data))
    for extra in ([], ["--no-cache"]):
        out = run_cli("run", str(spec), "--db", str(tmp_path / f"b{len(extra)}.db"), "--cache-dir", str(cache),
                      "--quiet", *extra, env=cli_env(fake, tmp_path), cwd=tmp_path)
        assert "Traceback" not in out.stderr and "ExceptionGroup" not in out.stderr, out.stderr
        if out.returncode == 2:
            assert out.stderr.count("\n") == 1 and "cache" in out.stderr, out.stderr
        else:
            assert out.returncode == 0, out.stderr
            assert statuses(tmp_path / f"b{len(extra)}.db") == Counter({"done": 20})


def test_an_entry_of_invalid_utf8_is_asked_again(fake: FakeServer, tmp_path: Path) -> None:
    spec = chat_spec(5, "big entry " + "z" * 40_000, n=1)  # large answers: diskcache keeps them in .val files
    cache = tmp_path / "cache"
    options = {"base_url": fake.url, "api_key": "sk-test", "cache_dir": str(cache), "quiet": True}
    bp.create(tmp_path / "a.db", **spec)
    assert bp.resume(tmp_path / "a.db", **options).exit_code == 0
    files = sorted(cache.rglob("*.val"))
    assert len(files) == 5
    files[0].write_bytes(b"\xff\xfe" + files[0].read_bytes()[2:])
    fake.reset()
    bp.create(tmp_path / "b.db", **{**spec, "name": "again"})
    for fresh in (False, True):
        summary = bp.resume(tmp_path / "b.db", **options, cache=not fresh)
        assert summary.exit_code == 0
    assert sum(fake.answered().values()) == 1  # only the damaged one, asked again
    check_export(tmp_path / "b.db", prompts_of(spec), 1)


# --- 6. stderr's reader goes away ----------------------------------------------------------------------


def test_a_broken_stderr_silences_progress_and_nothing_else(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(latency=0.05)
    spec = write_spec(tmp_path, chat_spec(200, "piped", n=1))
    db = tmp_path / "jobs.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_prompt", "run", str(spec), "--db", str(db), "--cache-dir",
         str(tmp_path / "cache"), "--concurrency", "4"],
        env=cli_env(fake, tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    proc.stderr.readline()  # `2>&1 >/dev/null | head -1`
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0
    assert statuses(db) == Counter({"done": 200})  # every answer committed, no row left running
    assert fake.answered() == Counter({p: 1 for p in prompts_of(json.loads(spec.read_text()))})


# --- 7. a packed answer missing a choice ---------------------------------------------------------------


def test_a_packed_answer_missing_a_choice_re_asks_only_the_incomplete_prompt(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(missing_choice_rate=0.3)
    db = tmp_path / "jobs.db"
    words = [str(i) for i in range(400)]
    bp.create(db, name="packed", api="completions", model="gpt-3.5-turbo-instruct", templates=["p {w}"],
              keywords={"w": words}, prompts_per_request=20, model_args={"n": 2, "max_tokens": 8})
    summary = bp.resume(db, base_url=fake.url, api_key="sk-test", cache_dir=str(tmp_path / "c"), quiet=True,
                        retry=RetryPolicy.no_wait())
    assert summary.exit_code == 0
    missing = sum(1 for entry in fake.record if entry["outcome"] == "missing_choice")
    assert missing > 0
    paid = fake.answered()
    assert set(paid) == {f"p {w}" for w in words}
    assert sum(paid.values()) == 400 + missing  # one prompt re-asked per missing choice, never the pack
    results = bp.export(db)
    assert isinstance(results, list) and len(results) == 800
    assert all(item["choice"]["text"] == f"echo {item['choice']['index']}: {item['prompt']}" for item in results)


# --- 8. a 401 mid-run ----------------------------------------------------------------------------------


def test_a_401_mid_run_keeps_the_answers_already_authorised(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    fake.configure(latency=1.0)
    spec = chat_spec(100, "revoked", n=1)
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    run = procs.start(*run_args(write_spec(tmp_path, spec), db, cache, 10))
    wait_for(lambda: arrived(fake) >= 10, what="10 requests in flight")
    fake.configure(api_key="sk-another-key")  # the key is revoked: every new request gets 401
    assert run.wait() == 2, run.stderr
    assert "401" in run.stderr and API_KEY not in run.stderr and "Traceback" not in run.stderr
    authorised = fake.answered()
    assert len(authorised) >= 10
    conn = sqlite3.connect(db)
    done = {json.loads(k)["w"] for (k,) in conn.execute("SELECT keywords FROM prompts WHERE status = 'done'")}
    conn.close()
    assert {f"revoked {w}" for w in done} == set(authorised)  # every answer that came was kept
    fake.configure(api_key=None, latency=0.05)  # (the rest, quickly)
    again = run_cli(str(db), "--cache-dir", str(cache), "--quiet", module="batch_prompt.resume", env=procs.env,
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})


# --- 9. two resumers over overlapping jobs -------------------------------------------------------------


def test_two_resumers_over_overlapping_jobs_pay_once_for_the_overlap(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    fake.configure(latency=0.05, latency_jitter=0.05, seed=5)
    x = chat_spec(150, "shared", name="x", n=1)
    y = {**x, "name": "y", "keywords": {"w": [str(i) for i in range(300)]}}
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    bp.create(db, **x)
    bp.create(db, **y)
    resumers = [procs.resume(str(db), "--cache-dir", str(cache), "--concurrency", "8", "--quiet")
                for _ in range(2)]
    assert [proc.wait() for proc in resumers] == [0, 0], [proc.stderr for proc in resumers]
    assert statuses(db) == Counter({"done": 450})
    assert fake.answered() == Counter({f"shared {i}": 1 for i in range(300)})


# --- 10. read-only media -------------------------------------------------------------------------------


def test_status_and_export_work_on_a_read_only_mount(fake: FakeServer, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    db = archive / "jobs.db"
    bp.create(db, **chat_spec(30, "archived", n=1))
    assert bp.resume(db, base_url=fake.url, api_key="sk-test", cache_dir=str(tmp_path / "c"), quiet=True).exit_code == 0
    assert sorted(p.name for p in archive.iterdir()) == ["jobs.db"]  # closed cleanly: no -wal, no -shm
    view = tmp_path / "ro"
    view.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(archive), str(view)], capture_output=True).returncode:
        pytest.skip("a read-only bind mount needs root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        out = run_cli("status", str(view / "jobs.db"), cwd=tmp_path)
        assert out.returncode == 0 and "30" in out.stdout, out.stderr
        out = run_cli("export", str(view / "jobs.db"), "-o", str(tmp_path / "r.pkl"), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert len(bp.load_results(tmp_path / "r.pkl")) == 30
    finally:
        subprocess.run(["umount", str(view)], check=True)


# --- 11. counters that tell the truth ------------------------------------------------------------------


def test_retry_failed_during_a_run_counts_each_failure_once(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    fake.configure(latency=0.05)
    spec = chat_spec(300, "counted", n=1, fail400=range(0, 300, 6))  # 50 always fail
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    run = procs.start(*run_args(write_spec(tmp_path, spec), db, cache, 4, "--max-attempts", "1", "--yes"))
    for _ in range(4):  # failures moved back to pending while the run goes on
        wait_for(lambda: run.popen.poll() is not None or (db.exists() and statuses(db)["failed"] > 0),
                 what="a failed prompt")
        if run.popen.poll() is None:
            run_cli("retry-failed", str(db), cwd=tmp_path)
    assert run.wait() == 1, run.stderr
    summary = next(line for line in run.stderr.splitlines() if line.startswith("done "))
    assert "done 250 " in summary and "failed 50," in summary, summary  # each failing prompt once
    counts = statuses(db)  # (the last retry-failed may have come after the run's last claim)
    assert counts["done"] == 250 and counts["failed"] + counts["pending"] == 50


# --- issue 11: an answer in flight is an answer paid for; fresh samples stay fresh -------------------------


def packed_spec(count: int, prefix: str) -> dict[str, Any]:
    return {"name": prefix, "api": "completions", "model": "gpt-3.5-turbo-instruct", "templates": [prefix + " {w}"],
            "keywords": {"w": [str(i) for i in range(count)]}, "prompts_per_request": 20,
            "model_args": {"n": 2, "max_tokens": 8}}


def wait_running(db: Path, count: int) -> None:
    wait_for(lambda: db.exists() and statuses(db)["running"] >= count, what=f"{count} rows claimed")


def test_ctrl_c_waits_for_the_packed_requests_in_flight_and_keeps_them(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    fake.configure(latency=3.0)
    spec = packed_spec(100, "long")
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    loud = ["--yes", "--rpm", "60000"]  # (not --quiet: what a stop waits for is said with the progress)
    run = procs.start("run", str(write_spec(tmp_path, spec)), "--db", str(db), "--cache-dir", str(cache),
                      "--concurrency", "5", *loud)
    wait_running(db, 100)
    time.sleep(0.5)  # all 5 packed requests sent
    run.popen.send_signal(signal.SIGINT)
    assert run.wait() == 0  # the requests in flight were all it had left: all done, nothing to resume
    assert "interrupted" not in run.stderr and "resume with" not in run.stderr, run.stderr
    assert "waiting up to 120 s for 5 requests in flight (already paid for)" in run.stderr, run.stderr
    assert "press Ctrl-C again to abandon them" in run.stderr
    assert statuses(db) == Counter({"done": 100})  # every answer that came was committed
    assert fake.answered() == Counter({f"long {i}": 1 for i in range(100)})
    again = run_cli(str(db), "--cache-dir", str(cache), "--quiet", module="batch_prompt.resume", env=procs.env,
                    cwd=tmp_path)
    assert again.returncode == 0 and len(fake.record) == 5  # the resume sends nothing again

    # a second Ctrl-C abandons at once, and says the answers are lost
    fake.reset()
    fake.configure(latency=3.0)
    db2 = tmp_path / "second.db"
    run = procs.start("run", str(write_spec(tmp_path, packed_spec(40, "cut"), "cut.json")), "--db", str(db2),
                      "--cache-dir", str(cache), "--concurrency", "5", *loud)
    wait_running(db2, 40)
    time.sleep(0.5)
    run.popen.send_signal(signal.SIGINT)
    wait_for(lambda: "press Ctrl-C again" in run.stderr, what="the first Ctrl-C's message")
    started = time.monotonic()
    run.popen.send_signal(signal.SIGINT)
    assert run.wait() == 130 and time.monotonic() - started < 2.0
    assert "abandoned 2 requests in flight: their answers, if they come, " in run.stderr, run.stderr
    assert statuses(db2) == Counter({"pending": 40})  # nothing lost from the table: asked again on resume


def test_no_cache_is_kept_with_the_job_and_the_printed_resume_honours_it(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    fake.configure(latency=0.05)
    cache = tmp_path / "cache"
    spec = chat_spec(200, "fresh", n=1)
    first = run_cli(*run_args(write_spec(tmp_path, spec), tmp_path / "old.db", cache, 8, "--yes"), env=procs.env,
                    cwd=tmp_path)
    assert first.returncode == 0  # another job's answers to every one of these requests are cached
    fake.reset()
    fake.configure(latency=0.1)
    db = tmp_path / "jobs.db"
    run = procs.start(*run_args(write_spec(tmp_path, {**spec, "name": "fresh"}, "fresh.json"), db, cache, 8,
                                "--yes", "--no-cache"))
    wait_for(lambda: len(fake.answered()) >= 40, what="a part of the fresh run")
    run.popen.send_signal(signal.SIGTERM)
    assert run.wait() == 130
    fake.configure(latency=0.01)  # (the rest, quickly)
    command = next(line.split("resume with: ", 1)[1] for line in run.stderr.splitlines() if "resume with: " in line)
    assert command.startswith(f"python -m batch_prompt.resume {db}") and "--cache-dir" in command
    argv = command.split()[3:]
    again = run_cli(*argv, module="batch_prompt.resume", env=procs.env, cwd=tmp_path)  # the command as printed
    assert again.returncode == 0, again.stderr
    assert "(0 from cache)" in again.stderr, again.stderr  # the job remembers --no-cache
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})  # all 200 fresh samples: none copied
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM prompts WHERE cached = 1").fetchone() == (0,)
    conn.close()
