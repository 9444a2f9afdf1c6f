"""The results: done rows -> the flat results list (one plain dict per choice), as a pickle or JSONL.

Export reads only the job database: no cache, no network, no key. Rows stream from SQLite and items
stream to the file (the pickle is a plain list written through `__reduce__`'s list-items iterator with
the memo off), then the file is renamed into place, so an export never leaves a half-written file.
A symlink is written through (its target replaced, the link kept); a device or FIFO (`-o /dev/stdout`)
is written directly. An export never overwrites the database it reads, nor any other SQLite file.

    python -m batch_prompt export jobs.db -o results.pkl [--format pickle|jsonl]
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ExportError, SpecError
from .expand import raw_messages
from .store import SQLITE_MAGIC, Store

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
    Raises `StoreError` for a bad database, `ExportError` when the file cannot be written or is a
    database (`db_path` itself, or any SQLite file).
    """
    if path is None:
        return list(iter_results(db_path))
    fmt = format or ("jsonl" if str(path).endswith(".jsonl") else "pickle")
    if fmt not in FORMATS:
        raise SpecError(f"unknown export format {fmt!r}: use 'pickle' or 'jsonl'")
    return write_results(iter_results(db_path), Path(path), fmt, db_path=db_path)


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


def write_results(
    items: Iterator[dict[str, Any]], path: Path, fmt: str, db_path: str | Path | None = None
) -> int:
    """Write `items` to `path` (through a symlink), replacing a regular file atomically.

    Raises `ExportError` when `path` cannot be written, or is `db_path` or any other SQLite database.
    """
    try:
        mode: int | None = os.stat(path).st_mode  # through symlinks
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):  # a device, a FIFO (or a folder: open fails)
        return _write_to(path, items, fmt, path)
    target = Path(os.path.realpath(path))
    _refuse_database(path, target, db_path)
    folder = target.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: folder {folder} does not exist")
    _remove_stale_temp_files(folder, target.name)
    tmp_name = str(folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        count = _write_to(Path(tmp_name), items, fmt, path, new=True)
        os.replace(tmp_name, target)
    except OSError as exc:
        _unlink(tmp_name)
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp_name)
        raise
    return count


def _write_to(file: Path, items: Iterator[dict[str, Any]], fmt: str, path: Path, new: bool = False) -> int:
    """Stream `items` into `file` (a new file: created with 0o666 less the umask, then synced)."""
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if new else os.O_TRUNC)
    try:
        with os.fdopen(os.open(file, flags, 0o666), "wb") as f:
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
            if new:
                os.fsync(f.fileno())
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return count


def _refuse_database(path: Path, target: Path, db_path: str | Path | None) -> None:
    """`target` (the resolved `path`) must not be the database exported, its journal, or any SQLite file."""
    if db_path is not None:
        db = os.path.realpath(db_path)
        same = str(target) == db
        if not same and target.exists() and os.path.exists(db_path):
            same = os.path.samefile(target, db_path)  # a hard link too
        if same or str(target) in (db + "-wal", db + "-shm", db + "-journal"):
            raise ExportError(
                f"cannot write {path}: it is the job database being exported (or its journal); "
                "refusing to overwrite a database"
            )
    try:
        with open(target, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError:  # missing or unreadable: nothing to protect that we could recognise
        return
    if head == SQLITE_MAGIC:
        raise ExportError(f"cannot write {path}: it is an SQLite database; refusing to overwrite a database")


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
