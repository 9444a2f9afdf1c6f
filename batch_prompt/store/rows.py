"""The rows the job database hands out and takes in: jobs, claimed prompts, outcomes, charges, batches,
spend, and what status, show and export read. Plain frozen values; all SQL is in the `store` package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class JobRow:
    id: int
    name: str
    spec: dict[str, Any]
    api: str
    prompts_per_request: int
    base_url: str | None
    state: str
    n_prompts: int
    created_at: str
    mode: str = "live"  # the mode it was last run in
    fresh: bool = False  # asks for fresh samples: not answered from the cache
    deadline_at: float | None = None  # auto mode: unix time it must be finished by (`mode`: its plan's lane)
    plan: dict[str, Any] | None = None  # auto mode: the last plan made (`run.plan.Plan.to_dict`)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A prompt row claimed by a runner."""

    id: int
    job_id: int
    hash: str
    model: str
    request: str  # JSON body of the one-prompt request
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a runner learned about one prompt, committed in batches by `Store.record`."""

    id: int
    job_id: int
    status: str  # "done", "failed", or "retry" (back to pending, to be asked again)
    response: str | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0  # API calls made for it in this claim
    error: str | None = None
    error_kind: str | None = None
    owner: str | None = None  # the lease it applies under (a batch's); None: the committing process's


@dataclass(frozen=True, slots=True)
class Charge:
    """Responses paid for, by job, model and mode; committed with outcomes, whatever became of the answers."""

    job_id: int
    model: str
    mode: str  # "live", "batch" or "flex"
    requests: int
    answers: int
    prompt_tokens: int
    completion_tokens: int
    row_id: int | None = None  # a batch line's charge: counted only if that row is answered by this commit
    cost: float = 0.0  # USD at list price (0: unpriced); not stored, the spend table keeps the tokens
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens: a reasoning model's hidden tokens


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A batch this database submitted (a row of the `batches` table)."""

    id: int
    job_id: int
    model: str
    endpoint: str
    token: str
    state: str  # preparing, uploaded, submitted, collected, returned
    status: str | None  # the provider's, when last seen
    input_file_id: str | None
    batch_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    requests: int
    completed: int
    failed: int
    error: str | None
    files_left: bool
    created_at: float
    submitted_at: float | None
    finished_at: float | None
    base_url: str | None = None  # as given to the SDK (None: recorded before schema 5; `endpoint` then)
    api_key_env: str | None = None  # the variable its key came from (None: a key given in code, or unknown)

    @property
    def owner(self) -> str:
        """The lease owner of the prompts it holds."""
        return f"batch:{self.id}"


@dataclass(frozen=True, slots=True)
class Spend:
    """A job's spend on one model in one mode (a row of the `spend` table): "live", "batch" or "flex"."""

    model: str
    mode: str
    requests: int
    answers: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of prompt_tokens: cached input (priced at the cached rate)
    reasoning_tokens: int = 0  # of completion_tokens


class GroupCount(NamedTuple):
    """A job's rows of one group, model, status and cached flag, counted (`Store.group_counts`)."""

    key: Any  # the template index, the model, or a keyword's JSON text (None: not in the keyword dict)
    model: str
    status: str
    cached: bool
    rows: int
    prompt_tokens: int  # summed over the rows' answers (NULL, for a row not answered, counts 0)
    completion_tokens: int
    first_id: int  # the group's first row: groups are shown in the order of the spec


class DoneRow(NamedTuple):
    """A row as export reads it (JSON columns as text): a done row, or (exported with `include`) a failed
    or unfinished one, whose `response` is None."""

    id: int
    hash: str
    model: str
    template: str
    keywords: str
    request: str
    response: str
    template_index: int
    keywords_index: int
    model_index: int
    sample_index: int
    status: str = "done"
    error_kind: str | None = None
    error: str | None = None


class PromptRow(NamedTuple):
    """A row of any status, as `show` reads it (JSON columns as text)."""

    id: int
    hash: str
    model: str
    template_index: int
    keywords_index: int
    model_index: int
    sample_index: int
    template: str
    keywords: str
    request: str
    status: str
    attempts: int
    error_kind: str | None
    error: str | None
    response: str | None
    cached: int
