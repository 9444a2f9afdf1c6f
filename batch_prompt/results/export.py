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
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..spec.expand import PROMPT_KEYS, raw_messages
from ..spec.parse import Parser, text_kind, typed
from ..store.database import SQLITE_MAGIC, DoneRow, JobRow, Store
from ..version import version
from .responses import as_chat
from .table import (
    FIXED_TYPES,
    INDEX_COLUMNS,
    Columns,
    choice_text,
    columns_for_items,
    columns_for_specs,
    flat_row,
    kind_of,
    merge_kinds,
)
from .writer import (
    FLAT_FORMATS,
    FORMATS,
    MANIFEST_KEY,
    RESULTS_TABLE,
    format_for,
    is_results_database,
    read_manifest,
    require_pyarrow,
    write_results,
)

INCLUDE = ("failed", "pending")  # what `include` may name; `pending` takes the running (unfinished) rows too


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote, and what it left out: prompts failed, pending or running are not exported
    unless `include` names them (then `included` counts them: rows without a choice)."""

    path: str
    format: str
    results: int  # items (or rows) written: one per choice, and one per failed or pending prompt included
    failed: int
    pending: int
    running: int
    included: tuple[str, ...] = ()  # the statuses exported besides done


@dataclass
class _Plan:
    """What one export reads: the jobs, the statuses besides done, each job's parser, and the parsed
    fields' types over every job (None: no job parses)."""

    jobs: list[JobRow]
    include: tuple[str, ...]
    parsers: dict[int, Parser] = field(default_factory=dict)
    parsed: dict[str, str] | None = None

    def items(self, store: Store) -> Iterator[tuple[list[dict[str, Any]], DoneRow]]:
        for job in self.jobs:
            parser = self.parsers.get(job.id)
            for row in store.iter_done(job, include=self.include):
                yield result_items(job.name, job.api, row, parser, self.parsed, bool(self.include)), row


def check_include(include: str | Iterable[str] | None) -> tuple[str, ...]:
    """`include` (`"failed,pending"`, or a list) as the row statuses to export besides done. Raises
    `SpecError` naming an unknown one."""
    if include is None:
        return ()
    names = [n.strip() for n in (include.split(",") if isinstance(include, str) else include) if n.strip()]
    for name in names:
        if name not in INCLUDE:
            raise SpecError(f"unknown include {name!r}: use failed, pending or both (failed,pending)")
    statuses = [s for s in ("failed", "pending") if s in names]
    return (*statuses, "running") if "pending" in statuses else tuple(statuses)


def _plan(store: Store, job: str | None, include: tuple[str, ...]) -> tuple[_Plan, list[dict[str, int]]]:
    """The plan of an export (jobs with nothing to export left out: their columns would be noise), and the
    counts by status of every ready job."""
    jobs = [row for row in store.select(job) if row.state == "ready"]
    counts = [store.counts(row) for row in jobs]  # O(rows not done)
    wanted = ("done", *include)
    jobs = [row for row, count in zip(jobs, counts, strict=True) if any(count.get(s) for s in wanted)]
    plan = _Plan(jobs, include)
    for row in jobs:
        parser = Parser.of(row.spec)
        if parser is not None:
            plan.parsers[row.id] = parser
    if plan.parsers:
        plan.parsed = _parsed_types(store, plan)
    return plan, counts


def _parsed_types(store: Store, plan: _Plan) -> dict[str, str]:
    """The parsed fields over every job and their column types: a schema's, else those of the values
    (a regex group's text: `int` when every value is an integer, `float` when every one is a number, else
    `str`). One pass over the answers, before any is written (a file's columns are fixed first)."""
    kinds: dict[str, set[str]] = {}
    fixed: dict[str, str] = {}
    for job in plan.jobs:
        parser = plan.parsers.get(job.id)
        if parser is None:
            continue
        for name, kind in parser.fields:
            kinds.setdefault(name, set())
            if kind is not None:
                fixed[name] = kind
        if parser.schema is not None:
            continue
        for text in answer_texts(store, job):
            parsed, _ = parser.parse(text)
            for name, value in (parsed or {}).items():
                seen = kinds.setdefault(name, set())
                if value is not None:
                    seen.add(text_kind(value) if parser.regex else kind_of(value))
            if parser.regex and all("str" in kinds[name] for name, _ in parser.fields):
                break  # every group has text that is not a number: the columns are text whatever follows
    types = {}
    for name, seen in kinds.items():
        if name in fixed:
            types[name] = fixed[name]
        elif "str" in seen and seen <= {"int", "float", "str"}:
            types[name] = "str"  # a regex group's text that is not always a number
        else:
            types[name] = merge_kinds(seen)
    return types


