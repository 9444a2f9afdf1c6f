"""The results: done rows -> the flat results list (one plain dict per choice), as a pickle or JSONL.

Export reads only the job database: no cache, no network, no key. Rows stream from SQLite and items
stream to the file (the pickle is a plain list written through `__reduce__`'s list-items iterator with
the memo off), then the file is renamed into place, so an export never leaves a half-written file.

    python -m batch_prompt export jobs.db -o results.pkl [--format pickle|jsonl]
    python -m batch_prompt.export jobs.db -o results.pkl      (the same; see export.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ExportError, SpecError
from .expand import raw_messages
from .store import Store

FORMATS = ("pickle", "jsonl")


def iter_results(db_path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield result items in stable order (job, template, keyword dict, model, sample, choice)."""
    with Store(db_path, create=False) as store:
        for job in store.jobs():
            if job.state != "ready":
                continue
            for row in store.iter_done(job):
                yield from result_items(job.name, job.api, row)


def result_items(job_name: str, api: str, row: tuple[Any, ...]) -> list[dict[str, Any]]:
    _, prompt_hash, model, template_json, keywords_json, request_json, response_json = row
    template, keywords, request = json.loads(template_json), json.loads(keywords_json), json.loads(request_json)
    response = json.loads(response_json)
    choices = sorted(response.pop("choices"), key=lambda c: c.get("index", 0))
    key = "messages" if api == "chat" else "prompt"
    rendered = request.pop(key)
    request.pop("model", None)
    items = []
    for choice in choices:
        item: dict[str, Any] = {}
        if api == "chat":
            item.update(messages=rendered, messages_raw=raw_messages(template), messages_args=keywords)
        else:
            item.update(prompt=rendered, prompt_raw=template, prompt_args=keywords)
        item.update(choice=choice, completion=response, model_args=request, model=model,
                    prompt_hash=prompt_hash, job=job_name)
        items.append(item)
    return items


def export(
    db_path: str | Path, path: str | Path | None = None, format: str | None = None
) -> list[dict[str, Any]] | int:
    """Export every done prompt of every job in `db_path`.

    Without `path`, returns the results list. With `path`, writes it (format from `format`, else from
    the suffix: `.jsonl` is JSONL, anything else a pickle) atomically and returns the number of items.
    Raises `StoreError` for a bad database, `ExportError` when the file cannot be written.
    """
    if path is None:
        return list(iter_results(db_path))
    fmt = format or ("jsonl" if str(path).endswith(".jsonl") else "pickle")
    if fmt not in FORMATS:
        raise SpecError(f"unknown export format {fmt!r}: use 'pickle' or 'jsonl'")
    return write_results(iter_results(db_path), Path(path), fmt)


class _StreamedList:
    """Pickles as a plain `list` whose items come from an iterator, so they are never all in memory."""

    def __init__(self, items: Iterator[dict[str, Any]]) -> None:
        self.items = items
        self.count = 0

    def _counted(self) -> Iterator[dict[str, Any]]:
        for item in self.items:
            self.count += 1
            yield item

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (), None, self._counted())


def write_results(items: Iterator[dict[str, Any]], path: Path, fmt: str) -> int:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: folder {folder} does not exist")
    _remove_stale_temp_files(folder, path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if fmt == "pickle":
                streamed = _StreamedList(items)
                pickler = pickle.Pickler(f, protocol=4)
                pickler.fast = True  # no memo: it would keep every item alive
                pickler.dump(streamed)
                count = streamed.count
            else:
                count = 0
                for item in items:
                    f.write(json.dumps(item, ensure_ascii=False).encode() + b"\n")
                    count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        _unlink(tmp_name)
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp_name)
        raise
    return count


def _remove_stale_temp_files(folder: Path, name: str) -> None:
    """Temp files of exports killed before their rename: those whose process is gone."""
    for stale in folder.glob(f".{name}.*.tmp"):
        pid = stale.name[len(name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc/self").exists():
            _unlink(str(stale))


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Load an export written in any format (pickle or JSONL)."""
    with open(path, "rb") as f:
        head = f.read(1)
        f.seek(0)
        if head == b"\x80":
            results: list[dict[str, Any]] = pickle.load(f)
            return results
        return [json.loads(line) for line in f if line.strip()]


def to_dataframe(results: list[dict[str, Any]]) -> Any:
    """The results as a pandas DataFrame, one row per choice (needs pandas installed)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install 'batch-prompt[pandas]'") from None
    return pd.DataFrame(results)
