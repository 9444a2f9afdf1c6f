"""Progress reporters: the runner shows its state through a reporter, which decides what (if anything) to show.

A reporter reads a `RunView` (the ledger's tallies, what holds the run back) when `render()` is called on
a timer; it counts nothing itself. `note(text)` is a message for a person (stopping, a change of health).
`BarProgress` redraws one line on a terminal, never wider than it; `LogProgress` prints plain lines, at
the start, every `interval` seconds, at every note and at the end (a log, `nohup`, a notebook);
`Progress` itself shows nothing (`--quiet`). Output goes to stderr; nothing here ever sees a key. Drawing
never stops a run: a reporter whose stream fails (a closed pipe) goes quiet.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from .ledger import Tally

Clock = Callable[[], float]


class RunView(Protocol):
    """What a reporter may read of a run."""

    label: str  # the job (or "3 jobs")
    total: int  # prompts of the jobs run
    already: int  # finished (done or failed) before this run started

    def tally(self) -> Tally: ...
    def per_model(self) -> dict[str, Tally]: ...
    def cost(self) -> float | None: ...
    def health(self) -> list[str]: ...


class Progress:
    """Silent reporter; the base of the others."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.view: RunView | None = None
        self.started = clock()
        self.notes: list[str] = []

    def start(self, view: RunView) -> None:
        self.view, self.started = view, self.clock()

    def note(self, text: str) -> None:
        """A message for a person (kept, and shown by the reporters that show things)."""
        self.notes.append(text)

    def render(self, final: bool = False) -> None:
        """Show the current state (called on a timer, and once with final=True)."""

    def line(self) -> str:
        view = self.view
        if view is None:
            return ""
        t = view.tally()
        elapsed = max(self.clock() - self.started, 1e-9)
        finished = t.done + t.failed
        rate = (finished - t.cached - t.shared) / elapsed
        remaining = view.total - view.already - finished
        eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining > 0 else "-"
        text = (
            f"{view.label}: {view.already + finished}/{view.total} done, {t.failed} failed, {t.cached} cached, "
            f"{t.in_flight} in flight, {rate:.1f}/s, ETA {eta}, tokens {t.prompt_tokens}+{t.completion_tokens}"
            + usd(view.cost())
        )
        if t.retries:
            text += f", {t.retries} retries"
        health = view.health()
        return text + (" | " + "; ".join(health) if health else "")


class _Shown(Progress):
    """A reporter that writes to a stream, and goes quiet when the stream fails."""

    def __init__(self, stream: TextIO | None = None, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream or sys.stderr
        self.broken = False

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or file: progress stops, the run does not
            self.broken = True


class BarProgress(_Shown):
    """One line redrawn in place on a terminal, cut to the terminal's width."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, clock: Clock = time.monotonic,
                 columns: Callable[[], int] | None = None) -> None:
        super().__init__(stream, clock)
        self.width = width
        self.columns = columns or (lambda: shutil.get_terminal_size((80, 24)).columns)

    def note(self, text: str) -> None:
        super().note(text)
        self._write("\r\x1b[K" + text[: max(10, self.columns() - 1)] + "\n")

    def render(self, final: bool = False) -> None:
        view = self.view
        if view is None:
            return
        t = view.tally()
        share = (view.already + t.done + t.failed) / view.total if view.total else 1.0
        filled = int(min(1.0, share) * self.width)
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.line()}"
        self._write("\r" + text[: max(10, self.columns() - 1)] + "\x1b[K" + ("\n" if final else ""))


class LogProgress(_Shown):
    """Plain lines for logs and `nohup`: at the start, every `interval` seconds, at each note, at the end."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0, clock: Clock = time.monotonic) -> None:
        super().__init__(stream, clock)
        self.interval = interval
        self.last: float | None = None  # the first render always prints, however young the clock is

    def note(self, text: str) -> None:
        super().note(text)
        self._write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def render(self, final: bool = False) -> None:
        now = self.clock()
        if final or self.last is None or now - self.last >= self.interval:
            self.last = now
            self._write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.line()}\n")


def usd(cost: float | None) -> str:
    """", ~$1.23 at list price" (more digits below a cent), or "" when nothing was priced."""
    if cost is None:
        return ""
    return f", ~${cost:.2f} at list price" if cost >= 0.01 else f", ~${cost:.6f} at list price"


def auto_progress(quiet: bool, stream: TextIO | None = None) -> Progress:
    """Silent when quiet; a bar on a terminal; plain lines otherwise."""
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    if stream.isatty():
        return BarProgress(stream)
    return LogProgress(stream)
