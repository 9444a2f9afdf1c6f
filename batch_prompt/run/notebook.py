"""The progress of a run in a Jupyter notebook: one display in the cell's output, updated in place.

A kernel's stderr is no terminal, so the command line's choice of reporter would print a plain line at
every note and every 30 s: an hour's run, hundreds of lines in a cell. In a kernel (`in_notebook`), a
run given no reporter shows `NotebookProgress` instead: a bar, the run's line, a line per model and its
last few notes, as one display (`display(..., display_id=...)`, then updates of it), redrawn at most
every `interval` seconds (the runner renders once a second, and once at the end).
IPython is never imported to find out: a process that has not loaded it is no kernel.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Callable
from html import escape

from .progress import Clock, Progress, RunView

NOTES = 3  # the last notes shown under the run's line (a note like one shown replaces it)
# shows a MIME bundle as the display `display_id`; `update`: in place of what it showed before
Publish = Callable[[dict[str, str], str, bool], None]


def in_notebook() -> bool:
    """True inside a Jupyter kernel: IPython's ZMQ shell (or a subclass of it, as Colab's) is running."""
    if "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return shell is not None and any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)


def ipython_publish(bundle: dict[str, str], display_id: str, update: bool) -> None:
    from IPython.display import display  # a kernel has loaded it already

    display(bundle, raw=True, display_id=display_id, update=update)


class NotebookProgress(Progress):
    """One display, updated in place: text (`text/plain`) and HTML with a bar (`text/html`)."""

    def __init__(self, publish: Publish = ipython_publish, clock: Clock = time.monotonic,
                 interval: float = 0.25) -> None:
        super().__init__(clock)
        self.publish, self.interval = publish, interval
        self.display_id = f"batch-prompt-{uuid.uuid4().hex}"
        self.shown = False
        self.last: float | None = None
        self.recent: list[str] = []  # the last NOTES notes, oldest first
        self.broken = False

    def start(self, view: RunView) -> None:
        super().start(view)
        self._draw(force=True)

    def note(self, text: str) -> None:
        """Kept, and shown at the next redraw (a countdown note replaces its own last one)."""
        super().note(text)
        shape = _shape(text)
        self.recent = [*(n for n in self.recent if _shape(n) != shape), text][-NOTES:]

    def render(self, final: bool = False) -> None:
        self._draw(force=final)

    def bundle(self) -> dict[str, str]:
        """What the display shows now, as text and as HTML."""
        text = "\n".join([self.line(), *self.model_lines(), *self.recent])
        f = self.figures()
        bar = (f'<progress value="{f.finished}" max="{max(f.total, 1)}" style="width: 30em"></progress> '
               f"{f.finished:,} / {f.total:,}") if f is not None else ""
        html = (f'<div class="batch-prompt-progress">{bar}'
                f'<pre style="margin: 0.2em 0">{escape(text)}</pre></div>')
        return {"text/plain": text, "text/html": html}

    def _draw(self, force: bool) -> None:
        now = self.clock()
        if self.broken or (not force and self.last is not None and now - self.last < self.interval):
            return
        self.last = now
        try:
            self.publish(self.bundle(), self.display_id, self.shown)
        except (OSError, ValueError):  # the kernel's channel is gone: progress stops, the run does not
            self.broken = True
        self.shown = True


def _shape(text: str) -> str:
    return re.sub(r"\d+", "#", text)
