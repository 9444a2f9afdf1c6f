"""Progress reporters render what they read of a run; they count nothing themselves."""

from __future__ import annotations

import io
import re
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
    models: dict[str, Tally] | None = None

    def tally(self) -> Tally:
        return self.t

    def per_model(self) -> dict[str, Tally]:
        return self.models if self.models is not None else {"m": self.t}

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
        visible = re.sub(r"\x1b\[\d*[A-Za-z]", "", line)
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


class Terminal:
    """A terminal as far as the bar uses one: printable characters, CR, LF, and ESC [ n A (up, never above
    the screen's top), ESC [ K (clear to the end of the line), ESC [ J (clear to the end of the screen).
    A character written in the last column would wrap: the test fails instead."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns, self.rows = columns, rows
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, text: str) -> None:
        for token in re.findall(r"\x1b\[(\d*)([AKJ])|(\r)|(\n)|([^\x1b\r\n])", text):
            count, code, cr, lf, char = token
            top = max(0, len(self.lines) - self.rows)
            line = self.lines[self.row]
            if code == "A":
                self.row = max(top, self.row - int(count or 1))
            elif code == "K":
                del line[self.col :]
            elif code == "J":
                del line[self.col :]
                del self.lines[self.row + 1 :]
            elif cr:
                self.col = 0
            elif lf:
                self.row += 1
                self.col = 0
                if self.row == len(self.lines):
                    self.lines.append([])
            else:
                assert self.col < self.columns - 1, f"wider than the terminal: {''.join(line)}{char}"
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = char
                self.col += 1

    def screen(self) -> list[str]:
        return ["".join(line) for line in self.lines]


class Screen(io.StringIO):
    def __init__(self, terminal: Terminal) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.terminal.feed(text)
        return len(text)


def models(done: int) -> dict[str, Tally]:
    return {name: Tally(done=done * (i + 1), in_flight=i, prompt_tokens=10 * done, completion_tokens=done)
            for i, name in enumerate(("gpt-4o-mini", "llama-3.1-8b", "mistral"))}


def test_a_line_per_model_is_redrawn_in_place_and_never_wider_than_the_terminal() -> None:
    terminal = Terminal(columns=100, rows=24)
    now = [0.0]
    bar = BarProgress(Screen(terminal), width=10, clock=lambda: now[0], columns=lambda: terminal.columns,
                      rows=lambda: terminal.rows)
    view = View(total=100, already=0, t=Tally(done=6, in_flight=3), models=models(1))
    bar.start(view)
    now[0] = 1.0
    bar.render()
    view.t, view.models = Tally(done=12, in_flight=3), models(2)
    now[0] = 2.0
    bar.render()
    assert terminal.screen() == [
        "[#.........] likes: 12/100 done, 0 failed, 0 cached, 3 in flight, 6.0/s, ETA 15s, tokens 0+0, ~$0.0",  # 99
        "  gpt-4o-mini: 2 done, 0 failed, 0 cached, 0 in flight, 1.0/s, tokens 20+2",
        "  llama-3.1-8b: 4 done, 0 failed, 0 cached, 1 in flight, 2.0/s, tokens 20+2",
        "  mistral: 6 done, 0 failed, 0 cached, 2 in flight, 3.0/s, tokens 20+2",
    ]
    bar.note("rate limited: waiting 4 s")  # above the block, which is drawn again below it
    bar.render()
    assert terminal.screen()[0] == "rate limited: waiting 4 s" and len(terminal.screen()) == 5
    assert terminal.screen()[1:] == [
        "[#.........] likes: 12/100 done, 0 failed, 0 cached, 3 in flight, 6.0/s, ETA 15s, tokens 0+0, ~$0.0",  # 99
        "  gpt-4o-mini: 2 done, 0 failed, 0 cached, 0 in flight, 1.0/s, tokens 20+2",
        "  llama-3.1-8b: 4 done, 0 failed, 0 cached, 1 in flight, 2.0/s, tokens 20+2",
        "  mistral: 6 done, 0 failed, 0 cached, 2 in flight, 3.0/s, tokens 20+2",
    ]
    terminal.columns = 40  # narrower: the old block is left as it was, the new one drawn below, cut to fit
    bar.render(final=True)
    screen = terminal.screen()
    assert screen[5:] == ["[#.........] likes: 12/100 done, 0 fail", "  gpt-4o-mini: 2 done, 0 failed, 0 cach",
                          "  llama-3.1-8b: 4 done, 0 failed, 0 cac", "  mistral: 6 done, 0 failed, 0 cached, ", ""]
    assert terminal.row == len(screen) - 1 and terminal.col == 0  # the final block stays; the cursor below it


def test_a_block_taller_than_the_terminal_counts_the_models_it_cannot_show() -> None:
    terminal = Terminal(columns=120, rows=4)
    bar = BarProgress(Screen(terminal), columns=lambda: terminal.columns, rows=lambda: terminal.rows)
    bar.start(View(models=models(1)))
    for _ in range(3):
        bar.render()
    assert [line.split(":")[0] for line in terminal.screen()] == ["[############............] likes", "  gpt-4o-mini",
                                                                 "  ... and 2 more models"]
    terminal.rows = 24
    bar.render()
    assert [line.split(":")[0] for line in terminal.screen()] == [
        "[############............] likes", "  gpt-4o-mini", "  llama-3.1-8b", "  mistral"]


def test_one_model_is_one_line_and_log_lines_name_every_model() -> None:
    assert Progress().model_lines() == []
    progress = Progress()
    progress.start(View())
    assert progress.model_lines() == []  # one model: the run's line says it all
    stream = io.StringIO()
    log = LogProgress(stream)
    log.start(View(models=models(3)))
    log.render(final=True)
    lines = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert lines[0].startswith("likes: 5/10 done")
    assert [line.split(",")[0] for line in lines[1:]] == ["  gpt-4o-mini: 3 done", "  llama-3.1-8b: 6 done",
                                                         "  mistral: 9 done"]
