"""The job database (SQLite): `Store`, the rows it hands out and takes in, its migrations, leases and the
response cache on disk."""

from .database import Store as Store
