"""The results writer: result items or flat rows -> a file in one of the export formats, atomically.

Items or rows stream in (never all in memory) and go to a temp file beside the destination, which is
synced and renamed into place, so an export never leaves a half-written file. A symlink is written
through (its target replaced, the link kept); a device or FIFO (`-o /dev/stdout`) is written directly
(not `sqlite`, which needs a file). An export never overwrites the database it reads, nor any other
SQLite file but a results database an earlier export wrote (marked with its `application_id`).

Formats: `pickle` (a plain list, written through `__reduce__`'s list-items iterator with the memo off),
`jsonl` (one item per line), and from flat rows (`table.py`): `csv`, `parquet` (pyarrow, row groups of
`PARQUET_ROWS`) and `sqlite` (a `results` table written with sqlite-utils, for SQL and Datasette).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..store.database import SQLITE_MAGIC
from ..store.leases import process_gone
from .table import Columns, row_cells

FORMATS = ("pickle", "jsonl", "csv", "parquet", "sqlite")
FLAT_FORMATS = ("csv", "parquet", "sqlite")
SUFFIXES = {".pkl": "pickle", ".pickle": "pickle", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite"}
RESULTS_APPLICATION_ID = 0x62707273  # "bprs": PRAGMA application_id of a results database we wrote
RESULTS_TABLE = "results"
PARQUET_ROWS = 10_000
MANIFEST_KEY = b"batch_prompt"  # the Parquet key-value metadata holding the manifest (JSON)
MANIFEST_TABLE = "manifest"  # a results database's (key, value) table: the manifest's keys, values as JSON
PARQUET_HINT = "pip install 'batch-prompt[parquet]' (in a checkout: pip install '.[parquet]')"


def format_for(path: str | Path) -> str:
    """The format a destination's suffix names; anything else is a pickle, the standard."""
    return SUFFIXES.get(Path(path).suffix.lower(), "pickle")


