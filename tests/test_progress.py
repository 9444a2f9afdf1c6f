"""Progress reporters render what the runner tells them."""

from __future__ import annotations

import io

from batch_prompt.progress import BarProgress, LogProgress, Progress, auto_progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(progress: Progress) -> None:
    progress.start("likes", total=10, already_done=2)
    progress.sent(3)
    progress.finished("done", cached=False, prompt_tokens=5, completion_tokens=7, cost_usd=0.000125)
    progress.finished("done", cached=True)
    progress.finished("failed")
    progress.answered(1)


def test_bar_redraws_one_line_with_counts() -> None:
    stream = Tty()
    bar = BarProgress(stream, width=10)
    feed(bar)
    bar.render()
    bar.render(final=True)
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[#####.....]" in text  # 2 already + 3 finished of 10
    assert "likes: 4/10 done, 1 failed, 1 cached, 2 in flight" in text
    assert "tokens 5+7, ~$0.000125 at list price" in text


def test_cost_is_shown_only_when_some_model_is_priced() -> None:
    progress = Progress()
    progress.start("j", total=3, already_done=0)
    progress.finished("done", prompt_tokens=10, completion_tokens=10)  # a model without a list price
    assert progress.cost_usd is None and "list price" not in progress.line()
    progress.finished("done", prompt_tokens=10, completion_tokens=10, cost_usd=0.5)
    progress.finished("done", prompt_tokens=10, completion_tokens=10, cost_usd=1.25)
    assert progress.line().endswith("tokens 30+30, ~$1.75 at list price")


def test_log_lines_are_periodic_from_the_first_render_whatever_the_clock() -> None:
    now = [0.0]  # a machine that booted a moment ago: the monotonic clock is near zero
    stream = io.StringIO()
    log = LogProgress(stream, interval=30, clock=lambda: now[0])
    feed(log)
    log.render()  # the first line comes at once
    now[0] = 29.9
    log.render()  # within the interval: nothing new
    now[0] = 30.0
    log.render()
    now[0] = 31.0
    log.render(final=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all("likes: 4/10 done" in line for line in lines)


def test_auto_progress_picks_by_terminal() -> None:
    assert type(auto_progress(False, Tty())) is BarProgress
    assert type(auto_progress(False, io.StringIO())) is LogProgress
    assert type(auto_progress(True, Tty())) is Progress
