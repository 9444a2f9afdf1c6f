"""Progress reporters: the runner shows its state through a reporter, which decides what (if anything) to show.

A reporter reads a `RunView` (the ledger's tallies, what holds the run back) when `render()` is called on
a timer; it counts nothing itself. `note(text)` is a message for a person (stopping, a change of health).
When the run has several models, each gets a line of its own below the run's (done, failed, cached, in
flight, rate, tokens). `BarProgress` redraws that block in place on a terminal: every line cut to the
terminal's width, at most as many lines as fit its height (the rest counted in one line), and a block
left behind, not overwritten, when the width changes (a narrower terminal may have wrapped the old one);
`LogProgress` prints plain lines, at the start, every `interval` seconds, at every note and at the end (a
log, `nohup`, a notebook); `Progress` itself shows nothing (`--quiet`). Output goes to stderr; nothing
here ever sees a key. Drawing never stops a run: a reporter whose stream fails (a closed pipe) goes quiet.
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

    def _rate(self, t: Tally) -> float:
        """Prompts finished per second by calls (not from the cache, not shared) since the start."""
        return (t.done + t.failed - t.cached - t.shared) / max(self.clock() - self.started, 1e-9)

    def model_lines(self) -> list[str]:
        """One line per model when the run has several (none when it has one: the run's line says it all)."""
        models = self.view.per_model() if self.view is not None else {}
        if len(models) < 2:
            return []
        return [
            f"  {model}: {t.done} done, {t.failed} failed, {t.cached} cached, {t.in_flight} in flight, "
            f"{self._rate(t):.1f}/s, tokens {t.prompt_tokens}+{t.completion_tokens}"
            for model, t in models.items()
        ]

    def line(self) -> str:
        view = self.view
        if view is None:
            return ""
        t = view.tally()
        finished = t.done + t.failed
        rate = self._rate(t)
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
    """A block redrawn in place on a terminal: the run's bar, then a line per model when there are several.

    The cursor rests at the end of the block's last line; `drawn` lines of it are above. A redraw goes back
    up to its first line (`ESC [ n A`), writes every line cut to the width (`ESC [ K` clears what an older,
    longer line left), and clears below (`ESC [ J`: a block that shrank).
    """

    def __init__(self, stream: TextIO | None = None, width: int = 24, clock: Clock = time.monotonic,
                 columns: Callable[[], int] | None = None, rows: Callable[[], int] | None = None) -> None:
        super().__init__(stream, clock)
        self.width = width
        self.columns = columns or (lambda: shutil.get_terminal_size((80, 24)).columns)
        self.rows = rows or (lambda: shutil.get_terminal_size((80, 24)).lines)
        self.drawn = 0  # lines of the block above the cursor's
        self.drawn_width = 0  # the width it was drawn for (0: no block under the cursor)

    def _cut(self, text: str) -> str:
        return text[: max(10, self.columns() - 1)]

    def _home(self) -> str:
        """Back to the start of the block's first line."""
        return "\r" + (f"\x1b[{self.drawn}A" if self.drawn else "")

    def note(self, text: str) -> None:
        super().note(text)
        self._write(self._home() + "\x1b[J" + self._cut(text) + "\n")  # the block is drawn again below it
        self.drawn = self.drawn_width = 0

    def render(self, final: bool = False) -> None:
        view = self.view
        if view is None:
            return
        t = view.tally()
        share = (view.already + t.done + t.failed) / view.total if view.total else 1.0
        filled = int(min(1.0, share) * self.width)
        lines = [f"[{'#' * filled}{'.' * (self.width - filled)}] {self.line()}", *self.model_lines()]
        room = max(1, self.rows() - 1)  # a block taller than the screen cannot be gone back up over
        if len(lines) > room:
            lines = [*lines[: room - 1], f"  ... and {len(lines) - room + 1} more models"] if room > 1 else lines[:1]
        columns = self.columns()
        start = self._home()
        if self.drawn_width and columns != self.drawn_width:  # the old block may have wrapped: leave it, below
            start = "\n"
        text = start + "\n".join(self._cut(line) + "\x1b[K" for line in lines) + "\x1b[J"
        self._write(text + ("\n" if final else ""))
        self.drawn, self.drawn_width = (0, 0) if final else (len(lines) - 1, columns)


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
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._write("".join(f"{stamp} {line}\n" for line in [self.line(), *self.model_lines()]))


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
