"""The report on a job database: where each job stands (`status`) and its prompts one by one (`show`).

Both read only the job database (no cache, no network, no key). `status` costs O(rows not done): counts
by status come from the unfinished index (done = total - the rest), cached answers from the cached index,
tokens from the `spend` table (every response paid for), errors from the failed rows, and whether the
server's token counts add up from a sample of answered rows (`usage.py`).
Costs are the spend's tokens at the live and batch prices of `prices.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..results.table import choice_text
from ..spec.expand import raw_messages
from ..store.database import JobRow, PromptRow, Store
from . import usage
from .html import status_html
from .prices import Prices, job_prices
from .text import status_lines

STATUSES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class ErrorGroup:
    """Failed prompts of one error kind (`BadRequestError 400`, `RetryExhausted`, ...)."""

    kind: str
    count: int
    example: str  # the message of the first such prompt


@dataclass(frozen=True)
class ModelStatus:
    """One model's prompts in a job, and what was paid for them (all modes)."""

    model: str
    total: int
    pending: int
    running: int
    done: int
    failed: int
    cached: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # USD at list price (batch spend at the batch price); None: no known price
    endpoint: str | None  # its spec's `endpoints` entry, else the spec's base_url; None: the run's own


@dataclass(frozen=True)
class BatchStatus:
    """A batch the job submitted (batch mode), as last seen."""

    id: str | None  # the provider's batch id (None: not created yet)
    state: str  # ours: preparing, uploaded, submitted, collected, returned
    status: str | None  # the provider's: validating, in_progress, finalizing, completed, expired, ...
    model: str
    requests: int
    completed: int
    failed: int
    created_at: float
    error: str | None


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands. `cost` is None (and `unpriced` names the models) when some spend has no price."""

    job: str
    api: str
    mode: str  # the mode it was last run in
    state: str  # "ready", or "creating" for a create that never finished
    total: int
    pending: int
    running: int
    done: int
    failed: int
    cached: int  # done rows answered from the cache
    requests: int  # responses paid for
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    unpriced: tuple[str, ...]
    models: tuple[ModelStatus, ...]
    errors: tuple[ErrorGroup, ...]
    batches: tuple[BatchStatus, ...] = ()  # open and past, oldest first
    # why the token counts may not be what was generated (`usage.FIRST_CHOICE_ONLY`), or None
    usage_doubt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the same fields (lists for tuples)."""
        return asdict(self)

    def __str__(self) -> str:
        """The readable text (what the command line prints); `repr()` stays the dataclass's."""
        return "\n".join(status_lines(self))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text (a notebook's `text/plain`, the REPL): the readable text."""
        p.text(str(self))

    def _repr_html_(self) -> str:
        """Jupyter's HTML: a table of the figures, every name and message escaped."""
        return status_html(self)


def status(db_path: str | Path, prices: str | Path | None = None) -> list[JobStatus]:
    """Every job of `db_path`, in creation order. `prices`: a price override file, on top of each job's
    spec's `prices` (when that file can still be read). Raises `StoreError`, `ConfigError` (bad `prices`)."""
    Prices.load(prices)  # a bad override file is an error before the database is opened
    with Store(db_path, create=False, readonly=True) as store:
        return [_job_status(store, job, job_prices(job.spec.get("prices"), prices, lenient=True))
                for job in store.jobs()]


def _job_status(store: Store, job: JobRow, prices: Prices) -> JobStatus:
    ready = job.state == "ready"
    unfinished = store.unfinished_by_model(job)
    cached = store.cached_by_model(job)
    spend = store.spend(job)
    models = list(dict.fromkeys([*job.spec.get("models", []), *(m for m, _ in unfinished), *cached,
                                 *(s.model for s in spend)]))
    totals = _totals(store, job, models)
    served = job.spec.get("endpoints") or {}
    per_model = []
    unpriced: list[str] = []
    for model in models:
        counts = {s: unfinished.get((model, s), 0) for s in ("pending", "running", "failed")}
        mine = [s for s in spend if s.model == model]
        costs = [prices.cost(model, s.mode, s.prompt_tokens, s.completion_tokens) for s in mine]
        if None in costs:
            unpriced.append(model)
        per_model.append(ModelStatus(
            model=model, total=totals.get(model, 0), **counts,
            done=totals.get(model, 0) - sum(counts.values()) if ready else 0, cached=cached.get(model, 0),
            requests=sum(s.requests for s in mine), prompt_tokens=sum(s.prompt_tokens for s in mine),
            completion_tokens=sum(s.completion_tokens for s in mine),
            cost=None if None in costs else sum(c or 0.0 for c in costs),
            endpoint=(served.get(model) or {}).get("base_url") or job.base_url,
        ))
    pending, running, failed = (sum(getattr(m, k) for m in per_model) for k in ("pending", "running", "failed"))
    model_costs = [m.cost for m in per_model]
    return JobStatus(
        job=job.name, api=job.api, mode=job.mode, state=job.state, total=job.n_prompts, pending=pending,
        running=running, failed=failed, done=job.n_prompts - pending - running - failed if ready else 0,
        cached=sum(cached.values()), requests=sum(s.requests for s in spend),
        prompt_tokens=sum(s.prompt_tokens for s in spend), completion_tokens=sum(s.completion_tokens for s in spend),
        cost=None if None in model_costs else sum(c or 0.0 for c in model_costs), unpriced=tuple(unpriced),
        models=tuple(per_model), errors=tuple(ErrorGroup(*group) for group in store.error_groups(job)),
        batches=tuple(BatchStatus(b.batch_id, b.state, b.status, b.model, b.requests, b.completed, b.failed,
                                  b.created_at, b.error) for b in store.batches(job)),
        usage_doubt=_usage_doubt(store, job),
    )


def usage_doubts(db_path: str | Path, jobs: list[str] | None = None) -> dict[str, str]:
    """Job name -> why its token counts may not be what was generated, for the jobs (all, or those named)
    whose answers show it (see `usage.py`). Reads a sample of each job's answered rows."""
    with Store(db_path, create=False, readonly=True) as store:
        found = {job.name: _usage_doubt(store, job) for job in store.jobs() if jobs is None or job.name in jobs}
    return {name: text for name, text in found.items() if text is not None}


def _usage_doubt(store: Store, job: JobRow) -> str | None:
    packed = 1
    if job.api == "completions":
        per_model = job.n_prompts // max(1, len(job.spec.get("models") or [1]))
        packed = max(1, min(int(job.spec.get("prompts_per_request") or 1), per_model))
    rows = store.prompts(job, "done", usage.SAMPLE)
    return usage.doubt(((row.request, row.response) for row in rows if row.response is not None), packed)


def _totals(store: Store, job: JobRow, models: list[str]) -> dict[str, int]:
    """Rows per model: every model of a spec has the same share (models are crossed); else counted."""
    spec_models = job.spec.get("models") or []
    if spec_models and len(set(spec_models)) == len(spec_models) and job.n_prompts % len(spec_models) == 0:
        return dict.fromkeys(spec_models, job.n_prompts // len(spec_models))
    return store.rows_by_model(job)


# --- show -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptView:
    """One prompt as `show` lists it: what was asked, and its answer or its error."""

    job: str
    id: int
    hash: str
    model: str
    status: str
    template_index: int
    keywords_index: int
    sample_index: int
    prompt: Any  # chat: the rendered messages; completions: the rendered prompt
    template: Any  # chat: the template as messages; completions: the template
    keywords: dict[str, Any]
    attempts: int
    cached: bool
    error_kind: str | None
    error: str | None
    answers: tuple[str, ...]  # each choice's text, by index (done rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def show(db_path: str | Path, job: str | None = None, status: str | None = None, limit: int = 20) -> list[PromptView]:
    """Up to `limit` prompts of each job (or of the job named `job`), of one status or any, in order.

    Raises `JobNotFoundError` for an unknown job name, `ValueError` for an unknown status."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    with Store(db_path, create=False, readonly=True) as store:
        views: list[PromptView] = []
        for row in store.select(job):
            views += [_view(row, prompt) for prompt in store.prompts(row, status, limit)]
        return views


def _view(job: JobRow, row: PromptRow) -> PromptView:
    request = json.loads(row.request)
    template = json.loads(row.template)
    answers: tuple[str, ...] = ()
    if row.response is not None and row.status == "done":
        choices = sorted(json.loads(row.response).get("choices") or [], key=lambda c: c.get("index", 0))
        answers = tuple(choice_text(c) for c in choices)
    return PromptView(
        job=job.name, id=row.id, hash=row.hash, model=row.model, status=row.status,
        template_index=row.template_index, keywords_index=row.keywords_index, sample_index=row.sample_index,
        prompt=request.get("messages" if job.api == "chat" else "prompt"),
        template=raw_messages(template) if job.api == "chat" else template, keywords=json.loads(row.keywords),
        attempts=row.attempts, cached=bool(row.cached), error_kind=row.error_kind, error=row.error,
        answers=answers,
    )

