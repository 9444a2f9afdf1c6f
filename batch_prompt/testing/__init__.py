"""Test support shipped with batch-prompt: a fake OpenAI-compatible server on loopback.

    python -m batch_prompt.testing --port 8765 [--latency 0.2 ...]   # prints FAKE_SERVER_URL=...

`server.py` is the HTTP side (routes, faults, the record of what was asked); `api.py` the API model
(settings, request parsing, answers, error bodies, rate-limit buckets); `files.py` and `batches.py`
the Files and Batch APIs, `lifecycle.py` what a batch does over time, `rest.py` what they share over
HTTP. Used by the test suite, the benchmarks in scripts/ and `scripts/demo`; never by the library
itself.
"""

from .api import FakeConfig, format_duration
from .server import FakeServer

__all__ = ["FakeConfig", "FakeServer", "format_duration"]
