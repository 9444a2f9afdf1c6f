"""Process-wide policy a run may take on (only the command line asks for it: `RunOptions.raise_open_files`,
`tune_gc`): room for the connections in the open-file limit, and the garbage collector out of the event
loop's way."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from ..errors import ConfigError
from ..options import FILES_BESIDES_CONNECTIONS


def ensure_open_files(concurrency: int, raise_limit: bool) -> None:
    """Make sure `concurrency` connections can be open at once; `ConfigError` when they cannot (the
    connections past the limit would fail one after another and be retried for nothing). With
    `raise_limit` (the command line), this process's soft limit on open files (`ulimit -n`) is raised
    up to its hard limit if needed; without it (a library caller), a soft limit too low is refused."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to check
        return
    needed = concurrency + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if not raise_limit:
        raise ConfigError(
            f"concurrency {concurrency} needs about {needed} open files, but this process may open only {soft} "
            f"(ulimit -n): lower the concurrency to {max(1, soft - FILES_BESIDES_CONNECTIONS)} or less, or raise "
            "the limit (resource.setrlimit)"
        )
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"concurrency {concurrency} needs about {needed} open files, but this process may open only {hard} "
            f"(ulimit -n): lower --concurrency to {max(1, hard - FILES_BESIDES_CONNECTIONS)} or less"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"concurrency {concurrency} needs about {needed} open files, and the limit is {soft}: {exc}"
        ) from None


_gc_runs = 0  # runs in progress in this process
_gc_threshold = gc.get_threshold()  # to restore when the last one ends


@contextlib.contextmanager
def collector_out_of_the_way() -> Iterator[None]:
    """While runs are in progress: the objects alive when the first started (modules, the SDK's
    classes) are frozen out of the garbage collector's scans, and young collections are rarer. A full
    collection over the openai SDK's objects stalled the event loop for up to 50 ms, and every request
    in flight waited it out (scripts/bench_throughput.py: 370 ms of collections in a 10 s run, 110 ms
    after). Both are undone when the last run ends."""
    global _gc_runs, _gc_threshold
    if _gc_runs == 0:
        gc.freeze()
        _gc_threshold = gc.get_threshold()
        gc.set_threshold(max(_gc_threshold[0], 10_000), *_gc_threshold[1:])
    _gc_runs += 1
    try:
        yield
    finally:
        _gc_runs -= 1
        if _gc_runs == 0:
            gc.set_threshold(*_gc_threshold)
            gc.unfreeze()
