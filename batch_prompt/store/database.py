"""The job database: every SQL statement batch-prompt runs against jobs.db lives in this package.

`Store` is one open database: the connection (`connection.py`) with the tables' operations, one module
per noun: `jobs.py`, `prompts.py` (claims, outcomes, the done rows), `batches.py`, `spend.py`.
"""

from __future__ import annotations

from .batches import Batches
from .connection import SQLITE_MAGIC
from .jobs import RUN_FIELDS, Jobs
from .prompts import Prompts
from .rows import BatchRow, Charge, Claimed, DoneRow, GroupCount, JobRow, Outcome, PromptRow, Spend

__all__ = [
    "RUN_FIELDS", "SQLITE_MAGIC", "BatchRow", "Charge", "Claimed", "DoneRow", "GroupCount", "JobRow", "Outcome",
    "PromptRow",
    "Spend", "Store",
]


class Store(Jobs, Prompts, Batches):
    """An open job database. Use as a context manager or call `close()`."""
