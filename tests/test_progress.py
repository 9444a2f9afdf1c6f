"""Progress reporters render what they read of a run; they count nothing themselves. The live display fits
the terminal, in-process on a pseudo-terminal and in a real run on one 80 columns wide."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pytest

from batch_prompt.cli.progress import BarProgress, auto_progress
from batch_prompt.run.ledger import Tally
from batch_prompt.run.progress import LogProgress, Progress, duration
from batch_prompt.testing import FakeServer

from .conftest import cli_env
from .helpers_pty import run_in_pty, screen, set_size, strip_ansi


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class View:
    label: str = "likes"
    total: int = 10
    already: int = 2
    t: Tally = field(default_factory=lambda: Tally(done=2, cached=1, failed=1, in_flight=2, requests=3, paid=1,
                                                     prompt_tokens=5, completion_tokens=7))
    price: float | None = 0.000125
    troubles: list[str] = field(default_factory=list)
    models: dict[str, Tally] | None = None
    todo: dict[str, int] = field(default_factory=dict)

    def tally(self) -> Tally:
        return self.t

    def per_model(self) -> dict[str, Tally]:
        return self.models or {"m": self.t}

    def cost(self) -> float | None:
        return self.price

    def health(self) -> list[str]:
        return self.troubles


def pty_stream(columns: int = 80, lines: int = 24) -> tuple[int, int, TextIO]:
    """A pseudo-terminal of that size: (master, slave, a text stream writing to the slave)."""
    master, slave = pty.openpty()
    set_size(slave, columns, lines)
    os.set_blocking(master, False)
    return master, slave, os.fdopen(slave, "w", encoding="utf-8", closefd=False)


def drawn(master: int) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(master, 65536):
            data += chunk
    return data


def models_view(**kw: object) -> View:
    two = {"gpt-4o-mini": Tally(done=1, failed=1, in_flight=1, prompt_tokens=3, completion_tokens=4),
           "my-llama-3.1-8b-instruct": Tally(done=1, cached=1, in_flight=1, prompt_tokens=2, completion_tokens=3)}
    return View(models=two, **kw)  # type: ignore[arg-type]


def test_the_live_display_shows_every_field_within_80_columns() -> None:
    master, slave, stream = pty_stream(80)
    now = [0.0]
    bar = BarProgress(stream, clock=lambda: now[0])  # its size: the stream's own terminal
    view = models_view(t=Tally(done=3, cached=1, failed=1, in_flight=2, requests=6, paid=2, retries=3,
                               prompt_tokens=5, completion_tokens=7),
                       troubles=["rate limited: waiting 4 s", "paused: server unreachable, next probe in 8 s"])
    bar.start(view)
    now[0] = 2.0
    bar.render()
    bar.note("stopping: waiting up to 120 s for 40 requests in flight (already paid for); press Ctrl-C again "
             "to abandon them")
    now[0] = 3.0
    bar.render(final=True)
    stream.flush()
    output = drawn(master)
    os.close(master)
    os.close(slave)
    assert not bar.broken
    wide = screen(output, 160, 60)  # a wider screen than the one the display was told: nothing passes column 80
    assert all(len(row) <= 80 for row in wide), [row for row in wide if len(row) > 80]
    rows = screen(output, 80, 24)
    text = "\n".join(rows)
    assert rows[0].startswith("stopping: waiting up to 120 s") and "press Ctrl-C again" in rows[1]  # above it
    bar_rows = [row for row in rows if row.startswith("likes ")]
    assert len(bar_rows) == 1 and "6/10" in bar_rows[0] and "60%" in bar_rows[0]  # redrawn in place
    assert "1.0/s ETA 4s" in bar_rows[0]  # 3 answered (1 of them free) in 2 s; 4 left
    assert "this run: done 3 · failed 1 · cached 1 · in flight 2 · retries 3" in text
    assert "tokens 5 + 7 · ~$0.00013 at list price" in text
    assert "gpt-4o-mini" in text and "my-llama-3.1-8b-instruct" in text and "in flight" in text
    assert "rate limited: waiting 4 s" in text and "paused: server unreachable, next probe in 8 s" in text


def test_the_live_display_follows_a_resized_terminal() -> None:
    master, slave, stream = pty_stream(80)
    bar = BarProgress(stream)
    bar.start(models_view(label="a-job-with-a-rather-long-name", troubles=["rate limited: waiting 4 s"]))
    bar.render()
    before = drawn(master)
    set_size(slave, 40, 24)  # the window shrinks: the next drawing fits the new width
    bar.render()
    bar.render(final=True)
    stream.flush()
    after = drawn(master)
    os.close(master)
    os.close(slave)
    assert max(len(row) for row in screen(before, 160, 60)) > 40
    rows = screen(before + after, 160, 60)  # rich erased the old drawing's rows before drawing anew
    assert all(len(row) <= 40 for row in rows), [row for row in rows if len(row) > 40]
    assert any("rate limited" in row for row in rows) and any("tokens" in row for row in rows)


def test_a_countdown_is_noted_above_the_display_once() -> None:
    now = [0.0]
    stream = Tty()
    bar = BarProgress(stream, clock=lambda: now[0], size=lambda: (80, 24))
    countdowns = ["a: rate limited: waiting 3 s", "b: rate limited: waiting 3 s", "a: rate limited: waiting 2 s",
                  "b: rate limited: waiting 2 s", "stopping: now"]
    for second, text in enumerate(countdowns):
        now[0] = float(second)
        bar.note(text)
    now[0] = 20.0
    bar.note("a: rate limited: waiting 3 s")  # a pause long after the last: said again
    assert stream.getvalue().splitlines() == [
        "a: rate limited: waiting 3 s", "b: rate limited: waiting 3 s", "stopping: now", "a: rate limited: waiting 3 s"]
    assert len(bar.notes) == 6  # every note is kept


class Gone(Tty):
    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


@pytest.mark.parametrize("error", [BrokenPipeError(32, "Broken pipe"), OSError(5, "Input/output error")])
def test_a_closed_terminal_silences_the_display_and_nothing_else(error: OSError) -> None:
    bar = BarProgress(Gone(error), size=lambda: (80, 24))
    bar.start(View())  # rich's own answer to a closed pipe (exit the process) is replaced: no SystemExit
    bar.render()
    bar.note("x")
    bar.render(final=True)
    assert bar.broken


def test_cost_is_shown_only_when_some_model_is_priced() -> None:
    progress = Progress()
    progress.start(View(price=None))
    assert "list price" not in progress.line()
    progress.start(View(price=1.75))
    assert "tokens 5+7, ~$1.75 at list price" in progress.line()


def test_health_and_retries_are_part_of_the_line() -> None:
    progress = Progress()
    progress.start(View(t=Tally(done=1, requests=4, retries=3), troubles=["rate limited: waiting 4 s"]))
    assert progress.line().endswith(", 3 retries | rate limited: waiting 4 s")


def test_log_lines_are_periodic_from_the_first_render_whatever_the_clock() -> None:
    now = [0.0]  # a machine that booted a moment ago: the monotonic clock is near zero
    stream = io.StringIO()
    log = LogProgress(stream, interval=30, clock=lambda: now[0])
    log.start(View())
    log.render()  # the first line comes at once
    now[0] = 29.9
    log.render()  # within the interval: nothing new
    now[0] = 30.0
    log.render()
    log.note("rate limited: waiting 4 s")  # a change of health is a line of its own, whenever it comes
    now[0] = 31.0
    log.render(final=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[2].endswith("rate limited: waiting 4 s")
    assert all("likes: 5/10 done" in line for line in lines[:2] + lines[3:])


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_stream_silences_progress_and_nothing_else() -> None:
    log = LogProgress(Broken())
    log.start(View())
    log.render()
    log.note("x")
    log.render(final=True)  # no exception: the run goes on
    assert log.broken


def test_auto_progress_picks_by_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert type(auto_progress(False, Tty())) is BarProgress
    assert type(auto_progress(False, io.StringIO())) is LogProgress
    assert type(auto_progress(True, Tty())) is Progress
    monkeypatch.setenv("TERM", "dumb")  # a terminal that cannot redraw in place (Emacs' shell): plain lines
    assert type(auto_progress(False, Tty())) is LogProgress


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (None, 0.4, 42, 310, 3 * 3600 + 300, 2 * 86400 + 4 * 3600 + 59)] == [
        "-", "0s", "42s", "5m10s", "3h05m", "2d04h"]


# --- a real run on an 80-column terminal ------------------------------------------------------------


def test_a_run_on_an_80_column_terminal_never_draws_a_wider_line(fake: FakeServer, tmp_path: Path) -> None:
    """`python -m batch_prompt run` on a pseudo-terminal 80 columns wide, against the fake server (slow enough
    for the display to be redrawn, with rate limits to wait out and a prompt it refuses)."""
    fake.configure(latency=0.3, rate_limit_rate=0.1, rate_limit_retry_after=1.5)  # seed 0: request 13 is a 429
    spec = {"name": "a-job-named-at-some-length", "api": "chat", "model": ["gpt-4o-mini", "fake-model"],
            "templates": ["Say {w}"], "keywords": {"w": [f"word {i}" for i in range(14)] + ["FAIL400"]},
            "model_args": {"max_tokens": 4}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run = run_in_pty(["run", "spec.json", "--db", "jobs.db", "--concurrency", "6", "--yes"],
                     env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert run.returncode == 1, run.text  # the FAIL400 prompts failed, as they must
    # the display ends where rich shows the cursor again; the command's own summary comes after it
    display, _, summary = run.output.rpartition(b"\x1b[?25h")
    assert display and b"\r" in display and b"\x1b[1A" in display  # redrawn in place, frame after frame
    wide = screen(display, 160, 200)  # wider than the terminal the run was told: nothing passes column 80
    assert all(len(row) <= 80 for row in wide), [row for row in wide if len(row) > 80]
    assert len([row for row in wide if row.startswith("a-job-named-at-some-length ")]) == 1  # no stale copies
    rows = screen(run.output, 80, 24)
    text = "\n".join(rows)
    (tmp_path / "screen.txt").write_text(text)
    bar = next(row for row in rows if row.startswith("a-job-named-at-some-length "))
    assert "30/30" in bar and "100%" in bar and "/s ETA -" in bar
    assert "done 28 · failed 2 · cached 0 · in flight 0 · retries" in text
    assert re.search(r"tokens \d+ \+ \d+ · ~\$0\.\d+ at list price", text)
    assert re.search(r"gpt-4o-mini +14 +1 +0 +0", text) and re.search(r"fake-model +14 +1 +0 +0", text)
    assert "rate limited" in strip_ansi(display.decode())  # a note above the display when the pool paused
    assert b"done 28 (0 from cache), failed 2" in summary
    # the summary's plain lines are wrapped between words at 80 columns, never cut mid-word by the terminal
    plain = strip_ansi(summary.decode()).replace("\r", "").splitlines()
    assert plain and all(len(line) <= 80 for line in plain), plain
    assert any(line.startswith("  ") for line in plain)  # a wrapped line goes on indented
    assert "python -m batch_prompt retry-failed jobs.db, then resume" in "\n".join(plain)


def test_one_model_is_one_line_and_log_lines_name_every_model() -> None:
    assert Progress().model_lines() == []
    progress = Progress()
    progress.start(View())
    assert progress.model_lines() == []  # one model: the run's line says it all
    stream = io.StringIO()
    log = LogProgress(stream)
    log.start(View(models={name: Tally(done=done) for name, done in
                           (("gpt-4o-mini", 3), ("llama-3.1-8b", 6), ("mistral", 9))}))
    log.render(final=True)
    lines = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert lines[0].startswith("likes: 5/10 done")
    assert [line.split(",")[0] for line in lines[1:]] == ["  gpt-4o-mini: 3 done", "  llama-3.1-8b: 6 done",
                                                         "  mistral: 9 done"]
