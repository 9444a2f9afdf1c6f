"""The command line's choice of reporter (`auto_progress`), and the live display on a terminal
(`BarProgress`, drawn by rich in `display.py`, imported only when a terminal shows it)."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from ..run.progress import Clock, LogProgress, Progress, RunView, Shown, Size

if TYPE_CHECKING:  # rich loads only when a terminal shows the display
    from .display import LiveDisplay


class BarProgress(Shown):
    """A live display on a terminal (rich's, see `display.py`): a bar, then the counts, rate, ETA, tokens,
    cost, retries, a line per model when there are several, and the run's health, redrawn in place at
    every `render`; notes print above it. Its size is read again at every redraw (`size`, by default the
    stream's own terminal), so it follows a resized window."""

    REPEAT_AFTER = 10.0  # seconds before a note that differs from the last only in its numbers is printed again

    def __init__(self, stream: TextIO | None = None, clock: Clock = time.monotonic, size: Size | None = None) -> None:
        super().__init__(stream, clock)
        self.size = size or self._terminal_size
        self.display: LiveDisplay | None = None
        self.said: dict[str, float] = {}  # a note's shape (its numbers blanked) -> when it was last printed

    def _terminal_size(self) -> tuple[int, int]:
        try:
            columns, lines = os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError, AttributeError):  # not a file descriptor: the process's terminal
            columns, lines = shutil.get_terminal_size((80, 24))
        return columns or 80, lines or 24

    def start(self, view: RunView) -> None:
        super().start(view)
        from .display import LiveDisplay

        self.display = LiveDisplay(self.stream, self.size, self.clock)
        figures = self.figures()
        if figures is not None:
            self._draw(lambda display: display.start(figures))

    def note(self, text: str) -> None:
        """Printed above the display; a countdown ("waiting 3 s", "waiting 2 s", ...) once in
        `REPEAT_AFTER` seconds: the display itself shows the run's health as it changes."""
        super().note(text)
        shape, now = re.sub(r"\d+", "#", text), self.clock()
        if now - self.said.get(shape, -math.inf) < self.REPEAT_AFTER:
            return
        self.said = {seen: at for seen, at in self.said.items() if now - at < self.REPEAT_AFTER}
        self.said[shape] = now
        if self.display is None:
            self._write(text + "\n")
        else:
            self._draw(lambda display: display.note(text))

    def render(self, final: bool = False) -> None:
        figures = self.figures()
        if figures is not None:
            self._draw(lambda display: display.show(figures, final))

    def _draw(self, step: Callable[[LiveDisplay], None]) -> None:
        display = self.display
        if self.broken or display is None:
            return
        try:
            step(display)
        except (OSError, ValueError):  # a closed terminal or pipe: progress stops, the run does not
            self.broken = True
        if display.broken:
            self.broken = True


def auto_progress(quiet: bool, stream: TextIO | None = None) -> Progress:
    """Silent when quiet; the live display on a terminal that can redraw; plain lines otherwise."""
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        return BarProgress(stream)
    return LogProgress(stream)
