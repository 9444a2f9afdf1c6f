"""What the command line shows, as lines of text: a job's status, an estimate, a prompt. Nothing here
prints (the CLI does); every line fits `WIDTH` columns where it could run long."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..reports.prices import money as money
from ..reports.prices import unknown_price_message
from ..reports.status import JobStatus, ModelStatus, PromptView
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

