"""The response cache: (endpoint identity, request hash) -> raw response JSON text, on disk.

diskcache with eviction off (its default silently evicts at 1 GB) and string values only (its pickle
path is never used). Each value carries a checksum of its text; an entry that fails it is treated as
absent and deleted, so a corrupted entry is re-fetched and never exported.
The cache is shared by all jobs: a request once paid for is answered from here in any later job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache

from ..errors import CacheError, ConfigError
from ..spec.endpoints import DEFAULT_BASE_URL, Endpoint, normalize_base_url


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/batch-prompt`, else `~/.cache/batch-prompt`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batch-prompt"


def endpoint_identity(base_url: str | None = None) -> str:
    """The cache's name for an endpoint: the base URL (given, else `$OPENAI_BASE_URL`, else OpenAI's),
    normalized as the runner normalizes it (`Endpoint.identity`). Never the key."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    return Endpoint(normalize_base_url(url), "").identity


# What reading a damaged cache raises: an entry whose file is gone or not UTF-8, pages of its SQLite index
# that are corrupt, a value diskcache cannot decode.
UNREADABLE = (OSError, UnicodeDecodeError, sqlite3.DatabaseError, ValueError, EOFError)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResponseCache:
    """Responses by endpoint and request hash. Use as a context manager or call `close()`."""

    def __init__(self, directory: str | Path | None, endpoint: str) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self.endpoint = endpoint
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(self.directory), eviction_policy="none", size_limit=2**62, cull_limit=0,
                # diskcache's defaults (64 MB mapped, 32 MB of page cache) grow a run's memory with the
                # cache file it writes; its reads are point lookups and its writes appends: 4 MB is ample
                sqlite_mmap_size=0, sqlite_cache_size=1024,
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot use cache folder {self.directory}: {exc} (move it away, or give another with --cache-dir)"
            ) from None

    @classmethod
    def existing(cls, directory: str | Path | None, endpoint: str) -> ResponseCache | None:
        """The cache in `directory` if one is there, else None: reading never creates a cache folder."""
        folder = Path(directory) if directory else default_cache_dir()
        if not (folder / "cache.db").is_file():  # diskcache's index
            return None
        return cls(folder, endpoint)

    def contains(self, request_hash: str) -> bool:
        """Whether a response for this hash is cached (cheap: its checksum is checked only by `get`)."""
        try:
            return self._key(request_hash) in self._cache
        except UNREADABLE:
            return False

    def _key(self, request_hash: str) -> str:
        return f"{self.endpoint} {request_hash}"

    def get(self, request_hash: str, tag: str | None = None) -> str | None:
        """The cached response text, or None (missing or corrupt; a corrupt entry is deleted).
        With `tag`, only an entry written with that same tag counts (see `set`)."""
        found = self.get_tagged(request_hash)
        if found is None or (tag is not None and found[1] != tag):
            return None
        return found[0]

    def get_tagged(self, request_hash: str) -> tuple[str, str | None] | None:
        """The cached response text and the tag it was written with (whose row it was bought for), or None
        (missing or corrupt; a corrupt entry is deleted)."""
        key = self._key(request_hash)
        try:
            value, stored_tag = self._cache.get(key, tag=True)
        except UNREADABLE:  # a damaged entry (its file unreadable, not UTF-8; damaged index pages)
            self._forget(key)
            return None
        if value is None:
            return None
        if isinstance(value, str) and len(value) > 17 and value[16] == " ":
            text = value[17:]
            if value[:16] == _checksum(text):
                return text, stored_tag if isinstance(stored_tag, str) else None
        self._forget(key)
        return None

    def _forget(self, key: str) -> None:
        """Delete a damaged entry, so it is asked again; if even that fails, it is asked again anyway."""
        with contextlib.suppress(*UNREADABLE):
            self._cache.delete(key)

    def set(self, request_hash: str, text: str, tag: str | None = None) -> None:
        """Store a response (with `tag`: whose row it was bought for), committed when this returns;
        raises `CacheError` when the write fails."""
        key = self._key(request_hash)
        value = f"{_checksum(text)} {text}"
        try:
            self._cache.set(key, value, tag=tag)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write the response cache in {self.directory}: {exc}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Many `set`s committed together (a batch's results: one SQLite transaction, not one per
        answer), when the block ends; raises `CacheError` when that commit fails."""
        try:
            with self._cache.transact():
                yield
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write the response cache in {self.directory}: {exc}") from None

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

