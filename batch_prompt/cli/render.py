"""What the command line shows, as lines of text: a job's status, an estimate, a prompt. Nothing here
prints (the CLI does); every line fits `WIDTH` columns where it could run long."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..reports.prices import money as money
from ..reports.prices import unknown_price_message
from ..reports.status import GroupStatus, JobStatus, ModelStatus, PromptView
from ..results.table import messages_text

if TYPE_CHECKING:
    from ..reports.estimate import Estimate


def status_lines(job: JobStatus) -> list[str]:
    where = ", ".join([job.api, job.mode, *(["incomplete create"] if job.state != "ready" else [])])
    lines = [f"{job.job} ({where}): {job.done:,} of {plural(job.total, 'prompt')} done"
             + (f" ({job.cached:,} from the cache)" if job.cached else "") + _unfinished(job)]
    if job.requests:
        paid = f"  {plural(job.requests, 'request')} paid for: {job.prompt_tokens:,} prompt + " \
               f"{job.completion_tokens:,} completion tokens"
        if job.cost is None:
            lines += [paid, short(f"  cost unknown: {unknown_price_message(job.unpriced)}")]
        else:
            lines.append(f"{paid}: ~{money(job.cost)} at list price")
    else:
        lines.append("  nothing paid for yet")
    if job.usage_doubt:
        lines.append(f"  {job.usage_doubt}")
    if len(job.models) > 1:
        several = len({m.endpoint for m in job.models}) > 1  # then each model says where it is served
        for m in job.models:
            cost = "no known price" if m.cost is None else f"~{money(m.cost)}"
            tokens = f"; {m.prompt_tokens:,} + {m.completion_tokens:,} tokens: {cost}"
            where = f" (at {m.endpoint or 'the default endpoint'})" if several else ""
            lines.append(short(f"  {m.model}: {m.done:,} of {m.total:,} done"
                                + (f" ({m.cached:,} cached)" if m.cached else "") + _unfinished(m)
                                + (tokens if m.requests else "") + where))
    open_batches = [b for b in job.batches if b.state not in ("collected", "returned")]
    if job.batches:
        lines.append(f"  batches: {len(open_batches)} open, {len(job.batches) - len(open_batches)} settled")
        for b in open_batches:
            lines.append(short(f"    {b.id or '(being submitted)'} {b.status or b.state}: {b.completed + b.failed:,} "
                                f"of {b.requests:,} requests done"))
    for group in job.errors:
        lines += [f"  {group.count:,} failed with {group.kind}, e.g.:", short(f"    {group.example}")]
    return lines


def group_lines(job: JobStatus) -> list[str]:
    """`status --by FIELD`: the job's first status line, then a table of its groups and their sum (tokens:
    of the answers paid for; a `cached` column when some came from the cache)."""
    groups = job.groups or ()
    keys = ["total", "done", "failed", "pending", *(["cached"] if any(g.cached for g in groups) else []),
            "prompt_tokens", "completion_tokens"]
    head = [{"total": "prompts", "prompt_tokens": "tokens in", "completion_tokens": "tokens out"}.get(k, k)
            for k in keys] + ["cost"]

    def figures(g: GroupStatus) -> list[int]:
        return [g.pending + g.running if k == "pending" else getattr(g, k) for k in keys]

    costs = [g.cost for g in groups]
    rows = [[_cell(g.label), *(f"{n:,}" for n in figures(g)), "unknown" if g.cost is None else money(g.cost)]
            for g in groups]
    if groups:
        rows.append(["all", *(f"{sum(column):,}" for column in zip(*map(figures, groups), strict=True)),
                     "unknown" if None in costs else money(sum(c or 0.0 for c in costs))])
    table = [[_cell(job.by or ""), *head], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) + 1)]
    lines = [status_lines(job)[0]]
    lines += ["  " + "  ".join([row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:],
                                                                                            strict=True))]).rstrip()
              for row in table]
    if None in costs:
        lines.append(short(f"  cost unknown: {unknown_price_message(job.unpriced or ('?',))}"))
    return lines


def _cell(text: str, limit: int = 32) -> str:
    """A table's first cell: one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unfinished(counts: JobStatus | ModelStatus) -> str:
    parts = [f"{getattr(counts, key):,} {key}" for key in ("pending", "running", "failed") if getattr(counts, key)]
    return ", " + ", ".join(parts) if parts else ""


def estimate_lines(result: Estimate) -> list[str]:
    lines = [_estimate_line(f"{plural(m.prompts, 'prompt')} in {plural(m.requests, 'request')} to {m.model}", m,
                            (m.model,)) for m in result.models]
    if len(result.models) > 1:
        head = f"in all: {plural(result.prompts, 'prompt')} in {plural(result.requests, 'request')}"
        lines.append(_estimate_line(head, result, result.unpriced))
    if result.cached:
        lines.append(f"{result.cached:,} of {plural(result.prompts, 'prompt')} are already answered in the cache: free;"
                     " --no-cache for fresh samples")
    return lines


def _estimate_line(head: str, figures: Any, unpriced: Sequence[str]) -> str:
    line = f"{head}: ~{figures.input_tokens:,} input tokens, at most {figures.max_output_tokens:,} output tokens: "
    live, batch = figures.max_cost_live, figures.max_cost_batch
    if live is None or batch is None:
        return line + unknown_price_message(list(unpriced))
    return line + f"at most {money(live)} at list price ({money(batch, live)} in batch mode)"


def view_lines(view: PromptView) -> list[str]:
    head = f"{view.job} #{view.id} {view.model} {view.status}"
    if view.status == "failed":
        head += f": {view.error_kind or 'error'} ({plural(view.attempts, 'attempt')})"
    elif view.cached:
        head += " (from the cache)"
    prompt = messages_text(view.prompt) if isinstance(view.prompt, list) else str(view.prompt)
    lines = [head, short(f"  prompt: {prompt}"), short(f"  keywords: {json.dumps(view.keywords)}")]
    if view.error:
        lines.append(short(f"  error: {view.error}"))
    if view.answers:
        more = len(view.answers) - 1
        extra = f" (+{plural(more, 'more choice')})" if more else ""
        lines.append(short(f"  answer: {view.answers[0]}", len(extra)) + extra)
    return lines


WIDTH = 100


def short(text: str, reserve: int = 0) -> str:
    """One line of at most WIDTH columns (less `reserve`): newlines shown as spaces, the rest cut with '...'."""
    text = " ".join(text.split("\n"))
    limit = WIDTH - reserve
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")

