"""The report on a job database: where each job stands (`status`) and its prompts one by one (`show`).

Both read only the job database (no cache, no network, no key). `status` costs O(rows not done): counts
by status come from the unfinished index (done = total - the rest), cached answers from the cached index,
tokens from the `spend` table (every response paid for), errors from the failed rows, and whether the
server's token counts add up from a sample of answered rows (`usage.py`).
Costs are the spend's tokens at the live and batch prices of `prices.py`.

`status(db, by=FIELD)` adds, per job, its prompts grouped by a keyword field, `template` or `model`
(`GroupStatus`), counted in one pass of SQL over every row of the job (O(all rows), a second a million).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UnknownFieldError
from ..results.export import answer_texts
from ..results.responses import as_chat
from ..results.table import choice_text, messages_text
from ..spec.expand import PROMPT_KEYS, raw_messages
from ..spec.parse import Parser
from ..store.database import GroupCount, JobRow, PromptRow, Spend, Store
from . import usage
from .html import status_html
from .prices import Prices, job_prices
from .text import group_lines, status_lines

STATUSES = ("pending", "running", "done", "failed")
GROUPINGS = ("template", "model")  # what `status(by=...)` groups by besides a keyword field


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
    reasoning_tokens: int = 0  # of completion_tokens: a reasoning model's hidden tokens
    cached_tokens: int = 0  # of prompt_tokens: cached input (priced at the cached rate)
    flex_requests: int = 0  # of requests: answered at the flex service tier (at the flex price)


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
class GroupStatus:
    """One group of a job's prompts (`status(db, by=...)`): the prompts with one value of a keyword field,
    one template, or one model; their counts, and the tokens and cost of the answers they hold.

    Tokens are those of the answers held by the group's done rows that this job paid for: an answer from
    the cache cost it nothing and counts in `cached` only. So the groups' tokens add up to the job's (the
    `spend` table: every response paid for) whenever each response paid for ended in exactly one row: they
    fall short by a response paid for and not kept (a second process's answer to a row already done, a
    malformed or short response) or kept as from the cache (one a killed run paid for, taken up by the
    next), and count an answer twice where rows share one (`dedupe`). `cost` is the
    tokens at each model's price: live or batch as the model's spend was (both: in its proportions)."""

    value: Any  # the keyword's value (a list or dict as its JSON text; None: absent), template index, or model
    label: str  # the value as shown: a string as it is, "(none)", JSON text, "INDEX: template text"
    total: int
    pending: int
    running: int
    done: int
    failed: int
    cached: int  # done rows answered from the cache
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # USD; None: some of its answers are of a model with no known price


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
    by: str | None = None  # what `groups` groups by (`status(db, by=...)`)
    groups: tuple[GroupStatus, ...] | None = None  # in the order of their first prompt; None: not asked
    # answers (choices) of done prompts that the job's `parse` cannot parse; None: the job has no `parse`
    unparsed: int | None = None
    reasoning_tokens: int = 0  # of completion_tokens
    cached_tokens: int = 0  # of prompt_tokens
    flex_requests: int = 0  # of requests: at the flex tier
    # auto mode (`--mode auto --deadline`): the last plan, `run.plan.Plan.to_dict` (mode, deadline, take_back,
    # rate, rate_source, ...); None: the job has no deadline
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the same fields (lists for tuples); `by` and `groups` only when asked for, `unparsed`
        only for a job with `parse`."""
        data = asdict(self)
        if self.by is None:
            del data["by"], data["groups"]
        if self.unparsed is None:
            del data["unparsed"]
        return data

    def __str__(self) -> str:
        """The readable text (what the command line prints); `repr()` stays the dataclass's."""
        return "\n".join(status_lines(self) if self.groups is None else group_lines(self))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text (a notebook's `text/plain`, the REPL): the readable text."""
        p.text(str(self))

    def _repr_html_(self) -> str:
        """Jupyter's HTML: a table of the figures, every name and message escaped."""
        return status_html(self)


def status(db_path: str | Path, prices: str | Path | None = None, by: str | None = None) -> list[JobStatus]:
    """Every job of `db_path`, in creation order. `prices`: a price override file, on top of each job's
    spec's `prices` (when that file can still be read). `by` (a keyword field, "template" or "model"):
    each job's `groups` too (see `GroupStatus`; a job whose keyword dicts lack the field has one group,
    None); a keyword field named like either is shadowed by it. Raises `StoreError`, `ConfigError` (bad
    `prices`), `UnknownFieldError` (`by` is neither, nor a keyword field of any job)."""
    Prices.load(prices)  # a bad override file is an error before the database is opened
    with Store(db_path, create=False, readonly=True) as store:
        jobs = store.jobs()
        if by is not None:
            _check_grouping(by, jobs, db_path)
        report = []
        for job in jobs:
            own = job_prices(job.spec.get("prices"), prices, lenient=True)
            report.append(_job_status(store, job, own))
            parser = Parser.of(job.spec)
            if parser is not None:  # O(rows done): every answer parsed again, as an export would
                unparsed = sum(1 for text in answer_texts(store, job) if parser.parse(text)[1] is not None)
                report[-1] = replace(report[-1], unparsed=unparsed)
            if by is not None:
                report[-1] = replace(report[-1], by=by, groups=_groups(store, job, by, own))
        return report


def keyword_fields(job: JobRow) -> list[str]:
    """The fields of a job's keyword dicts, in the order they first appear in its spec."""
    keywords = job.spec.get("keywords")
    dicts = [keywords] if isinstance(keywords, dict) else keywords if isinstance(keywords, list) else []
    return list(dict.fromkeys(str(field) for each in dicts if isinstance(each, dict) for field in each))


def _check_grouping(by: str, jobs: list[JobRow], db_path: str | Path) -> None:
    fields = list(dict.fromkeys(field for job in jobs for field in keyword_fields(job)))
    if by not in GROUPINGS and by not in fields:
        available = (*GROUPINGS, *fields)
        raise UnknownFieldError(f"no job in {db_path} has a keyword field {by!r}: group by "
                                f"{', '.join(available)}", field=by, available=available)


def _groups(store: Store, job: JobRow, by: str, prices: Prices) -> tuple[GroupStatus, ...]:
    kind = by if by in GROUPINGS else "keyword"
    found: dict[Any, list[GroupCount]] = {}
    for count in store.group_counts(job, kind, by):
        key = None if count.key == "null" else count.key  # a keyword's null groups with its absence
        found.setdefault(key, []).append(count)
    costs = _group_costs(store.spend(job), job.mode, prices)
    groups = []
    for key, counts in sorted(found.items(), key=lambda item: min(c.first_id for c in item[1])):
        paid = [c for c in counts if c.status == "done" and not c.cached]
        tokens = {c.model: [0, 0] for c in paid}
        for c in paid:
            tokens[c.model][0] += c.prompt_tokens
            tokens[c.model][1] += c.completion_tokens
        priced = [costs(model, p, q) for model, (p, q) in tokens.items()]
        pending, running, done, failed = (sum(c.rows for c in counts if c.status == state) for state in STATUSES)
        value, label = _group_value(kind, key, job)
        groups.append(GroupStatus(
            value=value, label=label, total=pending + running + done + failed, pending=pending, running=running,
            done=done, failed=failed, cached=sum(c.rows for c in counts if c.status == "done" and c.cached),
            prompt_tokens=sum(p for p, _ in tokens.values()), completion_tokens=sum(q for _, q in tokens.values()),
            cost=None if None in priced else sum(c or 0.0 for c in priced),
        ))
    return tuple(groups)


def _group_value(kind: str, key: Any, job: JobRow) -> tuple[Any, str]:
    """(value, label) of a group's key as `group_counts` gives it."""
    if kind == "model":
        return key, str(key)
    if kind == "template":
        templates = job.spec.get("templates") or []
        template = templates[key] if isinstance(key, int) and 0 <= key < len(templates) else None
        text = template if isinstance(template, str) else messages_text(template) if template else "?"
        return key, f"{key}: {text}"
    if key is None:
        return None, "(none)"
    value = json.loads(key)
    if isinstance(value, str):
        return value, value
    return (key if isinstance(value, list | dict) else value), key


def _group_costs(spend: list[Spend], mode: str, prices: Prices) -> Callable[[str, int, int], float | None]:
    """A function (model, prompt tokens, completion tokens) -> USD or None: at the model's price in the mode
    its spend was in (the job's mode when nothing was spent), or, spent in both, in the proportions of each."""
    by_model: dict[str, list[Spend]] = {}
    for each in spend:
        by_model.setdefault(each.model, []).append(each)

    def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        spent = [s for s in by_model.get(model, []) if s.prompt_tokens or s.completion_tokens]
        if len(spent) <= 1:
            return prices.cost(model, spent[0].mode if spent else mode, prompt_tokens, completion_tokens)
        total_in, total_out = sum(s.prompt_tokens for s in spent), sum(s.completion_tokens for s in spent)
        parts = [(prices.cost(model, s.mode, s.prompt_tokens, 0), prices.cost(model, s.mode, 0, s.completion_tokens))
                 for s in spent]
        if any(a is None or b is None for a, b in parts):
            return None
        return sum((a or 0.0) * prompt_tokens / max(total_in, 1) + (b or 0.0) * completion_tokens / max(total_out, 1)
                   for a, b in parts)

    return cost


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
        costs = [prices.cost(model, s.mode, s.prompt_tokens, s.completion_tokens, s.cached_tokens) for s in mine]
        if None in costs:
            unpriced.append(model)
        per_model.append(ModelStatus(
            model=model, total=totals.get(model, 0), **counts,
            done=totals.get(model, 0) - sum(counts.values()) if ready else 0, cached=cached.get(model, 0),
            requests=sum(s.requests for s in mine), prompt_tokens=sum(s.prompt_tokens for s in mine),
            completion_tokens=sum(s.completion_tokens for s in mine),
            cost=None if None in costs else sum(c or 0.0 for c in costs),
            endpoint=(served.get(model) or {}).get("base_url") or job.base_url,
            reasoning_tokens=sum(s.reasoning_tokens for s in mine), cached_tokens=sum(s.cached_tokens for s in mine),
            flex_requests=sum(s.requests for s in mine if s.mode == "flex"),
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
        usage_doubt=_usage_doubt(store, job), reasoning_tokens=sum(s.reasoning_tokens for s in spend),
        cached_tokens=sum(s.cached_tokens for s in spend), flex_requests=sum(m.flex_requests for m in per_model),
        plan=job.plan if job.deadline_at is not None else None,
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
    parse_errors: tuple[str | None, ...] | None = None  # each answer's parse error (a job with `parse`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def show(db_path: str | Path, job: str | None = None, status: str | None = None, limit: int = 20,
         unparsed: bool = False) -> list[PromptView]:
    """Up to `limit` prompts of each job (or of the job named `job`), of one status or any, in order;
    `unparsed`: only done prompts with an answer that the job's `parse` cannot parse (jobs without `parse`
    have none). Each view of a job with `parse` holds each answer's parse error (None: it parses).

    Raises `JobNotFoundError` for an unknown job name, `ValueError` for an unknown status."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    with Store(db_path, create=False, readonly=True) as store:
        views: list[PromptView] = []
        for row in store.select(job):
            parser = Parser.of(row.spec)
            if not unparsed:
                views += [_view(row, prompt, parser) for prompt in store.prompts(row, status, limit)]
                continue
            if parser is None or status not in (None, "done"):
                continue
            ids = []
            for done in store.iter_done(row):
                if any(error is not None for error in parse_errors(done.response, parser)):
                    ids.append(done.id)
                    if len(ids) >= limit:
                        break
            views += [_view(row, prompt, parser) for prompt in store.prompts_by_id(row, ids)]
        return views


def parse_errors(response: str | None, parser: Parser) -> list[str | None]:
    """Each choice's parse error (None: it parses) of a stored response, by choice index."""
    choices = sorted(as_chat(json.loads(response or "{}")).get("choices") or [], key=lambda c: c.get("index", 0))
    return [parser.parse(choice_text(c))[1] for c in choices]


def _view(job: JobRow, row: PromptRow, parser: Parser | None = None) -> PromptView:
    request = json.loads(row.request)
    template = json.loads(row.template)
    answers: tuple[str, ...] = ()
    if row.response is not None and row.status == "done":
        choices = sorted(as_chat(json.loads(row.response)).get("choices") or [], key=lambda c: c.get("index", 0))
        answers = tuple(choice_text(c) for c in choices)
    return PromptView(
        job=job.name, id=row.id, hash=row.hash, model=row.model, status=row.status,
        template_index=row.template_index, keywords_index=row.keywords_index, sample_index=row.sample_index,
        prompt=request.get(PROMPT_KEYS.get(job.api, "prompt")),
        template=raw_messages(template) if job.api != "completions" else template, keywords=json.loads(row.keywords),
        attempts=row.attempts, cached=bool(row.cached), error_kind=row.error_kind, error=row.error,
        answers=answers,
        parse_errors=tuple(parse_errors(row.response, parser)) if parser is not None and answers else None,
    )

