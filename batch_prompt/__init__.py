"""batch-prompt: query LLMs with large batches of prompts, resumably.

Data flow, one module per step: `spec` (with `templates`, `model_args`, `endpoints`) -> `expand` -> `store`
(SQLite, `schema` + migrations/) -> `runner` + `worker` (`client`, `retry`, `limiter`, `cache`, `progress`) ->
`results` (export). `cli` is the command line.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    BatchPromptError,
    CacheError,
    ConfigError,
    ExportError,
    FatalAPIError,
    JobConflictError,
    MissingFieldError,
    NotADatabaseError,
    SchemaTooNewError,
    SpecError,
    StoreError,
)
from .job import Job, aresume, create, resume, retry_failed
from .results import export, iter_results, load_results, to_dataframe
from .spec import Spec, load_spec

if TYPE_CHECKING:
    from .runner import RunOptions, RunSummary


def __getattr__(name: str) -> Any:
    """`RunOptions` and `RunSummary` load the runner (and the openai SDK) only when asked for."""
    if name in ("RunOptions", "RunSummary"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'batch_prompt' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "BatchPromptError",
    "CacheError",
    "ConfigError",
    "ExportError",
    "FatalAPIError",
    "Job",
    "JobConflictError",
    "MissingFieldError",
    "NotADatabaseError",
    "RunOptions",
    "RunSummary",
    "SchemaTooNewError",
    "Spec",
    "SpecError",
    "StoreError",
    "__version__",
    "aresume",
    "create",
    "export",
    "iter_results",
    "load_results",
    "load_spec",
    "resume",
    "retry_failed",
    "to_dataframe",
]
