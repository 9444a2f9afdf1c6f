"""Schema migrations: numbered `.sql` files in `migrations/` (installed as `batch_prompt.migrations`).

`migrate(conn)` runs whenever a store is opened. Each pending migration and its record in
`batch_prompt_migrations` commit in one transaction, so a kill mid-migration leaves the previous version.
A database that records a version newer than the newest file here is refused, never half-read.
"""

from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources
from importlib.resources.abc import Traversable

from ..errors import NotADatabaseError, SchemaTooNewError

MIGRATIONS_TABLE = "batch_prompt_migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _folder() -> Traversable:
    try:
        return resources.files("batch_prompt.migrations")
    except ModuleNotFoundError:  # running from a source checkout that was never installed
        return resources.files("batch_prompt").joinpath("..", "migrations")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    found = []
    for entry in _folder().iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def head() -> int:
    return available()[-1][0]


def current_version(conn: sqlite3.Connection, path: str) -> int:
    """The schema version recorded in the database; 0 for a blank one. Raises for a foreign database."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if MIGRATIONS_TABLE not in tables:
        if tables:
            raise NotADatabaseError(
                f"{path} is an SQLite database but not a batch-prompt job database", path=path
            )
        return 0
    row = conn.execute(f"SELECT max(version) FROM {MIGRATIONS_TABLE}").fetchone()
    return int(row[0] or 0)


def migrate_check(version: int, path: str) -> None:
    """Refuse a database from a newer schema: never half-read."""
    if version > head():
        raise SchemaTooNewError(
            f"{path} has schema version {version}, newer than this batch-prompt knows ({head()}): "
            "upgrade batch-prompt to read it",
            path=path,
        )


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database to the newest schema; returns the version. The connection is in autocommit mode."""
    version = current_version(conn, path)
    newest = head()
    migrate_check(version, path)
    if version == newest:
        return version
    # A migration may rebuild a table (SQLite's way to change a constraint), which the foreign keys of the
    # tables referring to it would refuse: they are off while migrating (the pragma is a no-op inside a
    # transaction) and checked before the commit instead.
    keys = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the write lock.
        version = current_version(conn, path)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        for number, name, sql in available():
            if number <= version:
                continue
            for statement in split_statements(sql):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?, ?)", (number, name, time.time()))
        broken = conn.execute("PRAGMA foreign_key_check").fetchone()
        if broken is not None:
            raise sqlite3.IntegrityError(f"a migration left a foreign key of table {broken[0]} broken")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute(f"PRAGMA foreign_keys = {int(keys)}")
    return newest


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer)
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in buffer.splitlines()
    ):
        statements.append(buffer)
    return statements
