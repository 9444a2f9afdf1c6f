"""How to run (`RunOptions`, as keyword arguments `RunArgs`) and what a run did (`RunSummary`,
`CancelResult`): the data shared by the runner, the lanes and the entry points."""

from __future__ import annotations

import datetime
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import ConfigError

if TYPE_CHECKING:  # for annotations only: importing this module must not load the SDK
    from .run.limiter import Limiter
    from .run.progress import Progress
    from .run.retry import RetryPolicy

MAX_CONCURRENCY = 10_000
# OpenAI's service tiers: the `service_tier` Literal of the SDK's chat completion create params
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
FILES_BESIDES_CONNECTIONS = 64  # databases, their WAL and shared-memory files, the cache, stdio, the event loop


@dataclass
class RunOptions:
    """How to run. Every field has a command-line option of the same name where it makes sense."""

    concurrency: int = 100  # requests in flight, all jobs and models together
    rpm: float | dict[str, float] | None = None  # a number (every model) or a mapping by model
    tpm: float | dict[str, float] | None = None
    timeout: float = 120.0  # seconds a request may take (time the process was stopped does not count)
    # None: as the job says (as it was last run); False: fresh samples, no answer is taken from the cache
    # (but one bought for this very row by a run that died before recording it), and the job remembers
    # it; True: answer from the cache again. Responses are always written to it.
    cache: bool | None = None
    cache_dir: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    mode: str | None = None  # "live", "batch" or "auto" (needs a deadline); None: the mode the job was last run in
    # auto mode: a duration from now ("90m", "1h30m", "2d"; a number: seconds) or a datetime; given alone it
    # means auto. Kept with the job as a time: a later run without one keeps to it (`run/plan.py`).
    deadline: str | float | datetime.datetime | None = None
    batch_window: float = 86400.0  # auto: the provider's batch completion window, seconds (24 h)
    max_cost: float | None = None  # USD a job's spend never passes (default: the spec's max_cost)
    prices: str | None = None  # a price override file, on top of the spec's
    # Live requests' `service_tier` (one of SERVICE_TIERS; "flex": at the flex price, see run/live.py), over
    # the spec's model arg; and the seconds a flex request may wait on flex capacity (429 "resource
    # unavailable") before it goes at the default tier (None: it never does).
    service_tier: str | None = None
    flex_fallback: float | None = None
    # Batch mode: most requests and bytes per batch file (the Batch API's limits), the first poll interval
    # (it backs off to a minute), and whether to wait for the batches (False: submit, record, return).
    batch_size: int = 50_000
    batch_bytes: int = 200_000_000
    poll: float = 10.0
    wait: bool = True
    max_attempts: int | None = None  # per prompt, live and batch; None: the `retry` policy's (8 by default)
    quiet: bool = False
    progress: Progress | None = None
    retry: RetryPolicy | None = None  # how long to wait between attempts (None: `RetryPolicy()`)
    limiter: Limiter | None = None
    lease_seconds: float = 300.0
    grace: float | None = None  # seconds in-flight requests get to finish after a stop (None: `timeout`)
    flush_interval: float = 0.2
    flush_batch: int = 256
    # Process-wide policy, which only the command line turns on (a notebook's `await job.arun()` did not
    # ask for it): SIGINT/SIGTERM/SIGHUP handlers; raising the soft open-file limit to fit the
    # connections; keeping the garbage collector out of the event loop's way.
    handle_signals: bool = False
    raise_open_files: bool = False
    tune_gc: bool = False

    def validate(self) -> None:
        if not _positive_int(self.concurrency):
            raise ConfigError(f"concurrency must be a positive integer, not {self.concurrency!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            for rate in value.values() if isinstance(value, dict) else [value]:
                if rate is not None and not _positive(rate):
                    raise ConfigError(f"{name} must be a positive number, not {rate!r}")
        for name in ("timeout", "grace", "lease_seconds"):
            value = getattr(self, name)
            if (value is not None or name != "grace") and not _positive(value):
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.max_attempts is not None and not _positive_int(self.max_attempts):
            raise ConfigError(f"max_attempts must be a positive integer, not {self.max_attempts!r}")
        if self.concurrency > MAX_CONCURRENCY:
            raise ConfigError(f"concurrency {self.concurrency} is more than {MAX_CONCURRENCY:,}")
        for name, most in (("batch_size", 50_000), ("batch_bytes", 200 * 1024 * 1024)):
            value = getattr(self, name)
            if not _positive_int(value) or value > most:
                raise ConfigError(f"{name} must be a positive integer of at most {most:,}, not {value!r}")
        if self.max_cost is not None and not _positive(self.max_cost):
            raise ConfigError(f"max_cost must be a positive number of USD, not {self.max_cost!r}")
        if not _positive(self.poll):
            raise ConfigError(f"poll must be a positive number of seconds, not {self.poll!r}")
        if self.mode not in (None, "live", "batch", "auto"):
            raise ConfigError(f"mode must be 'live', 'batch' or 'auto', not {self.mode!r}")
        check_service_tier(self.service_tier, "service_tier")
        if self.flex_fallback is not None and not (_positive(self.flex_fallback) or self.flex_fallback == 0):
            raise ConfigError(f"flex_fallback must be a number of seconds >= 0, not {self.flex_fallback!r}")
        if self.deadline is not None and self.mode in ("live", "batch"):
            raise ConfigError(f"a deadline is for --mode auto, not {self.mode}: drop --mode or the deadline")
        if self.deadline is not None:
            self.deadline_at(0.0)  # a ConfigError for what is not a duration
        if not _positive(self.batch_window):
            raise ConfigError(f"batch_window must be a positive number of seconds, not {self.batch_window!r}")

    def deadline_at(self, now: float) -> float | None:
        """The deadline as unix time (a duration counts from `now`); None: none given."""
        from .run.plan import parse_duration

        if self.deadline is None:
            return None
        if isinstance(self.deadline, datetime.datetime):
            return self.deadline.timestamp()
        if isinstance(self.deadline, int | float) and not isinstance(self.deadline, bool):
            if not _positive(self.deadline):
                raise ConfigError(f"deadline must be a positive number of seconds, not {self.deadline!r}")
            return now + float(self.deadline)
        return now + parse_duration(str(self.deadline))

    @property
    def auto(self) -> bool:
        """Auto mode asked for: `mode="auto"`, or a deadline alone."""
        return self.mode == "auto" or (self.mode is None and self.deadline is not None)

    def check_rates(self, models: set[str]) -> None:
        """`ConfigError` for an `rpm`/`tpm` mapping naming a model that none of the run's jobs has (a typo
        would silently leave that model unlimited, or at the spec's rate)."""
        for name in ("rpm", "tpm"):
            rates = getattr(self, name)
            unknown = sorted(set(rates) - models) if isinstance(rates, dict) else []
            if unknown:
                raise ConfigError(f"{name} names model {unknown[0]!r}, which no job of this run has "
                                  f"(its models: {', '.join(sorted(models))})")

    @property
    def grace_seconds(self) -> float:
        return self.timeout if self.grace is None else self.grace


@dataclass(frozen=True)
class CancelResult:
    """What `cancel` did: the open batches it asked the provider to cancel, and what collecting them did."""

    asked: int  # open batches asked to cancel
    summary: RunSummary  # what collecting them did
    already: int = 0  # open batches that were being cancelled already


class RunArgs(TypedDict, total=False):
    """`RunOptions` as keyword arguments (`job.run(concurrency=50, mode="batch")`, `bp.resume(db, ...)`):
    the same names and types, each optional, checked by a type checker."""

    concurrency: int
    rpm: float | dict[str, float] | None
    tpm: float | dict[str, float] | None
    timeout: float
    cache: bool | None
    cache_dir: str | None
    base_url: str | None
    api_key: str | None
    mode: str | None
    deadline: str | float | datetime.datetime | None
    batch_window: float
    max_cost: float | None
    prices: str | None
    service_tier: str | None
    flex_fallback: float | None
    batch_size: int
    batch_bytes: int
    poll: float
    wait: bool
    max_attempts: int | None
    quiet: bool
    progress: Progress | None
    retry: RetryPolicy | None
    limiter: Limiter | None
    lease_seconds: float
    grace: float | None
    flush_interval: float
    flush_batch: int
    handle_signals: bool
    raise_open_files: bool
    tune_gc: bool


def check_service_tier(value: object, name: str) -> None:
    """`ConfigError` unless `value` is None or one of OpenAI's service tiers."""
    if value is not None and value not in SERVICE_TIERS:
        raise ConfigError(f"{name} must be one of {', '.join(SERVICE_TIERS)}, not {value!r}")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class RunSummary:
    """What a run did (derived from its ledger). `exit_code`: 0 all done, 1 some prompts failed or left
    pending, 130 interrupted."""

    done: int = 0  # answered in this run: by a call, from the cache, or shared with another row
    cached: int = 0  # of done: from the cache
    shared: int = 0  # of done: the answer of another row of this run asking the same
    failed: int = 0  # failed in this run
    requests: int = 0  # calls made
    paid: int = 0  # responses paid for
    prompt_tokens: int = 0  # of the responses paid for
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens
    cached_tokens: int = 0  # of prompt_tokens: cached input, at the cached rate
    cost_usd: float | None = None  # what they cost at list price; None: no model priced
    flex: int = 0  # of paid: answered at the flex service tier (at the flex price)
    capacity_waits: int = 0  # flex requests answered 429 "resource unavailable" (retried, no attempt used)
    fell_back: int = 0  # requests sent at the default tier after waiting `flex_fallback` on flex capacity
    errors: Counter[str] = field(default_factory=Counter)  # prompts failed, by error kind
    error_examples: dict[str, str] = field(default_factory=dict)  # the first message of each kind
    interrupted: bool = False
    abandoned: int = 0  # requests in flight when a second signal abandoned them (their answers lost)
    unfinished: int = 0  # pending in the file after the run
    in_batches: int = 0  # held by open batches at the provider after the run (a resume collects them)
    batches_submitted: int = 0  # batches this run submitted
    budget_reached: list[str] = field(default_factory=list)  # one line per job that reached its budget
    larger_budget: float | None = None  # then: a --max-cost that lets the next request of each go
    running_elsewhere: int = 0  # claimed by another process that is still working on them
    failed_total: int = 0  # failed in the file after the run

    @property
    def left(self) -> int:
        """Prompts not finished after the run: pending, in open batches, or being answered elsewhere."""
        return self.unfinished + self.in_batches + self.running_elsewhere

    @property
    def exit_code(self) -> int:
        if self.interrupted and self.left:  # interrupted with nothing left to do: as if it had ended
            return 130
        return 1 if self.failed_total or self.unfinished else 0  # prompts in open batches are on their way

    def __str__(self) -> str:
        """The readable text (what the command line prints); `repr()` stays the dataclass's."""
        from .reports.text import summary_lines

        return "\n".join(summary_lines(self))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text (a notebook's `text/plain`, the REPL): the readable text."""
        p.text(str(self))

    def _repr_html_(self) -> str:
        """Jupyter's HTML: a table of the figures, every name and message escaped."""
        from .reports.html import summary_html

        return summary_html(self)