_TEXTS = (  # each done row's choices in the items' order: (id, chat content, completions text, the choice)
    "SELECT p.id, CASE WHEN json_type(c.value, '$.message.content') = 'text'"
    " THEN json_extract(c.value, '$.message.content') END,"
    " CASE WHEN json_type(c.value, '$.message') IS NULL AND json_type(c.value, '$.text') = 'text'"
    " THEN json_extract(c.value, '$.text') END, c.value"
    " FROM (SELECT id, response FROM prompts WHERE job_id = ? AND status = 'done' AND id > ? ORDER BY id LIMIT ?) p,"
    " json_each(p.response, '$.choices') c ORDER BY p.id, coalesce(json_extract(c.value, '$.index'), 0), c.key"
)


def answer_texts(store: Store, job: JobRow, chunk: int = 2000) -> Iterator[str]:
    """The text of every choice of the job's done rows (`choice_text`), in the items' order; SQLite reads
    it out of the stored responses (faster than decoding each one here); a Responses API job's answers
    through `as_chat`, the one mapping of them."""
    if job.api == "responses":
        for row in store.iter_done(job):
            choices = as_chat(json.loads(row.response)).get("choices") or []
            yield from (choice_text(c) for c in sorted(choices, key=lambda c: c.get("index", 0)))
        return
    last = 0
    while True:
        rows = store.query(_TEXTS, (job.id, last, chunk))
        if not rows:
            return
        for _id, content, text, choice in rows:
            found = content if content is not None else text
            yield found if found is not None else choice_text(json.loads(choice))
        last = rows[-1][0]


