"""Progress reporters: the runner shows its state through a reporter, which decides what (if anything) to show.

A reporter reads a `RunView` (the ledger's tallies, what holds the run back) when `render()` is called on
a timer; it counts nothing itself: `figures()` is one reading of the view, the same for every reporter.
`note(text)` is a message for a person (stopping, a change of health). `cli.progress.BarProgress` is a live
display on a terminal, drawn by rich, never wider than the terminal; `LogProgress` prints plain
lines, at the start, every `interval` seconds, at every note and at the end (a log, `nohup`);
`notebook.NotebookProgress` is one display updated in place in a Jupyter kernel; `Progress` itself
shows nothing (`--quiet`). Output goes to stderr (or the kernel's display); nothing here ever sees a
key. Drawing never stops a run: a reporter whose stream fails (a closed pipe, a closed terminal) goes
quiet.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from ..reports.prices import usd
from .ledger import Tally

Clock = Callable[[], float]
Size = Callable[[], tuple[int, int]]  # the terminal's (columns, lines)


class RunView(Protocol):
    """What a reporter may read of a run."""

    label: str  # the job (or "3 jobs")
    total: int  # prompts of the jobs run
    already: int  # finished (done or failed) before this run started
    todo: dict[str, int]  # per model: prompts unfinished when this run started (empty: not known)

    def tally(self) -> Tally: ...
    def per_model(self) -> dict[str, Tally]: ...
    def cost(self) -> float | None: ...
    def health(self) -> list[str]: ...


@dataclass(frozen=True)
class Figures:
    """One reading of a run, as every reporter shows it."""

    label: str
    total: int
    finished: int  # done or failed, before this run and in it
    tally: Tally  # this run's
    rate: float  # prompts answered per second in this run, not counting free ones (cache, shared)
    eta: float | None  # seconds until every prompt is finished at that rate; None: unknown or nothing left
    cost: float | None  # USD at list price of what this run paid for; None: nothing priced
    health: list[str]  # what holds the run back, if anything
    models: dict[str, Tally]  # this run's, per model


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

    def figures(self) -> Figures | None:
        view = self.view
        if view is None:
            return None
        t = view.tally()
        elapsed = max(self.clock() - self.started, 1e-9)
        finished = t.done + t.failed
        rate = (finished - t.cached - t.shared) / elapsed
        remaining = view.total - view.already - finished
        eta = remaining / rate if rate > 0 and remaining > 0 else None
        models = view.per_model()
        if len(view.todo) > 1 and remaining > 0:  # the models end apart: the last to finish, at its own rate
            eta = self._last_to_finish(view.todo, models, elapsed)
        return Figures(view.label, view.total, view.already + finished, t, rate, eta, view.cost(), view.health(),
                       models)

    @staticmethod
    def _last_to_finish(todo: dict[str, int], models: dict[str, Tally], elapsed: float) -> float | None:
        """Seconds until the slowest model has finished its prompts at its own rate; None when a model with
        prompts left has answered none yet (its pace unknown)."""
        longest = 0.0
        for model, count in todo.items():
            t = models.get(model, Tally())
            left = count - t.done - t.failed
            if left <= 0:
                continue
            rate = (t.done + t.failed - t.cached - t.shared) / elapsed
            if rate <= 0:
                return None
            longest = max(longest, left / rate)
        return longest or None

    def line(self) -> str:
        """The state in one line (no width limit): what `LogProgress` prints."""
        f = self.figures()
        if f is None:
            return ""
        t = f.tally
        text = (
            f"{f.label}: {f.finished}/{f.total} done, {t.failed} failed, {t.cached} cached, "
            f"{t.in_flight} in flight, {f.rate:.1f}/s, ETA {duration(f.eta)}, tokens {t.prompt_tokens}+"
            f"{t.completion_tokens}" + usd(f.cost)
        )
        if t.retries:
            text += f", {t.retries} retries"
        return text + (" | " + "; ".join(f.health) if f.health else "")

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


class Shown(Progress):
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


class LogProgress(Shown):
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


class HealthNotes:
    """Which changes of a run's health are worth a note for a person (a log must not get a countdown line a
    second through an hour's outage): a condition when it begins, unless it was seen within `repeat`
    seconds (one that comes and goes is said once); and, once nothing holds the run back any more, one line
    saying which of the conditions said are over. A condition is a health text with its numbers, and
    whatever follows its first comma, left out ("paused: server unreachable, next probe in 8 s" and
    "..., probing" are one)."""

    def __init__(self, repeat: float = 600.0, clock: Clock = time.monotonic) -> None:
        self.repeat, self.clock = repeat, clock
        self.current: set[str] = set()  # conditions seen at the last update
        self.seen: dict[str, float] = {}  # condition -> when it was last seen
        self.said: dict[str, str] = {}  # conditions whose start was said and whose end was not -> their text

    def update(self, texts: list[str]) -> list[str]:
        """The notes to make now that the run's health reads `texts`."""
        now, notes = self.clock(), []
        conditions = {re.sub(r"\d+", "#", text.split(",", 1)[0]): text for text in texts}
        for condition, text in conditions.items():
            if condition not in self.current and now - self.seen.get(condition, -math.inf) >= self.repeat:
                notes.append(text)
                self.said[condition] = text.split(",", 1)[0]
            self.seen[condition] = now
        if not conditions and self.said:
            notes.append(f"nothing holds the run back now (it was {'; '.join(self.said.values())})")
            self.said.clear()
        self.current = set(conditions)
        return notes


def duration(seconds: float | None) -> str:
    """"-" (unknown), "42s", "5m10s", "3h05m", "2d04h": two units at most, for an ETA."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
