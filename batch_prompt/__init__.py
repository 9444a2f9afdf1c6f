"""batch-prompt: query LLMs with large batches of prompts, resumably.

Data flow, one module per step: `spec` -> `expand` -> `store` (SQLite, `schema` + migrations/) ->
`runner` + `worker` (`client`, `retry`, `limiter`, `cache`, `progress`) -> `results` (export: `table`,
`writer`). Before a run `preview` estimates a spec; after, `report` tells where jobs stand; `pricing` prices
both. `cli` is the command line.
"""

from typing import TYPE_CHECKING, Any

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
    SchemaTooNewError,
    SpecError,
    StoreError,
)
from .job import Job, aresume, create, resume, retry_failed
from .pricing import Prices
from .report import ErrorGroup, JobStatus, ModelStatus, PromptView, show, status
from .results import ExportSummary, export, iter_results, load_results, to_dataframe
from .spec import Spec, load_spec

if TYPE_CHECKING:
    from .preview import Estimate, ModelEstimate, estimate
    from .runner import RunOptions, RunSummary


def __getattr__(name: str) -> Any:
    """`RunOptions` and `RunSummary` load the runner (and the openai SDK) only when asked for; `estimate`
    and its data classes load the cache (diskcache)."""
    if name in ("RunOptions", "RunSummary"):
        from . import runner

        return getattr(runner, name)
    if name in ("estimate", "Estimate", "ModelEstimate"):
        from . import preview

        return getattr(preview, name)
    raise AttributeError(f"module 'batch_prompt' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "BatchPromptError",
    "CacheError",
    "ConfigError",
    "ErrorGroup",
    "Estimate",
    "ExportError",
    "ExportSummary",
    "FatalAPIError",
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
    "RunOptions",
    "RunSummary",
    "SchemaTooNewError",
    "Spec",
    "SpecError",
    "StoreError",
    "__version__",
    "aresume",
    "create",
    "estimate",
    "export",
    "iter_results",
    "load_results",
    "load_spec",
    "resume",
    "retry_failed",
    "show",
    "status",
    "to_dataframe",
]
