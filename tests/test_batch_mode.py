"""Batch API mode over real HTTP against the fake's Files and Batch endpoints: same table, same export,
never twice across kills, expired/cancelled/refused lines, validation failures, --no-wait, cancel."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from . import helpers_trials as trials
from .conftest import cli_env, run_cli
from .helpers_procs import Procs, chat_spec, prompts_of, resume_args, run_args, statuses, write_spec

FAST = dict(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)


def run(db: Path, fake: FakeServer, tmp_path: Path, **options: Any) -> bp.RunSummary:
    options = {"base_url": fake.url, "api_key": "sk-test", "cache_dir": str(tmp_path / "cache"), "quiet": True,
               "poll": 0.05, "retry": RetryPolicy.no_wait(), **options}
    return bp.resume(db, **options)


def comparable(results: list[dict[str, Any]]) -> list[Any]:
    """Export items without what differs between any two answers to the same request (ids, times)."""
    out = []
    for item in results:
        completion = {k: v for k, v in item["completion"].items() if k not in ("id", "created")}
        out.append({**item, "completion": completion})
    return out


def test_a_batch_job_in_several_batches_exports_what_a_live_run_exports(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**FAST)
    spec = chat_spec(1250, n=2)
    batch_db, live_db = tmp_path / "batch.db", tmp_path / "live.db"
    bp.create(batch_db, **spec)
    summary = run(batch_db, fake, tmp_path, mode="batch", batch_size=500)
    assert (summary.done, summary.failed, summary.exit_code, summary.batches_submitted) == (1250, 0, 0, 3)
    assert [b["lines"] for b in fake.batches] == [500, 500, 250]
    assert all(b["status"] == "completed" for b in fake.batches)
    assert set(fake.answered().values()) == {1} and len(fake.answered()) == 1250
    assert fake.files == []  # every file uploaded or produced was deleted once recorded
    bp.create(live_db, **spec)
    fake.reset()
    fake.configure(**FAST)
    run(live_db, fake, tmp_path / "other", mode="live")
    assert comparable(bp.export(batch_db)) == comparable(bp.export(live_db))  # type: ignore[arg-type]
    report = bp.status(batch_db)[0]
    assert report.mode == "batch" and [b.state for b in report.batches] == ["collected"] * 3
    assert [b.completed for b in report.batches] == [500, 500, 250]
    spent = {(m.model, m.requests) for m in report.models}
    assert spent == {("gpt-4o-mini", 1250)}
    # accounted at the batch price: half the live list price of the same tokens
    live_cost = bp.status(live_db)[0].cost
    assert report.cost is not None and live_cost is not None and report.cost == pytest.approx(live_cost / 2)


def test_a_server_without_the_batch_api_is_one_line_and_the_prompts_stay_pending(
    fake: FakeServer, tmp_path: Path
) -> None:
    """As llama.cpp's server: /v1/files answers 404. Exit 2 naming it; nothing stranded in a batch."""
    fake.configure(batch_api=False)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(10, n=1))
    with pytest.raises(bp.FatalAPIError, match=r"has no Batch API .*404.*--mode live"):
        run(db, fake, tmp_path, mode="batch")
    assert statuses(db) == Counter({"pending": 10}) and fake.batches == [] and fake.record == []
    summary = run(db, fake, tmp_path, mode="live")  # the leftovers, live
    assert summary.exit_code == 0 and fake.answered() == Counter({p: 1 for p in prompts_of(chat_spec(10, n=1))})
    # two models at that endpoint: neither leaves its prompts in a batch that cannot exist
    two = tmp_path / "two.db"
    bp.create(two, **{**chat_spec(5, prefix="two", n=1), "model": ["gpt-4o-mini", "gpt-4o"]})
    with pytest.raises(bp.FatalAPIError, match="has no Batch API"):
        run(two, fake, tmp_path, mode="batch")
    assert statuses(two) == Counter({"pending": 10})
    assert sqlite3.connect(two).execute("SELECT count(*) FROM batches WHERE state != 'returned'").fetchone() == (0,)
    assert run(two, fake, tmp_path, mode="live").exit_code == 0 and statuses(two) == Counter({"done": 10})


