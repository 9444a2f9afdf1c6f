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
    ├── UnknownFieldError            `status --by FIELD`: no job has that field (`field`, `available`)
    ├── CacheError                   the response cache cannot be written (disk full, ...)
    ├── FatalAPIError                the API refused the run (401/403, quota); rows left unfinished
    ├── RetryExhausted               a request failed on every attempt allowed (`last`, `attempts`); its
    │                                prompt fails, the run goes on (never reaches the CLI)
    └── ExportError                  the export destination cannot be written

Each class's docstring is its default message; what an error is about is in typed attributes, set by its
constructor's keyword arguments (`StoreError(message, path=...)`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class BatchPromptError(Exception):
    """batch-prompt failed."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class SpecError(BatchPromptError):
    """The job spec is invalid."""


class MissingFieldError(SpecError):
    """A template field is missing from a keyword dict."""

    def __init__(self, message: str | None = None, *, template: str | list[dict[str, str]], field: str) -> None:
        super().__init__(message)
        self.template, self.field = template, field


class JobConflictError(BatchPromptError):
    """A job with this name already exists with a different spec."""

    def __init__(self, message: str | None = None, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class StoreError(BatchPromptError):
    """The job database cannot be used."""

    def __init__(self, message: str | None = None, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class NotADatabaseError(StoreError):
    """The file is not a batch-prompt job database."""


class SchemaTooNewError(StoreError):
    """The job database was written by a newer batch-prompt; upgrade batch-prompt to read it."""


class JobNotFoundError(StoreError):
    """No job of that name in the job database."""

    def __init__(self, message: str | None = None, *, name: str, path: str) -> None:
        super().__init__(message, path=path)
        self.name = name


class ConfigError(BatchPromptError):
    """The run configuration is invalid."""

    def __init__(self, message: str | None = None, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint  # the base URL it is about, when it is about one


class UnknownFieldError(BatchPromptError):
    """No job in the job database has that keyword field to group by."""

    def __init__(self, message: str | None = None, *, field: str, available: tuple[str, ...]) -> None:
        super().__init__(message)
        self.field, self.available = field, available  # `available`: what may be asked for instead


class CacheError(BatchPromptError):
    """The response cache cannot be written; the run stops before paying for answers it cannot keep."""


class FatalAPIError(BatchPromptError):
    """The API refused the run; nothing more can succeed until that is fixed."""

    def __init__(self, message: str | None = None, *, status_code: int | None = None,
                 endpoint: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.endpoint = endpoint  # the base URL that refused it


class RetryExhausted(BatchPromptError):
    """A request failed on every attempt allowed."""

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.last, self.attempts = last, attempts


class ExportError(BatchPromptError):
    """The export could not be written."""


def read_text(path: Path, what: str, error: Callable[[str], BatchPromptError]) -> str:
    """A file's UTF-8 text, or `error` ("<what> not found: PATH", "cannot read <what> PATH: why")."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None


def shown(value: Any, limit: int = 60) -> str:
    """`value` as a message quotes it: JSON (a string as its repr), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr) if not isinstance(value, str) else repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str(), or a value that contains itself
        text = f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."
