"""How to run (`RunOptions`) and what a run did (`RunSummary`): the data shared by the runner, the worker
pool and the entry points."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # for annotations only: importing this module must not load the SDK
    from .limiter import Limiter
    from .progress import Progress
    from .retry import RetryPolicy

MAX_CONCURRENCY = 10_000
FILES_BESIDES_CONNECTIONS = 64  # databases, their WAL and shared-memory files, the cache, stdio, the event loop


@dataclass
class RunOptions:
    """How to run. Every field has a CLI flag of the same name where it makes sense."""

    concurrency: int = 100
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    # False: fresh samples: no answer is taken from the cache (but one bought for this very row by a run
    # that died before recording it); responses are still written to it
    cache: bool = True
    cache_dir: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_attempts: int = 8
    quiet: bool = False
    progress: Progress | None = None
    retry: RetryPolicy | None = None
    limiter: Limiter | None = None
    lease_seconds: float = 300.0
    grace: float = 10.0  # seconds in-flight requests get to finish after a stop
    flush_interval: float = 0.2
    flush_batch: int = 256
    # Process-wide policy, which only the command line turns on (a notebook's `await job.arun()` did not
    # ask for it): SIGINT/SIGTERM handlers; raising the soft open-file limit to fit the connections;
    # keeping the garbage collector out of the event loop's way.
    handle_signals: bool = False
    raise_open_files: bool = False
    tune_gc: bool = False

    def validate(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, not {self.concurrency!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, not {value!r}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive, not {self.timeout!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be a positive integer, not {self.max_attempts!r}")
        if self.concurrency > MAX_CONCURRENCY:
            raise ConfigError(f"concurrency {self.concurrency} is more than {MAX_CONCURRENCY:,}")



@dataclass
class RunSummary:
    """What a run did. `exit_code`: 0 all done, 1 some prompts failed, 130 interrupted."""

    done: int = 0
    cached: int = 0
    failed: int = 0  # failed in this run
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # the tokens paid for at list price (tokens.PRICES); None: no model priced
    errors: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    unfinished: int = 0  # pending in the file after the run
    running_elsewhere: int = 0  # claimed by another process that is still working on them
    failed_total: int = 0  # failed in the file after the run

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed_total or self.unfinished else 0
