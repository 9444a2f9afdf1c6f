"""`python -m batch_prompt.testing [--port N] [options]`: serve the fake API until SIGINT/SIGTERM.

Every option is a ``FakeConfig`` field (``--error-rate 0.1`` is ``error_rate=0.1``); the one line on
stdout is ``FAKE_SERVER_URL=http://127.0.0.1:PORT/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from .server import FakeServer


def _parse_args(argv: list[str] | None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m batch_prompt.testing", description="Serve the fake OpenAI API.")
    p.add_argument("--port", type=int, default=0)
    floats = "latency latency-jitter error-rate drop-rate reset-rate malformed-rate hang-rate hang-seconds"
    floats += " wrong-choices-rate rate-limit-rate rate-limit-retry-after burst-seconds batch-validate-seconds"
    floats += " batch-lines-per-second batch-finalize-seconds batch-cancel-seconds batch-window-seconds"
    for name in (floats + " batch-error-rate").split():
        p.add_argument(f"--{name}", type=float, default=None)
    ints = "rpm-limit tpm-limit fail-first seed batch-expire-after batch-max-lines batch-max-bytes"
    for name in ints.split():
        p.add_argument(f"--{name}", type=int, default=None)
    for name in ("rpm-limits", "tpm-limits"):
        p.add_argument(f"--{name}", type=_model_limit, action="append", default=None, metavar="MODEL=N",
                       help="a model's own limit (repeat for several models)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--quota-exhausted", action="store_true", default=None)
    p.add_argument("--headers-per-minute", action="store_true", default=None)
    p.add_argument("--usage-first-choice-only", action="store_true", default=None)
    p.add_argument("--no-batch-api", dest="batch_api", action="store_false", default=None,
                   help="the Files and Batch endpoints answer 404, as llama.cpp's server does")
    p.add_argument("--missing-choice-rate", type=float, default=None)
    kw = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    for name in ("rpm_limits", "tpm_limits"):
        if name in kw:
            kw[name] = dict(kw[name])
    return kw


def _model_limit(text: str) -> tuple[str, int]:
    model, equals, limit = text.rpartition("=")
    if not equals or not model or not limit.isdigit() or int(limit) <= 0:
        raise argparse.ArgumentTypeError(f"expected MODEL=N (a positive integer), not {text!r}")
    return model, int(limit)


async def _serve(server: FakeServer) -> None:
    await server.astart()
    print(f"FAKE_SERVER_URL={server.url}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await server.astop()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: run in the foreground until SIGINT/SIGTERM."""
    kw = _parse_args(argv)
    server = FakeServer(**kw)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
