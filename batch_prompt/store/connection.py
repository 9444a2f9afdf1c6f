"""The job database's connection: opening (and migrating) a jobs.db, its write transactions, its errors.

Opening a store migrates it (see `schema.py`). The connection is in autocommit mode and every state
change is an explicit `BEGIN IMMEDIATE` transaction, so concurrent processes never deadlock on a lock
upgrade; `busy_timeout` absorbs short waits. The tables are worked by `jobs.py`, `prompts.py`,
`batches.py` and `spend.py`, which `database.Store` puts together.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from ..errors import NotADatabaseError, StoreError
from . import schema

BUSY_TIMEOUT_MS = 60_000
PATIENT_BUSY_MS = 2_000  # a run's store reports a lock held elsewhere this often while it waits it out
SQLITE_MAGIC = b"SQLite format 3\x00"

_NOT_A_DATABASE = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)  # "not a database", "malformed"


def _primary_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (extended codes carry it in their low byte)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _wal_mode(conn: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode = WAL`, waiting as long as the busy timeout. SQLite answers this pragma
    "database is locked" at once, without its busy handler, while another connection is switching a new
    file to WAL (two `create`s started together): so it is retried here, with a short backoff."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if _primary_code(exc) != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


class Connection:
    """An open job database. Use as a context manager or call `close()`."""

    def __init__(
        self, path: str | Path, *, create: bool = True, on_locked: Callable[[float], None] | None = None,
        readonly: bool = False,
    ) -> None:
        """Open (and migrate) a job database. With `on_locked`, write transactions never give up on a lock
        another process holds: they wait on, calling `on_locked(seconds waited so far)` every few seconds
        (a run waits out a big create; a command gives up after the busy timeout). `readonly` (status,
        show, export) reads a database on read-only media too: results archived on a share or a snapshot."""
        self.path = str(path)
        self.on_locked = on_locked
        _check_file(self.path, create and not readonly)
        if readonly and self._open_readonly():
            return
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}", path=self.path) from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _wal_mode(self.conn)
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            schema.migrate(self.conn, self.path)
            if on_locked is not None:
                self.conn.execute(f"PRAGMA busy_timeout = {PATIENT_BUSY_MS}")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if _primary_code(exc) in _NOT_A_DATABASE:
                raise NotADatabaseError(
                    f"{self.path} is not a batch-prompt job database ({exc})", path=self.path
                ) from None
            raise StoreError(f"cannot use {self.path}: {exc}", path=self.path) from None
        except BaseException:
            self.conn.close()
            raise

    def _open_readonly(self) -> bool:
        """Open for reading only; False when the schema needs migrating first (then open as usual).

        `mode=ro` reads a WAL database while its `-shm` can be had; on read-only media it cannot, and a
        cleanly closed database (no write-ahead log left) is then read as `immutable` (no locks, no -shm)."""
        uri = Path(self.path).resolve().as_uri()
        try:
            self.conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None,
                                        timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                version = schema.current_version(self.conn, self.path)
            except sqlite3.OperationalError:
                self.conn.close()
                wal = Path(self.path + "-wal")
                if wal.exists() and wal.stat().st_size > 0:
                    raise StoreError(
                        f"cannot read {self.path}: its write-ahead log ({wal.name}) holds changes, and its folder "
                        "cannot be written: copy the database and its -wal file somewhere writable",
                        path=self.path) from None
                self.conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
                version = schema.current_version(self.conn, self.path)
        except sqlite3.DatabaseError as exc:
            if _primary_code(exc) in _NOT_A_DATABASE:
                raise NotADatabaseError(f"{self.path} is not a batch-prompt job database ({exc})",
                                        path=self.path) from None
            raise StoreError(f"cannot read {self.path}: {exc}", path=self.path) from None
        if version > schema.head():
            self.conn.close()
            schema.migrate_check(version, self.path)
        if version < schema.head():
            self.conn.close()
            return False
        return True

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (`BEGIN IMMEDIATE`), rolled back on any exception.

        SQLite failures (disk full, I/O error, a lock held past the busy timeout) become `StoreError`;
        the rollback keeps everything committed before intact.
        """
        with self.errors():
            self._begin()
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        if self.on_locked is None:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        started = time.monotonic()
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")  # waits up to PATIENT_BUSY_MS for the lock
                return
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) != sqlite3.SQLITE_BUSY:
                    raise
                self.on_locked(time.monotonic() - started)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of a read, SQLite's failures as `StoreError` naming the file."""
        with self.errors():
            return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite's exceptions into `StoreError` naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            kind = NotADatabaseError if _primary_code(exc) in _NOT_A_DATABASE else StoreError
            raise kind(f"{self.path}: {exc}", path=self.path) from None


    def checkpoint(self) -> None:
        """Copy everything committed from the WAL into the database file itself (`create` does this
        before it links a new database into place). Raises `StoreError` when a reader holds it back."""
        with self.errors():
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise StoreError(f"{self.path}: the write-ahead log could not be checkpointed", path=self.path)


def _check_file(path: str, create: bool) -> None:
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"{path} is a directory, not a job database", path=path)
    if not p.exists():
        if not create:
            raise StoreError(f"no job database at {path}", path=path)
        if not p.parent.exists():
            raise StoreError(f"cannot create {path}: folder {p.parent} does not exist", path=path)
        return
    try:
        with p.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", path=path) from None
    if not head and not create:
        raise NotADatabaseError(f"{path} is not a batch-prompt job database (an empty file)", path=path)
    if head and head != SQLITE_MAGIC:
        raise NotADatabaseError(f"{path} is not a batch-prompt job database (not an SQLite file)", path=path)

