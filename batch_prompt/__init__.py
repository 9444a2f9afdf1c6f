"""batch-prompt: query LLMs with large batches of prompts, resumably.

Data flow, one subpackage per stage: `spec/` (the spec, templates, model args, endpoints; `expand`) ->
`store/` (the SQLite job database: one module per table, migrations, leases, the response cache) -> `run/`
(the runner; live and batch lanes; limiter, retry, failures, ledger, budget, client) -> `results/` (export:
`table`, `writer`; `results/options`: probabilities over answer options). `reports/` estimates a spec
before a run, tells where jobs stand after, and prices both. `job` and `cli/` are the Python and
command-line entry points (`options`: how to run, what a run did); `testing/` holds the fake server.
"""

import typing

from .errors import (
    BatchPromptError,
    CacheError,
    ConfigError,
    ExportError,
    FatalAPIError,
    JobConflictError,
    JobNotFoundError,
    MissingFieldError,
    NotADatabaseError,
    RetryExhausted,
    SchemaTooNewError,
    SpecError,
    StoreError,
    UnknownFieldError,
)
from .job import Job, aresume, cancel, create, resume, retry_failed
from .options import CancelResult, RunArgs, RunOptions, RunSummary
from .reports.estimate import Estimate, ModelEstimate, estimate
from .reports.prices import Prices, Rate
from .reports.status import BatchStatus, ErrorGroup, GroupStatus, JobStatus, ModelStatus, PromptView, show, status
from .results.export import ExportSummary, export, iter_results, load_results, to_dataframe
from .results.options import option_probs
from .spec.spec import Spec, load_spec


def __getattr__(name: str) -> typing.Any:
    """`__version__`, read from the installed package's metadata on first use (`version.py`)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .version import version

    globals()["__version__"] = found = version()
    return found


__all__ = [
    "BatchPromptError",
    "BatchStatus",
    "CacheError",
    "CancelResult",
    "ConfigError",
    "ErrorGroup",
    "Estimate",
    "ExportError",
    "ExportSummary",
    "FatalAPIError",
    "GroupStatus",
    "Job",
    "JobConflictError",
    "JobNotFoundError",
    "JobStatus",
    "MissingFieldError",
    "ModelEstimate",
    "ModelStatus",
    "NotADatabaseError",
    "Prices",
    "PromptView",
    "Rate",
    "RetryExhausted",
    "RunArgs",
    "RunOptions",
    "RunSummary",
    "SchemaTooNewError",
    "Spec",
    "SpecError",
    "StoreError",
    "UnknownFieldError",
    "__version__",
    "aresume",
    "cancel",
    "create",
    "estimate",
    "export",
    "iter_results",
    "load_results",
    "load_spec",
    "option_probs",
    "resume",
    "retry_failed",
    "show",
    "status",
    "to_dataframe",
]
