"""The live display on a terminal, drawn by rich: what `progress.BarProgress` shows.

rich lays it out to the terminal's width (a line too long for it is wrapped or cut by rich, never drawn
wider), redraws it in place, and prints notes above it. What it shows comes from one `Figures` reading;
nothing is counted here. It draws only when told (no refresh thread: rich's own timer would draw behind
the run's back, where a failing terminal could not be caught), never reads or replaces `sys.stdout` or
`sys.stderr`, and a closed pipe only silences it (rich's default would exit the process).

    likes ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━  412/1,200  34% 0:00:33
    done 400 · failed 2 · cached 10 · in flight 50 · 12.3/s · ETA 1m04s · 3 retries
    tokens 12,345 + 6,789 · ~$0.0123 at list price
      gpt-4o-mini  done 200 · failed 1 · cached 5 · in flight 25 · tokens 6,100 + 3,300
    rate limited: waiting 4 s
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..reports.prices import money
from ..run.ledger import Tally
from ..run.progress import Clock, Figures, Size, duration

MAX_MODEL_LINES = 8  # more models than this: the first are shown, and how many others there are


class _Console(Console):
    """rich's console, but a closed pipe makes it quiet instead of exiting the process."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class _Board(Progress):
    """rich's progress bar with the run's figures as lines below it."""

    below: tuple[RenderableType, ...] = ()  # set before each drawing

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield from self.below


class LiveDisplay:
    """One run's display on a terminal `stream` of `size()` (columns, lines)."""

    def __init__(self, stream: TextIO, size: Size, clock: Clock) -> None:
        self.size = size
        self.console = _Console(file=stream, highlight=False, markup=False, emoji=False, soft_wrap=False)
        self.board = _Board(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[count]}", markup=False, justify="right"),
            TaskProgressColumn(),
            TextColumn("{task.fields[pace]}", markup=False),
            TimeElapsedColumn(),
            console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False,
            get_time=clock, expand=True,
        )
        self.task = self.board.add_task("", total=None, count="", pace="")
        self.started = False

    @property
    def broken(self) -> bool:
        return self.console.quiet

    def _fit(self) -> None:
        columns, lines = self.size()
        self.console.size = (max(columns, 1), max(lines, 1))

    def start(self, figures: Figures) -> None:
        self._update(figures)
        self.board.start()
        self.started = True

    def note(self, text: str) -> None:
        """A line for a person, above the display (wrapped to the width by rich)."""
        self._fit()
        self.console.print(Text(text, style="bold"))

    def show(self, figures: Figures, final: bool = False) -> None:
        """Redraw with `figures`; `final` leaves the last drawing on the screen and the cursor below it."""
        self._update(figures)
        if not self.started:
            return
        if final:
            self.board.stop()
            self.started = False
        else:
            self.board.refresh()

    def _update(self, f: Figures) -> None:
        self._fit()
        self.board.update(
            self.task, description=f.label, total=max(f.total, 1), completed=min(f.finished, f.total) if f.total else 1,
            count=f"{f.finished:,}/{f.total:,}", pace=f"{f.rate:.1f}/s ETA {duration(f.eta)}",
        )
        self.board.below = tuple(below(f, self.console.width))


def below(f: Figures, width: int) -> list[RenderableType]:
    """What is shown below the bar: counts, tokens and cost, a table of models when several, health."""
    t = f.tally
    counts = Text.assemble(*(["this run: "] if f.finished - t.done - t.failed else []), *_counts(t))
    if t.retries:
        counts.append(f" · retries {t.retries:,}", style="yellow")
    spent = Text(f"tokens {t.prompt_tokens:,} + {t.completion_tokens:,}")
    if f.cost is not None:
        spent.append(f" · ~{money(f.cost)} at list price")
    shown: list[RenderableType] = [counts, spent]
    if len(f.models) > 1:
        shown.append(_models(f.models, width))
    shown += [Text(text, style="yellow") for text in f.health]
    return shown


def _models(models: dict[str, Tally], width: int) -> Table:
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="dim", show_edge=False)
    table.add_column("  model", no_wrap=True, overflow="ellipsis", style="cyan", max_width=max(10, width // 3))
    for name in ("done", "failed", "cached", "in flight"):
        table.add_column(name, justify="right")
    table.add_column("tokens", justify="right")
    rows = list(models.items())  # in the order the run met them: rows do not jump between drawings
    for model, t in rows[:MAX_MODEL_LINES]:
        table.add_row(f"  {model}", f"{t.done:,}", Text(f"{t.failed:,}", style="red" if t.failed else ""),
                      f"{t.cached:,}", f"{t.in_flight:,}", f"{t.prompt_tokens:,} + {t.completion_tokens:,}")
    if len(rows) > MAX_MODEL_LINES:
        table.add_row(Text(f"  and {len(rows) - MAX_MODEL_LINES} more", style="dim"))
    return table


def _counts(t: Tally) -> list[Text | str]:
    failed = Text(f"failed {t.failed:,}", style="red" if t.failed else "")
    return [f"done {t.done:,} · ", failed, f" · cached {t.cached:,} · in flight {t.in_flight:,}"]

