"""Progress reporters: the runner sends events, a reporter decides what (if anything) to show.

`Progress` counts; `render()` is called on a timer by the runner. `BarProgress` redraws one line on a
terminal; `LogProgress` prints a plain line every `interval` seconds (an overnight run under nohup);
`Progress` itself shows nothing (`--quiet`). Output goes to stderr; nothing here ever sees a key.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Clock = Callable[[], float]


class Progress:
    """Silent reporter; the base of the others. Counts are public for tests and summaries."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.total = self.done = self.failed = self.cached = self.in_flight = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.cost_usd: float | None = None  # list-price cost of the tokens paid for; None: no model priced
        self.started = clock()
        self.job = ""

    def start(self, job: str, total: int, already_done: int) -> None:
        self.job, self.total, self.started = job, total, self.clock()
        self.done = self.failed = self.cached = self.in_flight = 0
        self.already = already_done

    def sent(self, prompts: int) -> None:
        self.in_flight += prompts

    def answered(self, prompts: int) -> None:
        self.in_flight -= prompts

    def finished(
        self,
        status: str,
        cached: bool = False,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> None:
        if cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost_usd
        if status == "done":
            self.done += 1
            self.cached += int(cached)
        else:
            self.failed += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def render(self, final: bool = False) -> None:
        """Show the current state (called on a timer, and once with final=True)."""

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        finished = self.done + self.failed
        rate = (finished - self.cached) / elapsed
        remaining = self.total - self.already - finished
        eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining > 0 else "-"
        return (
            f"{self.job}: {self.already + self.done}/{self.total} done, {self.failed} failed, "
            f"{self.cached} cached, {self.in_flight} in flight, {rate:.1f}/s, ETA {eta}, "
            f"tokens {self.prompt_tokens}+{self.completion_tokens}" + usd(self.cost_usd)
        )


class BarProgress(Progress):
    """A one-line bar redrawn in place on a terminal."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream or sys.stderr
        self.width = width

    def render(self, final: bool = False) -> None:
        share = (self.already + self.done + self.failed) / self.total if self.total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.line()}\x1b[K" + ("\n" if final else ""))
        self.stream.flush()


class LogProgress(Progress):
    """Plain periodic lines, for logs and `nohup`."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream or sys.stderr
        self.interval = interval
        self.last: float | None = None  # the first render always prints, however young the clock is

    def render(self, final: bool = False) -> None:
        now = self.clock()
        if final or self.last is None or now - self.last >= self.interval:
            self.last = now
            self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.line()}\n")
            self.stream.flush()


def usd(cost: float | None) -> str:
    """", ~$1.23 at list price" (more digits below a cent), or "" when nothing was priced."""
    if cost is None:
        return ""
    return f", ~${cost:.2f} at list price" if cost >= 0.01 else f", ~${cost:.6f} at list price"


def auto_progress(quiet: bool, stream: TextIO | None = None) -> Progress:
    """Silent when quiet; a bar on a terminal; periodic lines otherwise."""
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    if stream.isatty():
        return BarProgress(stream)
    return LogProgress(stream)