def test_a_file_already_gone_at_collection_does_not_stop_the_job(fake: FakeServer, tmp_path: Path) -> None:
    """The input file deleted before collection (the provider expired it, or a run killed while deleting
    files had deleted it): its 404 on delete is no failure, and the batch is collected."""
    fake.configure(**{**FAST, "batch_validate_seconds": 1.0})
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(5, n=1))
    assert run(db, fake, tmp_path, mode="batch", wait=False).in_batches == 5
    openai.OpenAI(base_url=fake.url, api_key="sk-test").files.delete(fake.files[0]["id"])
    summary = run(db, fake, tmp_path, mode="batch")
    assert (summary.exit_code, summary.done) == (0, 5) and fake.files == []
    assert [b.state for b in bp.status(db)[0].batches] == ["collected"]


def test_the_job_remembers_its_mode_and_a_plain_resume_continues_in_it(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**FAST)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(30, n=1))
    summary = run(db, fake, tmp_path, mode="batch", wait=False)
    assert summary.exit_code == 0 and summary.in_batches + summary.done == 30 and summary.batches_submitted == 1
    assert sqlite3.connect(db).execute("SELECT mode FROM jobs").fetchone() == ("batch",)
    time.sleep(0.2)
    summary = run(db, fake, tmp_path)  # no mode: the job's own, batch; it collects what was submitted
    assert statuses(db) == Counter({"done": 30}) and len(fake.batches) == 1
    assert set(fake.answered().values()) == {1} and len(fake.answered()) == 30
    assert not [e for e in fake.record if e["path"].endswith("/chat/completions")]  # no live call


def test_expired_and_cancelled_lines_go_to_a_later_batch(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**FAST, batch_expire_after=40)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(100, n=1))
    summary = run(db, fake, tmp_path, mode="batch")
    assert (summary.done, summary.failed) == (100, 0)
    assert [b["status"] for b in fake.batches] == ["expired", "expired", "completed"]
    assert [b["lines"] for b in fake.batches] == [100, 60, 20]
    assert set(fake.answered().values()) == {1} and len(fake.answered()) == 100


def test_permanent_refusals_fail_with_their_message_and_transient_ones_run_out(fake: FakeServer,
                                                                                 tmp_path: Path) -> None:
    fake.configure(**FAST)
    db = tmp_path / "jobs.db"
    spec = chat_spec(20, n=1, fail400=[3, 7])
    spec["keywords"]["w"][11] = "11 FAIL500"  # refused as a transient 500 every time
    bp.create(db, **spec)
    summary = run(db, fake, tmp_path, mode="batch", max_attempts=3)
    assert (summary.done, summary.failed, summary.exit_code) == (17, 3, 1)
    failed = bp.show(db, status="failed")
    assert sorted(p.error for p in failed if "FAIL400" in json.dumps(p.prompt))[0] == (
        "BadRequestError 400 (invalid_prompt): Invalid prompt: contains FAIL400")
    transient = [p for p in failed if "FAIL500" in json.dumps(p.prompt)]
    assert len(transient) == 1 and transient[0].error.startswith("gave up after 3 attempts: InternalServerError 500")
    assert len(fake.batches) == 3  # the 500 went round three times


def test_a_batch_the_provider_refuses_twice_for_one_reason_stops_the_job(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**FAST, batch_max_lines=10)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(25, n=1))
    with pytest.raises(bp.ConfigError, match=r"refused two batches of 'chat' .* for the same reason"):
        run(db, fake, tmp_path, mode="batch", batch_size=20)
    # 20 lines refused (over the 10 allowed), the last 5 answered, the 20 refused again: stop, not loop
    assert [(b["lines"], b["status"]) for b in fake.batches] == [(20, "failed"), (5, "completed"), (20, "failed")]
    assert statuses(db) == Counter({"pending": 20, "done": 5})  # nothing stranded in a refused batch
    report = bp.status(db)[0]
    assert [b.state for b in report.batches] == ["returned", "collected", "returned"]
    assert "10" in (report.batches[0].error or ""), report.batches[0].error
    # within the limit, it goes through
    fake.configure(batch_max_lines=50)
    assert run(db, fake, tmp_path, batch_size=20).exit_code == 0 and statuses(db) == Counter({"done": 25})


