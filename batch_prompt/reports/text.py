"""The reports as a person reads them, in lines of text: a job's status, an estimate, a run's summary.

The command line prints these lines; `str()` of a `JobStatus`, an `Estimate` or a `RunSummary` (and
IPython's display of one) is the same lines joined. Nothing here prints; every line fits `WIDTH`
columns where it could run long. (`html.py` is the same for a notebook.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .prices import money, unknown_price_message, usd

if TYPE_CHECKING:  # annotations only: the dataclasses import this module for their __str__
    from ..options import RunSummary
    from .estimate import Estimate
    from .status import GroupStatus, JobStatus, ModelStatus

WIDTH = 100


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
    if details := _token_details(job):
        lines.append(f"  of them: {details}")
    if job.usage_doubt:
        lines.append(f"  {job.usage_doubt}")
    if job.plan:
        lines.append(short(f"  {_plan_line(job.plan)}"))
    lines += _parse_lines(job)
    if len(job.models) > 1:
        several = len({m.endpoint for m in job.models}) > 1  # then each model says where it is served
        for m in job.models:
            cost = "no known price" if m.cost is None else f"~{money(m.cost)}"
            tokens = f"; {m.prompt_tokens:,} + {m.completion_tokens:,} tokens" + (
                f" ({m.reasoning_tokens:,} reasoning)" if m.reasoning_tokens else "") + f": {cost}"
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


def _token_details(job: JobStatus) -> str:
    """"1,200 reasoning tokens, 300 cached input tokens, 40 requests at the flex tier" (what is nonzero)."""
    parts = [f"{job.reasoning_tokens:,} reasoning tokens" if job.reasoning_tokens else "",
             f"{job.cached_tokens:,} cached input tokens" if job.cached_tokens else "",
             f"{plural(job.flex_requests, 'request')} at the flex tier" if job.flex_requests else ""]
    return ", ".join(part for part in parts if part)


def _plan_line(plan: dict[str, Any]) -> str:
    """Auto mode's plan, as status shows it: the lane, the deadline, when batches are taken back, the rate."""
    deadline = plan["deadline"].replace("T", " ")[:16]
    rate = f"{plan['rate']:,.3g}/s ({plan['rate_source']})"
    if plan["mode"] == "batch" and plan.get("take_back"):
        return f"plan: batch, live from {plan['take_back'].replace('T', ' ')[:16]} at {rate}; deadline {deadline}"
    return f"plan: live at {rate}; deadline {deadline}"


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


def summary_head(summary: RunSummary) -> str:
    """The run's figures in one line: done (cached), failed, requests, tokens, cost."""
    return (
        f"done {summary.done} ({summary.cached} from cache), failed {summary.failed}, requests {summary.paid} paid for"
        + (f" ({summary.requests} sent)" if summary.requests > summary.paid else "")
        + f", tokens {summary.prompt_tokens}+{summary.completion_tokens}" + usd(summary.cost_usd)
    )


def summary_notes(summary: RunSummary) -> list[str]:
    """What else the run met: its failures by kind (with an example), requests abandoned, prompts another
    process answers, budgets reached, batches submitted."""
    lines = [short(f"  {count} x {kind}, e.g. {summary.error_examples.get(kind, '')}")
             for kind, count in summary.errors.most_common()]
    if summary.abandoned:
        lines.append(f"{summary.abandoned} requests in flight were abandoned: their answers are lost")
    if summary.running_elsewhere:
        lines.append(f"{summary.running_elsewhere} prompts are being answered by another process")
    lines += summary.budget_reached
    if summary.batches_submitted:
        lines.append(f"{summary.batches_submitted} batches submitted")
    if summary.flex or summary.capacity_waits:
        lines.append(f"flex: {plural(summary.flex, 'answer')} at the flex tier, "
                     f"{plural(summary.capacity_waits, 'capacity 429')} waited out (no attempt used)"
                     + (f", {plural(summary.fell_back, 'request')} sent at the default tier after --flex-fallback"
                        if summary.fell_back else ""))
    elif summary.fell_back:
        lines.append(f"{plural(summary.fell_back, 'request')} sent at the default tier after --flex-fallback")
    if summary.reasoning_tokens:
        lines.append(f"{summary.reasoning_tokens:,} of the completion tokens were reasoning")
    return lines


def summary_lines(summary: RunSummary) -> list[str]:
    """The whole summary as Python shows it: the head, the notes, and what is left to do, said in terms of
    the library (the command line says the same with the command to type)."""
    lines = [summary_head(summary), *summary_notes(summary)]
    if summary.in_batches and not summary.interrupted:
        verb = "is" if summary.in_batches == 1 else "are"
        lines.append(f"{plural(summary.in_batches, 'prompt')} {verb} in open batches at the provider: "
                     "a resume collects them")
    if summary.larger_budget is not None and not summary.interrupted:
        lines.append(f"{plural(summary.unfinished, 'prompt')} pending: resume with a larger budget "
                     f"(max_cost={summary.larger_budget:g})")
    elif (summary.interrupted and summary.left) or summary.unfinished:
        said = "interrupted" if summary.interrupted else f"{plural(summary.unfinished, 'prompt')} pending"
        lines.append(f"{said}: resume to continue")
    elif summary.failed_total:
        lines.append(f"{plural(summary.failed_total, 'prompt')} failed: retry_failed, then resume")
    return lines


def short(text: str, reserve: int = 0) -> str:
    """One line of at most WIDTH columns (less `reserve`): newlines shown as spaces, the rest cut with '...'."""
    text = " ".join(text.split("\n"))
    limit = WIDTH - reserve
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


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
    return lines + _parse_lines(job)


def _parse_lines(job: JobStatus) -> list[str]:
    """How many answers the job's `parse` cannot parse (nothing for a job without `parse`)."""
    if job.unparsed:
        return [f"  {plural(job.unparsed, 'answer')} of done prompts do not parse (show --unparsed lists them)"]
    return ["  every answer parses"] if job.unparsed == 0 and job.done else []


def _cell(text: str, limit: int = 32) -> str:
    """A table's first cell: one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
