"""What differs between a recorded job's spec and a new spec of the same name (`JobConflictError`'s text)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import shown


def conflict_message(name: str, old: dict[str, Any], new: dict[str, Any], ignored: tuple[str, ...]) -> str:
    """Which parts of the job's identity differ, each with its two values (the first three)."""
    keys = [key for key in [*new, *(k for k in old if k not in new)] if key not in ignored]
    differ = [text for key in keys for text in _differences(key, old.get(key, _ABSENT), new.get(key, _ABSENT))]
    more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
    return (
        f"job {name!r} already exists in this database with a different spec: {'; '.join(differ[:3])}{more}; "
        "give the new spec another name"
    )


_ABSENT = object()


def _differences(path: str, old: Any, new: Any) -> Iterator[str]:
    """`path differs: OLD recorded, NEW in this spec` for each leaf where the two differ, in order;
    dicts by key, lists of one length by index."""
    if old == new and type(old) is type(new):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            yield from _differences(f"{path}.{key}", old.get(key, _ABSENT), new.get(key, _ABSENT))
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _differences(f"{path}[{i}]", a, b)
        return
    yield f"{path} differs: {_value(old)} recorded, {_value(new)} in this spec"


def _value(value: Any) -> str:
    if value is _ABSENT:
        return "not set"
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} items"
    return shown(value, 40)