def require_pyarrow() -> None:
    """Raise `ExportError` naming the extra to install when pyarrow is missing."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ExportError(f"export --format parquet needs pyarrow: {PARQUET_HINT}") from None


def write_results(
    items: Iterator[dict[str, Any]], path: Path, fmt: str, db_path: str | Path | None = None,
    columns: Columns | None = None, manifest: dict[str, Any] | None = None,
) -> int:
    """Write `items` (result items; flat rows of `columns` for csv, parquet, sqlite) to `path`, replacing
    a regular file atomically; returns how many were written. `manifest` (the package version, each
    job's spec, the export's time and columns) goes into a Parquet file's key-value metadata
    (`MANIFEST_KEY`) and a results database's `manifest` table.

    Raises `ExportError` when `path` cannot be written, or is `db_path` or another SQLite database.
    """
    try:
        mode: int | None = os.stat(path).st_mode  # through symlinks
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):  # a device, a FIFO (or a folder: open fails)
        if fmt == "sqlite":
            raise ExportError(f"cannot write {path}: an SQLite export needs a regular file")
        return _write_to(path, items, fmt, path, columns, manifest)
    target = Path(os.path.realpath(path))
    _refuse_database(path, target, db_path)
    folder = target.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: folder {folder} does not exist")
    _remove_stale_temp_files(folder, target.name)
    tmp_name = str(folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if fmt == "sqlite":
            assert columns is not None
            count = _write_sqlite(Path(tmp_name), items, columns, manifest)
        else:
            count = _write_to(Path(tmp_name), items, fmt, path, columns, manifest, new=True)
        os.replace(tmp_name, target)
    except OSError as exc:
        _unlink(tmp_name)
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp_name)
        raise
    return count


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


def _write_to(
    file: Path, items: Iterator[dict[str, Any]], fmt: str, path: Path, columns: Columns | None,
    manifest: dict[str, Any] | None, new: bool = False,
) -> int:
    """Stream `items` into `file` (a new file: created with 0o666 less the umask, then synced)."""
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if new else os.O_TRUNC)
    count = 0
    try:
        with os.fdopen(os.open(file, flags, 0o666), "wb") as f:
            if fmt == "pickle":
                streamed = _StreamedList(items)
                pickler = pickle.Pickler(f, protocol=4)
                pickler.fast = True  # no memo: it would keep every item alive
                pickler.dump(streamed)
                count = streamed.count
            elif fmt == "jsonl":
                for item in items:
                    f.write(json.dumps(item, ensure_ascii=False).encode() + b"\n")
                    count += 1
            elif fmt == "csv":
                assert columns is not None
                count = _write_csv(f, items, columns)
            else:
                assert columns is not None
                count = _write_parquet(f, items, columns, manifest)
            f.flush()
            if new:
                os.fsync(f.fileno())
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return count


def _write_csv(f: Any, rows: Iterator[dict[str, Any]], columns: Columns) -> int:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
    types = columns.types
    writer = csv.writer(text)
    writer.writerow(types)
    cells = row_cells(types)
    count = 0
    for row in rows:
        writer.writerow(cells(row))
        count += 1
    text.flush()
    text.detach()  # the caller owns and closes the binary file
    return count


def _write_parquet(f: Any, rows: Iterator[dict[str, Any]], columns: Columns, manifest: dict[str, Any] | None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = {"str": pa.string(), "json": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    types = columns.types
    metadata = None if manifest is None else {MANIFEST_KEY: json.dumps(manifest, ensure_ascii=False).encode()}
    schema = pa.schema([(name, arrow[kind]) for name, kind in types.items()], metadata=metadata)
    count = 0
    with pq.ParquetWriter(f, schema) as writer:
        cells = row_cells(types)
        for batch in _batches(rows, PARQUET_ROWS):
            table = list(zip(*map(cells, batch), strict=True))  # column by column
            data = {name: list(values) for name, values in zip(types, table, strict=True)}
            writer.write_table(pa.table(data, schema=schema))
            count += len(batch)
        if count == 0:
            writer.write_table(schema.empty_table())
    return count


def _write_sqlite(file: Path, rows: Iterator[dict[str, Any]], columns: Columns, manifest: dict[str, Any] | None) -> int:
    import sqlite_utils

    types = columns.types
    affinity = {"str": str, "json": str, "int": int, "float": float, "bool": int}
    db = sqlite_utils.Database(str(file), execute_plugins=False)
    count = 0
    try:
        db.execute(f"PRAGMA application_id = {RESULTS_APPLICATION_ID}")
        # a temp file, thrown away on any failure and synced once when whole: no journal, no syncs
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        table = db.table(RESULTS_TABLE)
        table.create({name: affinity[kind] for name, kind in types.items()})
        cells = row_cells(types)
        for batch in _batches(rows, 2000):
            table.insert_all(
                (dict(zip(types, cells(row), strict=True)) for row in batch),
                batch_size=len(batch), alter=False,
            )
            count += len(batch)
        if manifest is not None:
            db.table(MANIFEST_TABLE).insert_all(
                ({"key": key, "value": json.dumps(value, ensure_ascii=False)} for key, value in manifest.items()),
                pk="key")
    finally:
        db.close()
    with open(file, "rb") as f:
        os.fsync(f.fileno())
    return count


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _refuse_database(path: Path, target: Path, db_path: str | Path | None) -> None:
    """`target` (the resolved `path`) must not be the database exported, its journal, or an SQLite file
    other than a results database an export wrote."""
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
    if head == SQLITE_MAGIC and not is_results_database(target):
        raise ExportError(f"cannot write {path}: it is an SQLite database; refusing to overwrite a database")


def read_manifest(conn: Any) -> dict[str, Any] | None:
    """A results database's manifest (an open sqlite3 connection), None when it has none (older)."""
    try:
        found = conn.execute(f"SELECT key, value FROM {MANIFEST_TABLE}").fetchall()
    except sqlite3.OperationalError:
        return None
    return {key: json.loads(value) for key, value in found}


def is_results_database(path: str | Path) -> bool:
    """Whether `path` is an SQLite results database written by an export."""
    try:
        with open(path, "rb") as f:
            head = f.read(72)
    except OSError:
        return False
    return head.startswith(SQLITE_MAGIC) and int.from_bytes(head[68:72], "big") == RESULTS_APPLICATION_ID


def _remove_stale_temp_files(folder: Path, name: str) -> None:
    """Temp files of exports killed before their rename: those whose process is gone."""
    for stale in folder.glob(f".{name}.*.tmp"):
        pid = stale.name[len(name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and process_gone(int(pid)):
            _unlink(str(stale))


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