def iter_results(db_path: str | Path, job: str | None = None,
                 include: str | Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield result items in stable order (job, template, keyword dict, model, sample, choice); with
    `include` (`"failed,pending"`), an item for each failed or pending prompt too, in its place."""
    statuses = check_include(include)
    with Store(db_path, create=False, readonly=True) as store:
        plan, _ = _plan(store, job, statuses)
        for items, _row in plan.items(store):
            yield from items


def result_items(job_name: str, api: str, row: DoneRow, parser: Parser | None = None,
                 parsed_types: dict[str, str] | None = None, status: bool = False) -> list[dict[str, Any]]:
    """A row's result items: one per choice of a done row; one, without `choice` and `completion`, for a
    failed or unfinished row (with `status`, `error_kind`, `error`). `status`: items say their status."""
    template, keywords, request = json.loads(row.template), json.loads(row.keywords), json.loads(row.request)
    rendered = request.pop(PROMPT_KEYS.get(api, "prompt"))
    request.pop("model", None)
    base: dict[str, Any] = {}
    if api != "completions":  # chat, and the Responses API's `input` (its items are messages too)
        if isinstance(rendered, str):
            rendered = raw_messages(rendered)
        base.update(messages=rendered, messages_raw=raw_messages(template), messages_args=keywords)
    else:
        base.update(prompt=rendered, prompt_raw=template, prompt_args=keywords)
    ids = dict(model_args=request, model=row.model, prompt_hash=row.hash, job=job_name,
               **dict(zip(INDEX_COLUMNS, (row.template_index, row.keywords_index, row.model_index,
                                          row.sample_index), strict=True)))
    if row.status != "done" or row.response is None:  # a job that parses: nothing parsed (no answer)
        unparsed = {} if parser is None else {"parsed": None, "parse_error": None}
        shown = "pending" if row.status == "running" else row.status  # unfinished: held by a run, or left by one
        return [{**base, **ids, **unparsed, "status": shown, "error_kind": row.error_kind, "error": row.error}]
    response = as_chat(json.loads(row.response))
    choices = sorted(response.pop("choices"), key=lambda c: c.get("index", 0))
    items = []
    for choice in choices:
        item: dict[str, Any] = {**base, "choice": choice, "completion": response, **ids}
        if parser is not None:
            parsed, error = parser.parse(choice_text(choice))
            if parsed is not None and parsed_types:
                parsed = {name: typed(value, parsed_types.get(name, "json")) for name, value in parsed.items()}
            item.update(parsed=parsed, parse_error=error)
        if status:
            item["status"] = "done"
        items.append(item)
    return items


def _rows(store: Store, plan: _Plan, columns: Columns) -> Iterator[dict[str, Any]]:
    """The flat table's rows (one per choice; one per failed or pending prompt included)."""
    for items, _row in plan.items(store):
        for item in items:
            yield flat_row(item, columns, len(items))


def _manifest(plan: _Plan, columns: Columns | None) -> dict[str, Any]:
    """What an export says about itself: the package version, each job's spec, when, and its columns."""
    return {"package_version": version(), "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "jobs": [{"name": job.name, "spec": job.spec} for job in plan.jobs],
            "columns": None if columns is None else columns.types}


def export(
    db_path: str | Path, path: str | Path | None = None, format: str | None = None, job: str | None = None,
    include: str | Iterable[str] | None = None,
) -> list[dict[str, Any]] | ExportSummary:
    """Export every done prompt of every job in `db_path` (or of the job named `job`); with `include`
    (`"failed,pending"`, or either), the failed or pending prompts too, one item or row each, with their
    `status`, `error_kind` and `error`.

    Without `path`, returns the results list. With `path`, writes it (format from `format`, else from the
    suffix: `.pkl`/`.pickle`, `.jsonl`, `.csv`, `.parquet`, `.db`/`.sqlite`; anything else a pickle)
    atomically and returns an `ExportSummary`. Raises `StoreError` for a bad database (`JobNotFoundError`
    for an unknown `job`), `SpecError` for an unknown format or `include`, `ExportError` when the file
    cannot be written, is a database (`db_path` itself, or any SQLite file but an earlier results export),
    or needs pyarrow (parquet) that is not installed.
    """
    statuses = check_include(include)
    if path is None:
        return list(iter_results(db_path, job, include))
    fmt = format or format_for(path)
    if fmt not in FORMATS:
        raise SpecError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        require_pyarrow()
    with Store(db_path, create=False, readonly=True) as store:
        plan, counts = _plan(store, job, statuses)
        columns: Columns | None = None
        if fmt in FLAT_FORMATS:
            columns = columns_for_specs((row.spec for row in plan.jobs), plan.parsed, bool(statuses))
            items = _rows(store, plan, columns)
        else:
            items = (item for found, _row in plan.items(store) for item in found)
        written = write_results(items, Path(path), fmt, db_path=db_path, columns=columns,
                                manifest=_manifest(plan, columns))
    failed, pending, running = (sum(c[k] for c in counts) for k in ("failed", "pending", "running"))
    return ExportSummary(str(path), fmt, written, failed, pending, running,
                         included=tuple(s for s in INCLUDE if s in statuses))


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Load an export: a pickle or JSONL as its result items; a CSV, Parquet or SQLite export as its rows
    (dicts of the flat table's columns), each column's values of its one type whatever the format:
    `json` columns (`first_token_top_logprobs`, a keyword field of lists) decoded, booleans as booleans,
    and a CSV's text read as the column's type (an empty cell is None, but in text columns)."""
    with open(path, "rb") as f:
        head = f.read(64)
        f.seek(0)
        if head[:1] == b"\x80":
            results: list[dict[str, Any]] = pickle.load(f)
            return results
        if head.startswith(SQLITE_MAGIC[:4]) and is_results_database(path):
            rows, types = _sqlite_rows(path)
            return _typed(rows, types)
        if head.startswith(b"PAR1"):
            require_pyarrow()
            import pyarrow.parquet as pq

            table = pq.read_table(f)
            manifest = json.loads((table.schema.metadata or {}).get(MANIFEST_KEY, b"{}"))
            return _typed(table.to_pylist(), manifest.get("columns") or {})
        if Path(path).suffix.lower() == ".csv" or head.startswith(b"job,prompt_hash,"):
            return _csv_rows(f)
        return [json.loads(line) for line in f if line.strip()]


def _sqlite_rows(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    conn = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute(f"SELECT * FROM {RESULTS_TABLE} ORDER BY rowid")]
        return rows, (read_manifest(conn) or {}).get("columns") or {}
    finally:
        conn.close()


def _typed(rows: list[dict[str, Any]], types: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of a Parquet or SQLite export with each column's type restored (`json` decoded, `bool` from
    SQLite's 0/1); a column the manifest does not name (an export before it) by its fixed type."""
    kinds = {name: types.get(name) or FIXED_TYPES.get(name) for name in (rows[0] if rows else ())}
    decode = {name: kind for name, kind in kinds.items() if kind in ("json", "bool")}
    if not decode:
        return rows
    for row in rows:
        for name, kind in decode.items():
            value = row.get(name)
            if kind == "json" and isinstance(value, str):
                row[name] = _json_or_text(value)
            elif kind == "bool" and isinstance(value, int) and not isinstance(value, bool):
                row[name] = bool(value)
    return rows


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:  # a `json` column holds text as itself
        return value


def _csv_rows(f: Any) -> list[dict[str, Any]]:
    """A CSV export's rows, each column read as its type: a fixed column's, else the one every value
    reads as (integers, numbers, booleans, JSON lists or objects, else text)."""
    import csv
    import io

    reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
    rows: list[dict[str, Any]] = list(reader)
    for name in reader.fieldnames or ():
        values = [row[name] for row in rows if row[name] != ""]
        kind = FIXED_TYPES.get(name) or _text_column_kind(values)
        for row in rows:
            row[name] = _from_text(row[name], kind, name)
    for row in rows:
        if row.get("status") not in (None, "done"):
            row["text"] = None  # a prompt not done has no answer (not an empty one)
    return rows


def _text_column_kind(values: list[str]) -> str:
    kinds = {text_kind(v) for v in values}
    if kinds and kinds <= {"int", "float"}:
        return "float" if "float" in kinds else "int"
    if values and all(v in ("True", "False") for v in values):
        return "bool"
    if any(v[:1] in ('[', '{', '"') for v in values) and all(_is_json(v) for v in values):
        return "json"  # JSON text of lists, objects, or text mixed with numbers
    return "str"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _from_text(text: str, kind: str, name: str) -> Any:
    if text == "":
        return "" if kind == "str" and name in _TEXT_COLUMNS else None
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        return text == "True"
    if kind == "json":
        return _json_or_text(text)
    return text


_TEXT_COLUMNS = {"template", "prompt", "text"}  # where an empty cell is empty text, not nothing


def to_dataframe(results: list[dict[str, Any]] | str | Path) -> Any:
    """The results as a pandas DataFrame with the flat table's columns, one row per choice (needs pandas).

    `results` is a results list (its items are flattened), rows loaded from a CSV, Parquet or SQLite
    export, or a path: a job database (every column) or an export file (read with `load_results`). Each
    column holds one type whatever the source (`first_token_top_logprobs`: a dict).
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
                plan, _ = _plan(store, None, ())
                columns = columns_for_specs((row.spec for row in plan.jobs), plan.parsed)
                return _frame(pd, list(_rows(store, plan, columns)), columns.types)
        results = load_results(results)
    if results and "choice_index" in results[0]:  # already flat (export rows)
        kinds: dict[str, set[str]] = {}
        for row in results:
            for name, value in row.items():
                kinds.setdefault(name, set()).add(kind_of(value))
        return _frame(pd, results, {name: FIXED_TYPES.get(name) or merge_kinds(k) for name, k in kinds.items()})
    columns = columns_for_items(results)
    per_request = Counter(_request_of(item) for item in results)
    return _frame(pd, [flat_row(item, columns, per_request[_request_of(item)]) for item in results], columns.types)


def _frame(pd: Any, rows: list[dict[str, Any]], types: dict[str, str]) -> Any:
    """The rows as a DataFrame whose columns keep their type with gaps in them: `int` columns are pandas'
    nullable `Int64` (not floats), `bool` columns `boolean`."""
    frame = pd.DataFrame(rows, columns=list(types))
    nullable = {name: {"int": "Int64", "bool": "boolean"}[kind] for name, kind in types.items()
                if kind in ("int", "bool")}
    return frame.astype(nullable) if nullable else frame


def _request_of(item: dict[str, Any]) -> tuple[Any, ...]:
    """What the items of one prompt's response share (their usage is that one response's)."""
    completion = item.get("completion") or {}
    return (item.get("job"), item.get("prompt_hash"), *(item.get(name) for name in INDEX_COLUMNS),
            completion.get("id"))
