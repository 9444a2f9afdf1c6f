"""`run` asks before spending, on a terminal: above `--confirm-above` (or with no known price), never with
`--yes`, never where no one can answer (stdin not a terminal). Run under a pseudo-terminal against the fake
server, whose own record proves what was sent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import batch_prompt as bp
from batch_prompt.testing import FakeServer

from .conftest import cli_env
from .helpers_pty import run_in_pty

QUESTION = "? [y/N] "


def spec(tmp_path: Path, model: str = "gpt-4o-mini", count: int = 4) -> str:
    fields: dict[str, Any] = {"name": "ask", "api": "chat", "model": model, "templates": ["Say {w}"],
                              "keywords": {"w": [f"w{i}" for i in range(count)]}, "model_args": {"max_tokens": 5}}
    (tmp_path / "spec.json").write_text(json.dumps(fields))
    return "spec.json"


def run(fake: FakeServer, tmp_path: Path, *extra: str, answers: list[tuple[str, str]] | None = None,
        stdin_tty: bool = True) -> tuple[int, str]:
    args = ["run", "spec.json", "--db", "jobs.db", "--quiet", *extra]
    done = run_in_pty(args, env=cli_env(fake, tmp_path), cwd=tmp_path, answers=answers or [], stdin_tty=stdin_tty,
                      timeout=60)
    return done.returncode, done.text.replace("\r\n", "\n")


def test_no_known_price_asks_and_no_sends_nothing(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path, model="fake-model")
    code, text = run(fake, tmp_path, answers=[(QUESTION, "n\n")])
    assert code == 0, text
    assert "4 prompts in 4 requests to fake-model: ~" in text  # the estimate, as `estimate` renders it
    assert "Send 4 prompts, cost unknown (no known price for `fake-model`)? [y/N] n" in text
    assert ("nothing sent; job 'ask' is recorded in jobs.db: to send it later, "
            "python -m batch_prompt run spec.json --db jobs.db --quiet --yes") in text
    assert fake.record == []
    [job] = bp.status(tmp_path / "jobs.db")
    assert (job.job, job.pending, job.requests) == ("ask", 4, 0)


def test_above_the_threshold_asks_and_yes_sends(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path)
    code, text = run(fake, tmp_path, "--confirm-above", "0", answers=[(QUESTION, "y\n")])
    assert code == 0, text
    assert "Send 4 prompts, at most $0.0000" in text and " at list price? [y/N] y" in text
    assert len(fake.record) == 4


def test_end_of_input_is_no(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path)
    code, text = run(fake, tmp_path, "--confirm-above", "0.000001", answers=[(QUESTION, "\x04")])  # Ctrl-D
    assert code == 0 and "nothing sent" in text, text
    assert fake.record == []


def test_a_partly_finished_job_is_asked_about_what_is_left(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path, model="fake-model")
    fields = json.loads((tmp_path / "spec.json").read_text())
    fields["keywords"]["w"][0] = "FAIL400"
    (tmp_path / "spec.json").write_text(json.dumps(fields))
    code, _ = run(fake, tmp_path, "--yes")
    assert code == 1 and len(fake.record) == 4  # the FAIL400 prompt failed
    code, text = run(fake, tmp_path, answers=[(QUESTION, "n\n")])
    assert code == 1 and QUESTION not in text, text  # nothing unsent (a failed prompt waits for retry-failed)
    assert bp.retry_failed(tmp_path / "jobs.db") == 1
    code, text = run(fake, tmp_path, answers=[(QUESTION, "n\n")])
    assert code == 0 and "Send 1 prompt (3 of 4 are finished), cost unknown" in text, text
    assert len(fake.record) == 4


def test_below_the_threshold_shows_the_estimate_and_does_not_ask(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path)  # 4 tiny prompts to gpt-4o-mini: far below the default $1
    code, text = run(fake, tmp_path)
    assert code == 0, text
    assert "4 prompts in 4 requests to gpt-4o-mini" in text and QUESTION not in text
    assert len(fake.record) == 4


def test_yes_never_asks(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path, model="fake-model")
    code, text = run(fake, tmp_path, "--yes")
    assert code == 0, text
    assert QUESTION not in text and "requests to fake-model" not in text and "not asking" not in text
    assert len(fake.record) == 4


def test_no_terminal_on_stdin_never_blocks_and_says_so_once(fake: FakeServer, tmp_path: Path) -> None:
    spec(tmp_path, model="fake-model")
    code, text = run(fake, tmp_path, stdin_tty=False)  # stdout and stderr on a terminal, stdin /dev/null
    assert code == 0, text
    assert QUESTION not in text
    assert text.count("not asking before sending: stdin is not a terminal (--yes: never ask)") == 1
    assert len(fake.record) == 4


def test_a_no_keeps_the_runs_choices_and_quotes_the_price_of_its_mode(fake: FakeServer, tmp_path: Path) -> None:
    """`run --mode batch --no-cache` answered "no": the job is recorded as it was to be run (batch, fresh
    samples), so a plain resume sends it to the Batch API, never live at twice the price."""
    spec(tmp_path)
    fake.configure(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)
    code, text = run(fake, tmp_path, "--mode", "batch", "--no-cache", "--confirm-above", "0",
                     answers=[(QUESTION, "n\n")])
    assert code == 0 and "nothing sent" in text, text
    assert " at the batch price? [y/N] n" in text, text
    [job] = bp.status(tmp_path / "jobs.db")
    assert job.mode == "batch" and fake.record == []
    assert sqlite3.connect(tmp_path / "jobs.db").execute("SELECT mode, fresh FROM jobs").fetchall() == [("batch", 1)]
    summary = bp.resume(tmp_path / "jobs.db", base_url=fake.url, api_key="sk-test", quiet=True, poll=0.05,
                        cache_dir=str(tmp_path / "cache"))
    assert summary.done == 4 and len(fake.batches) == 1
    assert fake.record == [] and sum(fake.answered().values()) == 4  # all in the batch, none live
