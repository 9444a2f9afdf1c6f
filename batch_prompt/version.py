"""The installed package's version, read from its metadata on first use (importlib.metadata costs 40 ms to
import, which every command would pay at start)."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    """`batch-prompt`'s version; `0+unknown` in a source checkout that was never installed."""
    from importlib import metadata

    try:
        return metadata.version("batch-prompt")
    except metadata.PackageNotFoundError:
        return "0+unknown"
