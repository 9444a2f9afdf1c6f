"""The reports as a notebook shows them (`_repr_html_`): a heading, a table of the figures, and the notes
under it, the same figures as `text.py`'s lines. Every text that comes from a job, a spec or a server (a
job's name, a model, an error message) is escaped: a name like `<b>` shows as written."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from .prices import money, unknown_price_message
from .text import plural, summary_lines

if TYPE_CHECKING:  # annotations only: the dataclasses import this module for their _repr_html_
    from ..options import RunSummary
    from .estimate import Estimate
    from .status import JobStatus

EXAMPLE = 300  # characters of an error message shown (a table is no place for a whole traceback)
Cell = int | str | None


def status_html(job: JobStatus) -> str:
    where = ", ".join([job.api, job.mode, *(["incomplete create"] if job.state != "ready" else [])])
    head = (f"<strong>{escape(job.job)}</strong> ({escape(where)}): {job.done:,} of "
            f"{plural(job.total, 'prompt')} done")
    columns = ("model", "total", "done", "cached", "pending", "running", "failed", "requests", "prompt tokens",
               "completion tokens", "cost")
    rows: list[list[Cell]] = [
        [m.model, m.total, m.done, m.cached, m.pending, m.running, m.failed, m.requests, m.prompt_tokens,
         m.completion_tokens, _cost(m.cost, m.requests)] for m in job.models
    ]
    if len(job.models) != 1:
        rows.append(["all", job.total, job.done, job.cached, job.pending, job.running, job.failed, job.requests,
                     job.prompt_tokens, job.completion_tokens, _cost(job.cost, job.requests)])
    notes = []
    if job.requests and job.cost is None:
        notes.append(escape(f"cost unknown: {unknown_price_message(job.unpriced)}"))
    if job.usage_doubt:
        notes.append(escape(job.usage_doubt))
    if job.unparsed:
        notes.append(f"{job.unparsed:,} answers of done prompts do not parse (<code>show --unparsed</code> lists them)")
    if job.batches:
        open_batches = [b for b in job.batches if b.state not in ("collected", "returned")]
        notes.append(f"batches: {len(open_batches)} open, {len(job.batches) - len(open_batches)} settled")
        notes += [escape(f"{b.id or '(being submitted)'} {b.status or b.state}: {b.completed + b.failed:,} of "
                         f"{b.requests:,} requests done") for b in open_batches]
    notes += [f"{group.count:,} failed with {escape(group.kind)}, e.g. <code>{_example(group.example)}</code>"
              for group in job.errors]
    return _report(head, columns, rows, notes)


def estimate_html(result: Estimate) -> str:
    head = f"Estimate: {plural(result.prompts, 'prompt')} in {plural(result.requests, 'request')}"
    columns = ("model", "prompts", "requests", "input tokens (estimated)", "most output tokens",
               "most cost (list price)", "most cost (batch)", "cached")
    rows: list[list[Cell]] = [
        [m.model, m.prompts, m.requests, m.input_tokens, m.max_output_tokens, _cost(m.max_cost_live),
         _cost(m.max_cost_batch), m.cached] for m in result.models
    ]
    if len(result.models) != 1:
        rows.append(["all", result.prompts, result.requests, result.input_tokens, result.max_output_tokens,
                     _cost(result.max_cost_live), _cost(result.max_cost_batch), result.cached])
    notes = [escape(unknown_price_message(result.unpriced))] if result.unpriced else []
    if result.cached:
        notes.append(f"{result.cached:,} of {plural(result.prompts, 'prompt')} are already answered in the cache: "
                     "free; <code>cache=False</code> for fresh samples")
    return _report(head, columns, rows, notes)


def summary_html(summary: RunSummary) -> str:
    columns = ("done", "from cache", "failed", "requests sent", "paid for", "prompt tokens", "completion tokens",
               "cost")
    row: list[Cell] = [summary.done, summary.cached, summary.failed, summary.requests, summary.paid,
                       summary.prompt_tokens, summary.completion_tokens, _cost(summary.cost_usd, summary.paid)]
    notes = [escape(line.strip()) for line in summary_lines(summary)[1:]]
    return _report("Run summary", columns, [row], notes)


def _report(head: str, columns: Sequence[str], rows: Sequence[Sequence[Cell]], notes: Sequence[str]) -> str:
    """`head` and `notes` are HTML already; the cells are escaped here."""
    header = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    listed = "<ul>" + "".join(f"<li>{note}</li>" for note in notes) + "</ul>" if notes else ""
    return (f'<div class="batch-prompt-report"><p>{head}</p><table><thead><tr>{header}</tr></thead>'
            f"<tbody>{body}</tbody></table>{listed}</div>")


def _cell(value: Cell) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else escape(value)


def _cost(cost: float | None, paid: int = 1) -> str:
    """USD as `money` prints it; "unknown" when there is something to price and no price; blank when none."""
    if cost is not None:
        return money(cost)
    return "unknown" if paid else ""


def _example(text: str) -> str:
    return escape(text if len(text) <= EXAMPLE else text[: EXAMPLE - 3] + "...")
