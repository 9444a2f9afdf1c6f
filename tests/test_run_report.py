"""What a run says when it ends, and while it goes: the summary's figures agree with status, nothing to
resume is never called an interruption, a run of several models gives the ETA of its slowest one."""

from __future__ import annotations

from pathlib import Path

import pytest

import batch_prompt as bp
from batch_prompt.cli import commands as cli
from batch_prompt.cli.arguments import build_parser
from batch_prompt.options import RunSummary
from batch_prompt.run.ledger import Tally
from batch_prompt.run.progress import HealthNotes, Progress
from batch_prompt.testing import FakeServer

from .conftest import API_KEY
from .helpers_procs import chat_spec
from .test_progress import View

FAST = dict(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)


def test_a_collect_says_the_requests_it_recorded_as_status_does(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    fake.configure(**FAST)
    db = tmp_path / "jobs.db"
    bp.create(db, **chat_spec(30, n=1))
    common = ["--base-url", fake.url, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--poll", "0.05"]
    assert cli.main(["resume", str(db), "--mode", "batch", "--no-wait", *common]) == 0
    submitted = capsys.readouterr().err
    assert "requests 0 paid for (30 sent)" in submitted, submitted
    assert cli.main(["resume", str(db), *common]) == 0
    collected = capsys.readouterr().err
    assert "done 30 (0 from cache), failed 0, requests 30 paid for, tokens" in collected, collected
    assert cli.main(["status", str(db)]) == 0
    assert "30 requests paid for" in capsys.readouterr().out


def test_an_interruption_with_nothing_left_is_no_interruption(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["resume", "jobs.db"])
    ended = RunSummary(done=5, paid=5, requests=5, interrupted=True)
    assert cli._report(ended, "jobs.db", args) == 0
    assert "interrupted" not in capsys.readouterr().err
    left = RunSummary(done=3, paid=3, requests=3, interrupted=True, unfinished=2)
    assert cli._report(left, "jobs.db", args) == 130
    assert "interrupted: resume with: python -m batch_prompt.resume jobs.db" in capsys.readouterr().err
    in_batches = RunSummary(interrupted=True, in_batches=2)
    assert cli._report(in_batches, "jobs.db", args) == 130
    assert "interrupted: resume with" in capsys.readouterr().err
    stopped = RunSummary(done=3, paid=3, requests=3, unfinished=2)  # not interrupted: a budget, a refusal
    assert cli._report(stopped, "jobs.db", args) == 1
    err = capsys.readouterr().err
    assert "interrupted" not in err and "2 prompts pending: resume with: python -m batch_prompt.resume" in err


def test_several_models_give_the_eta_of_the_slowest() -> None:
    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    fast, slow = Tally(done=10), Tally(done=5)
    progress.start(View(total=110, already=0, t=Tally(done=15), models={"fast": fast, "slow": slow},
                        todo={"fast": 10, "slow": 100}))
    now[0] = 2.0
    figures = progress.figures()
    assert figures is not None and figures.eta == pytest.approx(95 / 2.5)  # not 95 / 7.5, the runs' rate
    # a model with prompts left and no answer yet: its pace, and so the ETA, unknown
    progress.start(View(total=110, already=0, t=Tally(done=10), models={"fast": fast, "slow": Tally()},
                        todo={"fast": 10, "slow": 100}))
    now[0] = 4.0
    figures = progress.figures()
    assert figures is not None and figures.eta is None


def test_health_is_noted_when_it_begins_again_after_a_while_and_when_it_ends() -> None:
    now = [0.0]
    notes = HealthNotes(repeat=600.0, clock=lambda: now[0])
    said = []
    for second in range(3600):  # an hour's outage: a countdown, and probes between
        now[0] = float(second)
        text = "paused: server unreachable, probing" if second % 5 == 4 else \
            f"paused: server unreachable, next probe in {4 - second % 5} s"
        said += notes.update([text])
    assert said == ["paused: server unreachable, next probe in 4 s"]
    now[0] = 3600.0
    assert notes.update([]) == ["nothing holds the run back now (it was paused: server unreachable)"]
    assert notes.update([]) == []
    now[0] = 3700.0  # back within `repeat` of when it was last seen: not said again, nor its end
    assert notes.update(["paused: server unreachable, probing"]) == []
    now[0] = 3701.0
    assert notes.update([]) == []
    now[0] = 4400.0
    assert notes.update(["rate limited: waiting 3 s"]) == ["rate limited: waiting 3 s"]
    now[0] = 4401.0
    assert notes.update(["paused: server unreachable, probing"]) == ["paused: server unreachable, probing"]
    now[0] = 4402.0
    assert notes.update([]) == [
        "nothing holds the run back now (it was rate limited: waiting 3 s; paused: server unreachable)"]
