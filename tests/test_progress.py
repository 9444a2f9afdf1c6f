"""Progress reporters render what they read of a run; they count nothing themselves."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from batch_prompt.ledger import Tally
from batch_prompt.progress import BarProgress, LogProgress, Progress, auto_progress


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

    def tally(self) -> Tally:
        return self.t

    def per_model(self) -> dict[str, Tally]:
        return {"m": self.t}

    def cost(self) -> float | None:
        return self.price

    def health(self) -> list[str]:
        return self.troubles


def test_bar_redraws_one_line_with_counts() -> None:
    stream = Tty()
    bar = BarProgress(stream, width=10, columns=lambda: 200)
    bar.start(View())
    bar.render()
    bar.render(final=True)
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[#####.....]" in text  # 2 already + 3 finished of 10
    assert "likes: 5/10 done, 1 failed, 1 cached, 2 in flight" in text
    assert "tokens 5+7, ~$0.000125 at list price" in text


def test_bar_never_writes_a_line_wider_than_the_terminal() -> None:
    stream = Tty()
    bar = BarProgress(stream, columns=lambda: 80)
    bar.start(View(troubles=["rate limited: waiting 4 s", "paused: server unreachable, next probe in 8 s"]))
    bar.render()
    bar.note("stopping: waiting up to 120 s for 40 requests in flight (already paid for); press Ctrl-C again")
    bar.render(final=True)
    for line in stream.getvalue().replace("\r", "\n").split("\n"):
        visible = line.replace("\x1b[K", "")
        assert len(visible) < 80, visible


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


def test_auto_progress_picks_by_terminal() -> None:
    assert type(auto_progress(False, Tty())) is BarProgress
    assert type(auto_progress(False, io.StringIO())) is LogProgress
    assert type(auto_progress(True, Tty())) is Progress