def test_cancel_keeps_what_was_completed_and_returns_the_rest(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**{**FAST, "batch_lines_per_second": 50.0})
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(200, n=1))
    run(db, fake, tmp_path, mode="batch", wait=False)
    time.sleep(1.0)  # about 50 lines answered
    result = bp.cancel(db, base_url=fake.url, api_key="sk-test", cache_dir=str(tmp_path / "cache"), quiet=True,
                       poll=0.05)
    assert result.asked == 1 and fake.batches[0]["status"] == "cancelled"
    done = statuses(db)["done"]
    answered = len(fake.answered())
    assert 20 <= done == answered <= 150 and statuses(db)["pending"] == 200 - done
    assert result.summary.done == done
    run(db, fake, tmp_path, batch_size=1000)  # the rest, in a new batch
    assert statuses(db) == Counter({"done": 200}) and set(fake.answered().values()) == {1}


def test_status_json_lists_batches(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**{**FAST, "batch_lines_per_second": 0.0})  # never answers: stays in progress
    db, spec = tmp_path / "jobs.db", write_spec(tmp_path, chat_spec(12, n=1))
    proc = run_cli(*run_args(spec, db, tmp_path / "cache"), "--mode", "batch", "--no-wait", env=cli_env(fake, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "12 prompts are in open batches at the provider: collect them with python -m batch_prompt.resume" in (
        proc.stderr)
    out = run_cli("status", str(db), "--json")
    batches = json.loads(out.stdout)[0]["batches"]
    assert len(batches) == 1 and batches[0]["id"] == fake.batches[0]["id"]
    assert (batches[0]["state"], batches[0]["requests"], batches[0]["model"]) == ("submitted", 12, "gpt-4o-mini")


KILL_TRIALS, KILL_TRIALS_PICKED = 20, 3  # scripts/kill_trials makes all 20


@pytest.mark.slow
def test_killed_anywhere_in_batch_mode_then_resumed_asks_each_prompt_once(fake: FakeServer, procs: Procs,
                                                                           tmp_path: Path) -> None:
    """SIGKILL at seeded random instants while submitting (claims, upload, create) and while waiting; the
    resume finds what exists: every prompt answered exactly once by the server, never a second batch for
    prompts already in one, no uploaded file left behind."""
    numbers = trials.pick("sigkill-batch", KILL_TRIALS, KILL_TRIALS_PICKED)
    print(f"{trials.header()}: sigkill-batch trials {numbers}")
    for trial in numbers:
        which = trials.replay("sigkill-batch", trial)
        fake.reset()
        fake.configure(**{**FAST, "batch_lines_per_second": 2000.0, "batch_validate_seconds": 0.05})
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        spec = chat_spec(300, prefix=f"t{trial}", n=1)
        db, cache = folder / "jobs.db", folder / "cache"
        path = write_spec(folder, spec)
        proc = procs.start(*run_args(path, db, cache), "--mode", "batch", "--batch-size", "50", "--poll", "0.05")
        time.sleep(trials.rng("sigkill-batch", trial).uniform(0.3, 2.5))  # the trial's instant of the kill
        proc.kill()
        # The recovery need not be a process of its own (it runs in this one): the killed one is dead.
        if db.exists():
            again = run_cli(*resume_args(db, cache), "--mode", "batch", "--poll", "0.05", module="batch_prompt.resume",
                            env=procs.env)
        else:  # killed before its create was complete (a slow start): nothing recorded, nothing sent
            assert fake.files == [] and fake.batches == [], which
            again = run_cli(*run_args(path, db, cache), "--mode", "batch", "--batch-size", "50", "--poll", "0.05",
                            env=procs.env)
        assert again.returncode == 0, (which, again.stderr)
        assert statuses(db) == Counter({"done": 300}), which
        answered = fake.answered()
        assert set(answered.values()) == {1} and set(answered) == set(prompts_of(spec)), which
        per_prompt_batches = sum(b["lines"] for b in fake.batches if b["status"] != "failed")
        assert per_prompt_batches == 300, (which, [(b["lines"], b["status"]) for b in fake.batches])
        assert fake.files == [], which
