"""The results: done rows -> the flat results list (one plain dict per choice), and its export.

Export reads only the job database: no cache, no network, no key. Rows stream from SQLite and items
stream to the file (`writer.py`), so an export of a million prompts never sits in memory. The pickle
(the default) and JSONL hold the result items (DESIGN "The results format"); CSV, Parquet and SQLite hold
the same results as a flat table, one row per choice (`table.py`).

    python -m batch_prompt export jobs.db -o results.pkl [--format pickle|jsonl|csv|parquet|sqlite] [--job NAME]
"""

from __future__ import annotations

import json
import pickle
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..spec.expand import raw_messages
from ..store.database import SQLITE_MAGIC, DoneRow, JobRow, Store
from .table import Columns, columns_for_items, columns_for_specs, flat_row
from .writer import (
    FLAT_FORMATS,
    FORMATS,
    RESULTS_TABLE,
    format_for,
    is_results_database,
    require_pyarrow,
    write_results,
)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote, and what it left out: prompts failed, pending or running are not exported."""

    path: str
    format: str
    results: int  # items (or rows) written: one per choice
    failed: int
    pending: int
    running: int


def iter_results(db_path: str | Path, job: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield result items in stable order (job, template, keyword dict, model, sample, choice)."""
    with Store(db_path, create=False, readonly=True) as store:
        for row in _ready(store, job):
            for done in store.iter_done(row):
                yield from result_items(row.name, row.api, done)


def _ready(store: Store, job: str | None) -> list[JobRow]:
    return [row for row in store.select(job) if row.state == "ready"]


def result_items(job_name: str, api: str, row: DoneRow) -> list[dict[str, Any]]:
    template, keywords, request = json.loads(row.template), json.loads(row.keywords), json.loads(row.request)
    response = json.loads(row.response)
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
        item.update(choice=choice, completion=response, model_args=request, model=row.model,
                    prompt_hash=row.hash, job=job_name)
        items.append(item)
    return items


def iter_rows(store: Store, jobs: list[JobRow], columns: Columns) -> Iterator[dict[str, Any]]:
    """The flat table's rows of `jobs` (one per choice), with the row indexes from the database."""
    for job in jobs:
        for done in store.iter_done(job):
            indexes = (done.template_index, done.keywords_index, done.model_index, done.sample_index)
            for item in result_items(job.name, job.api, done):
                yield flat_row(item, columns, indexes)


def export(
    db_path: str | Path, path: str | Path | None = None, format: str | None = None, job: str | None = None
) -> list[dict[str, Any]] | ExportSummary:
    """Export every done prompt of every job in `db_path` (or of the job named `job`).

    Without `path`, returns the results list. With `path`, writes it (format from `format`, else from the
    suffix: `.pkl`/`.pickle`, `.jsonl`, `.csv`, `.parquet`, `.db`/`.sqlite`; anything else a pickle)
    atomically and returns an `ExportSummary`. Raises `StoreError` for a bad database (`JobNotFoundError`
    for an unknown `job`), `SpecError` for an unknown format, `ExportError` when the file cannot be
    written, is a database (`db_path` itself, or any SQLite file but an earlier results export), or
    needs pyarrow (parquet) that is not installed.
    """
    if path is None:
        return list(iter_results(db_path, job))
    fmt = format or format_for(path)
    if fmt not in FORMATS:
        raise SpecError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        require_pyarrow()
    with Store(db_path, create=False, readonly=True) as store:
        jobs = _ready(store, job)
        counts = [store.counts(row) for row in jobs]  # O(rows not done)
        jobs = [row for row, count in zip(jobs, counts, strict=True) if count["done"]]  # their keyword columns
        columns: Columns | None = None
        if fmt in FLAT_FORMATS:
            columns = columns_for_specs(row.spec for row in jobs)
            items = iter_rows(store, jobs, columns)
        else:
            items = (item for row in jobs for done in store.iter_done(row)
                     for item in result_items(row.name, row.api, done))
        written = write_results(items, Path(path), fmt, db_path=db_path, columns=columns)
    return ExportSummary(str(path), fmt, written, *(sum(c[k] for c in counts) for k in ("failed", "pending",
                                                                                          "running")))


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Load an export: a pickle or JSONL as its result items; a Parquet file or an SQLite results database
    as its rows (dicts of the flat table's columns; `json` columns as JSON text)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head[:1] == b"\x80":
            results: list[dict[str, Any]] = pickle.load(f)
            return results
        if head == SQLITE_MAGIC[:4] and is_results_database(path):
            return _sqlite_rows(path)
        if head == b"PAR1":
            require_pyarrow()
            import pyarrow.parquet as pq

            rows: list[dict[str, Any]] = pq.read_table(f).to_pylist()
            return rows
        return [json.loads(line) for line in f if line.strip()]


def _sqlite_rows(path: str | Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM {RESULTS_TABLE} ORDER BY rowid")]
    finally:
        conn.close()


def to_dataframe(results: list[dict[str, Any]] | str | Path) -> Any:
    """The results as a pandas DataFrame with the flat table's columns, one row per choice (needs pandas).

    `results` is a results list (its items are flattened; a list holds no row indexes, so the
    `template_index` ... `sample_index` columns are absent), rows loaded from a Parquet export, or a path:
    a job database (every column, row indexes too) or an export file (read with `load_results`).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install '.[pandas]' in a clone of batch-prompt") from None
    if isinstance(results, str | Path):
        with open(results, "rb") as f:
            is_db = f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        if is_db and not is_results_database(results):
            with Store(results, create=False) as store:
                jobs = [row for row in _ready(store, None) if store.counts(row)["done"]]
                columns = columns_for_specs(row.spec for row in jobs)
                return pd.DataFrame(list(iter_rows(store, jobs, columns)), columns=columns.names)
        results = load_results(results)
    if results and "choice" not in results[0]:  # already flat (Parquet rows)
        return pd.DataFrame(results)
    columns = columns_for_items(results)
    return pd.DataFrame([flat_row(item, columns) for item in results], columns=columns.names)
