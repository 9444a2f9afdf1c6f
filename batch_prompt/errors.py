"""The exceptions batch-prompt raises. One root, a small tree, data as attributes.

    BatchPromptError                 root; the CLI maps it to exit code 2 unless noted
    ├── SpecError                    a spec (file, dict or keyword arguments) is invalid
    │   └── MissingFieldError        a template field is absent from a keyword dict
    ├── JobConflictError             same job name, different spec
    ├── StoreError                   the job database cannot be used
    │   ├── NotADatabaseError        the path is not a batch-prompt database
    │   ├── SchemaTooNewError        written by a newer batch-prompt
    │   └── JobNotFoundError         no job of that name in the database
    ├── ConfigError                  run options: no API key, bad base URL, ...
    ├── CacheError                   the response cache cannot be written (disk full, ...)
    ├── FatalAPIError                the API refused the run (401/403, quota); rows left unfinished
    ├── RetryExhausted               a request failed on every attempt allowed (`last`, `attempts`); its
    │                                prompt fails, the run goes on (never reaches the CLI)
    └── ExportError                  the export destination cannot be written

Each class's docstring is its default message.
"""

from __future__ import annotations

import json
from typing import Any


class BatchPromptError(Exception):
    """batch-prompt failed."""

    def __init__(self, message: str | None = None, **data: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        for key, value in data.items():
            setattr(self, key, value)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class SpecError(BatchPromptError):
    """The job spec is invalid."""


class MissingFieldError(SpecError):
    """A template field is missing from a keyword dict."""

    template: str
    field: str


class JobConflictError(BatchPromptError):
    """A job with this name already exists with a different spec."""

    name: str


class StoreError(BatchPromptError):
    """The job database cannot be used."""

    path: str


class NotADatabaseError(StoreError):
    """The file is not a batch-prompt job database."""


class SchemaTooNewError(StoreError):
    """The job database was written by a newer batch-prompt; upgrade batch-prompt to read it."""


class JobNotFoundError(StoreError):
    """No job of that name in the job database."""

    name: str


class ConfigError(BatchPromptError):
    """The run configuration is invalid."""


class CacheError(BatchPromptError):
    """The response cache cannot be written; the run stops before paying for answers it cannot keep."""


class FatalAPIError(BatchPromptError):
    """The API refused the run; nothing more can succeed until that is fixed."""

    status_code: int | None


class RetryExhausted(BatchPromptError):
    """A request failed on every attempt allowed."""

    last: BaseException
    attempts: int

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}", last=last, attempts=attempts)


class ExportError(BatchPromptError):
    """The export could not be written."""


def shown(value: Any, limit: int = 60) -> str:
    """`value` as a message quotes it: JSON (a string as its repr), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr) if not isinstance(value, str) else repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str(), or a value that contains itself
        text = f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."
