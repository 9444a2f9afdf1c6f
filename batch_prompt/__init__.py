"""batch-prompt: query LLMs with large batches of prompts, resumably.

Data flow, one module per step: `spec` -> `expand` -> `store` (SQLite, `schema` + migrations/) ->
`runner` (`client`, `retry`, `limiter`, `cache`, `progress`) -> `export`. `cli` is the command line.
"""

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
from .export import export, iter_results, load_results, to_dataframe
from .job import Job, aresume, create, resume, retry_failed
from .runner import RunOptions, RunSummary
from .spec import Spec, load_spec

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
