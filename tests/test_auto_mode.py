"""`--mode auto --deadline`: the cheapest lane that meets the deadline, over real HTTP against the fake's
live and Batch endpoints. The plan itself (a pure function) is proved in a table; the runs prove from the
fake's own record that a long deadline sends nothing live, that a short one takes slow batches back and
finishes live with every prompt answered once, and that a plain resume keeps to the deadline kept."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.errors import ConfigError
from batch_prompt.run.plan import Inputs, Rate, make_plan, parse_duration
from batch_prompt.run.progress import Progress
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import cli_env, run_cli
from .helpers_procs import chat_spec, prompts_of, statuses, write_spec

FAST = dict(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)
LIVE_PATH = "/v1/chat/completions"


def run(db: Path, fake: FakeServer, tmp_path: Path, **options: Any) -> bp.RunSummary:
    options = {"base_url": fake.url, "api_key": "sk-test", "cache_dir": str(tmp_path / "cache"), "quiet": True,
               "poll": 0.05, "retry": RetryPolicy.no_wait(), "timeout": 5.0, **options}
    return bp.resume(db, **options)


def live_requests(fake: FakeServer) -> int:
    return sum(1 for entry in fake.record if entry["path"] == LIVE_PATH)


# --- the plan, as a pure function --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("36h", 129600), ("2d", 172800), ("45s", 45), ("120", 120),
    ("1.5h", 5400), ("1d2h3m4s", 93784),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "2x", "h", "0", "0s", "-5m", "5 m x", "inf", "nan", "1h-30m"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="deadline must be a duration like 90m"):
        parse_duration(text)


def inputs(room: float, prompts: int = 1000, rate: float = 10.0, known: bool = True, worst: float | None = None,
           in_batches: int = 0) -> Inputs:
    return Inputs(now=1000.0, deadline_at=1000.0 + room, todo={"m": prompts}, in_batches=in_batches,
                  rates={"m": Rate(rate, "rpm 600", known)}, batch_window=86400.0, batch_worst=worst, poll=10.0)


def test_the_plan_is_batch_when_the_deadline_leaves_room_for_the_window_or_what_batches_took() -> None:
    lead = 1.25 * 100 + 600 + 10  # 1,000 prompts at 10/s, cancelling (24 h / 144), one poll
    plan = make_plan(inputs(30 * 3600))
    assert (plan.mode, plan.take_back_at, plan.batch_seen) == ("batch", 1000 + 30 * 3600 - lead, False)
    assert plan.line().startswith("plan: batch (deadline in 1d06h, the Batch API's window is 1d00h); live from ")
    # no batch seen here and the window does not fit: a batch is still tried, taken back in time if need be
    tried = make_plan(inputs(20 * 3600))
    assert (tried.mode, tried.take_back_at) == ("batch", 1000 + 20 * 3600 - lead)
    assert "the Batch API's window is 1d00h: a try); live from" in tried.line()
    seen = make_plan(inputs(20 * 3600, worst=2 * 3600))  # batches here took up to 2 h: they fit
    assert seen.mode == "batch" and "batches here have taken up to 2h00m); live" in seen.line()
    assert "batches here have taken up to 2h00m: a try" in make_plan(inputs(2 * 3600, worst=2 * 3600)).line()
    # a near deadline: the cancelling allowed is a tenth of the time (60 s of 10 min), so a batch is tried
    near = make_plan(inputs(600, prompts=100))
    assert (near.mode, near.take_back_at) == ("batch", 1000 + 600 - (1.25 * 10 + 60 + 10))
    # no room before the take-back to give a batch a chance: live; prompts already in batches stay there
    # until the take-back, then not
    assert make_plan(inputs(160)).mode == "live"  # 9 s before the take-back (125 s live, 16 s cancel, a poll)
    assert make_plan(inputs(160, in_batches=1000)).mode == "batch"
    live = make_plan(inputs(130, in_batches=1000))
    assert live.mode == "live" and live.to_dict()["take_back"] is None
    assert live.line().startswith("plan: live (deadline in 2m10s: no room to try a batch first); 1,000 prompts at ")


def test_a_deadline_that_cannot_be_met_names_the_rate_it_needs() -> None:
    with pytest.raises(ConfigError, match=r"^deadline in 10s: 1,000 prompts need 100 requests/s live; known rate: "
                                          r"10/s \(rpm 600\)$"):
        make_plan(inputs(10))
    assert make_plan(inputs(10, known=False)).mode == "live"  # an assumed rate never calls it impossible
    with pytest.raises(ConfigError, match="the deadline has passed"):
        make_plan(inputs(-1))


# --- runs against the fake ---------------------------------------------------------------------------


def test_a_long_deadline_sends_nothing_live(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**FAST)
    db, spec = tmp_path / "jobs.db", chat_spec(30, n=1)
    bp.create(db, **spec)
    summary = run(db, fake, tmp_path, mode="auto", deadline="2d", rpm=600)
    assert (summary.done, summary.exit_code, summary.batches_submitted) == (30, 0, 1)
    assert live_requests(fake) == 0 and [b["status"] for b in fake.batches] == ["completed"]
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})
    report = bp.status(db)[0]
    assert report.mode == "batch" and report.plan is not None and report.plan["mode"] == "batch"
    assert [m.model for m in report.models] == ["gpt-4o-mini"] and report.requests == 30


def slow_batches(fake: FakeServer) -> None:
    """Batches that answer 2 lines a second: 40 prompts would take 20 s."""
    fake.configure(**{**FAST, "batch_lines_per_second": 2.0})


def test_a_short_deadline_takes_slow_batches_back_and_finishes_live_each_prompt_once(
        fake: FakeServer, tmp_path: Path) -> None:
    slow_batches(fake)
    db, spec = tmp_path / "jobs.db", chat_spec(40, n=1)
    bp.create(db, **spec)
    started = time.monotonic()
    # the provider's window is 24 h; a 7 s deadline still tries a batch, then takes it back (cancelling
    # allowed a tenth of the time)
    summary = run(db, fake, tmp_path, mode="auto", deadline=7, rpm=6000)
    took = time.monotonic() - started
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 40}) and took < 7
    [batch] = fake.batches
    assert batch["status"] == "cancelled"
    by_batch = batch["request_counts"]["completed"]
    assert 2 <= by_batch <= 20  # some answered by the batch before it was taken back, the rest live
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})  # each once, batch or live
    assert live_requests(fake) == 40 - by_batch
    spent = {(s.mode, s.answers) for s in bp.status(db)[0].models[0:1] for s in _spend(db)}
    assert spent == {("batch", by_batch), ("live", 40 - by_batch)}  # what was paid: each prompt once
    plan = bp.status(db)[0].plan
    assert plan is not None and plan["mode"] == "batch" and plan["rate_source"] == "rpm 6000"
    assert plan["learned"]["gpt-4o-mini"] > 0  # the rate reached live, for a later plan with no rpm


def _spend(db: Path) -> list[Any]:
    from batch_prompt.store.database import Store

    with Store(db, create=False) as store:
        return store.spend(store.jobs()[0])


def test_the_plan_is_printed_and_in_status(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(**FAST)
    db, spec = tmp_path / "jobs.db", write_spec(tmp_path, chat_spec(12, n=1))
    proc = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), "--mode", "auto",
                   "--deadline", "30h", "--rpm", "600", "--poll", "0.05", env=cli_env(fake, tmp_path))
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "plan: " in line]
    assert line.split(" ", 2)[2].startswith("plan: batch (deadline in 1d06h, the Batch API's window is 1d00h); "
                                            "live from ")
    assert line.endswith(" at 10/s (rpm 600) if unfinished (12 prompts take about 1s live)")
    assert live_requests(fake) == 0
    plan = json.loads(run_cli("status", str(db), "--json").stdout)[0]["plan"]
    assert (plan["mode"], plan["rate"], plan["rate_source"], plan["prompts"]) == ("batch", 10.0, "rpm 600", 12)
    assert plan["deadline_at"] - plan["made_at"] == pytest.approx(30 * 3600, abs=1)
    assert plan["take_back_at"] < plan["deadline_at"] and plan["take_back"].startswith(plan["deadline"][:4])
    text = run_cli("status", str(db)).stdout
    assert f"  plan: batch, live from {plan['take_back'][:16].replace('T', ' ')} at 10/s (rpm 600); deadline " in text
    # a later --mode live clears the deadline: the job is no longer in auto mode
    run_cli("resume", str(db), "--mode", "live", "--quiet", env=cli_env(fake, tmp_path))
    assert json.loads(run_cli("status", str(db), "--json").stdout)[0]["plan"] is None


def test_a_plain_resume_keeps_to_the_deadline_kept(fake: FakeServer, tmp_path: Path) -> None:
    slow_batches(fake)
    db, spec = tmp_path / "jobs.db", chat_spec(40, n=1)
    bp.create(db, **spec)
    started = time.monotonic()
    submitted = run(db, fake, tmp_path, mode="auto", deadline=7, batch_window=2.0, rpm=6000, wait=False)
    assert submitted.in_batches == 40 and live_requests(fake) == 0 and fake.batches[0]["status"] == "in_progress"
    summary = run(db, fake, tmp_path, batch_window=2.0, rpm=6000)  # no --deadline: the one kept
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 40}) and time.monotonic() - started < 7
    assert fake.batches[0]["status"] == "cancelled" and 0 < live_requests(fake) < 40
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})
    # a later --deadline replaces it
    before = bp.status(db)[0].plan
    run(db, fake, tmp_path, deadline="3d")
    after = bp.status(db)[0].plan
    assert before is not None and after is not None and after["deadline_at"] - before["deadline_at"] > 2 * 86400


def test_an_impossible_deadline_is_exit_2_naming_the_rate(fake: FakeServer, tmp_path: Path) -> None:
    db, spec = tmp_path / "jobs.db", write_spec(tmp_path, chat_spec(1000, n=1))
    proc = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), "--mode", "auto",
                   "--deadline", "10s", "--rpm", "600", "--quiet", "--yes", env=cli_env(fake, tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("batch-prompt: error: deadline in 10s: 1,000 prompts need 100 requests/s live; "
                                  "known rate: 10/s (rpm 600)"), proc.stderr
    assert fake.record == [] and fake.batches == [] and statuses(db) == Counter({"pending": 1000})


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "auto", "--deadline", "soon"],
     "deadline must be a duration like 90m, 2h, 1h30m, 2d or 45s, not 'soon'"),
    (["--deadline", "0s"], "deadline must be a duration"),
    (["--mode", "live", "--deadline", "2h"], "a deadline is for --mode auto, not live"),
    (["--mode", "auto"], "--mode auto needs a --deadline"),
])
def test_bad_deadlines_are_exit_2_and_nothing_is_sent(fake: FakeServer, tmp_path: Path, args: list[str],
                                                      message: str) -> None:
    db, spec = tmp_path / "jobs.db", write_spec(tmp_path, chat_spec(5, n=1))
    proc = run_cli("run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), *args, "--quiet",
                   "--yes", env=cli_env(fake, tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert fake.record == [] and fake.batches == []
    if args[-1] in ("soon", "0s", "2h"):  # refused before the job is recorded
        assert not db.exists()


def test_a_server_without_the_batch_api_sends_an_auto_job_live(fake: FakeServer, tmp_path: Path) -> None:
    """A self-hosted server (llama.cpp's) answers the Files API 404: the job goes live, nothing is lost."""
    fake.configure(batch_api=False)
    db, spec = tmp_path / "jobs.db", chat_spec(20, n=1)
    bp.create(db, **spec)
    progress = Progress()
    started = time.monotonic()
    summary = run(db, fake, tmp_path, mode="auto", deadline="1h", poll=10.0, quiet=False, progress=progress)
    assert (summary.done, summary.failed, summary.exit_code) == (20, 0, 0)
    assert time.monotonic() - started < 5  # not a poll's wait, nor the take-back's
    assert live_requests(fake) == 20 and fake.batches == []
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})
    assert any("has no Batch API" in note and "goes live" in note for note in progress.notes), progress.notes
    report = bp.status(db)[0]
    assert report.mode == "live" and report.plan is not None and report.plan["mode"] == "live"



def test_flex_capacity_after_the_take_back_does_not_miss_the_deadline(fake: FakeServer, tmp_path: Path) -> None:
    """`--service-tier flex` in auto mode: what goes live goes live because the deadline needs it, so a flex
    request refused for capacity goes at the default tier at once (it once waited capacity out with growing
    backoff, minutes past a 7 s deadline)."""
    slow_batches(fake)
    fake.configure(flex_capacity_rate=0.8, seed=3)
    db, spec = tmp_path / "jobs.db", chat_spec(40, n=1)
    bp.create(db, **spec)
    started = time.monotonic()
    summary = run(db, fake, tmp_path, mode="auto", deadline=7, rpm=6000, service_tier="flex",
                  retry=RetryPolicy(maximum=2.0))
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 40}) and time.monotonic() - started < 7
    assert fake.answered() == Counter({prompt: 1 for prompt in prompts_of(spec)})
    sent = Counter((e["service_tier"], e["outcome"]) for e in fake.record)
    assert sent[("flex", "capacity_429")] == sent[("default", "ok")] == summary.fell_back > 0
    assert sent[("flex", "ok")] + sent[("default", "ok")] == live_requests(fake) - sent[("flex", "capacity_429")]
