"""`--mode auto --deadline` against all-live and all-batch: cost and wall time of the same job, with a deadline,
against the fake server's batches at several speeds (fast, slow, never finishing).

For each batch speed, three runs of one job (in a database of its own, from a cold cache):
- live: every prompt live (full price);
- batch: every prompt in the Batch API (half price), given up at the deadline (what is unfinished then is
  counted as missed, and its batch cancelled);
- auto: `mode="auto", deadline=...`: batch while the deadline leaves room, the rest taken back live.
Cost is the job's spend from `status` at a price override (1 USD per million tokens, so the figures do
not move with list prices); wall time from the run's start; `missed` the prompts not done by the deadline.
The provider's window (24 h) is scaled down with the fake's (`batch_window`), as the tests do.

Targets: auto meets the deadline at every speed, never costs more than all-live, and with fast batches
costs what all-batch costs (every prompt at the batch price). `--smoke` (CI): 40 prompts, a 4 s deadline.

    .venv/bin/python scripts/bench_auto.py [--smoke] [--prompts N] [--deadline S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import Report

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

PRICE = 1.0  # USD per million tokens, live; the batch price is half


def make_spec(n: int) -> dict[str, Any]:
    return {"name": "auto", "api": "chat", "model": "gpt-4o-mini", "templates": ["Say one word about item {i}."],
            "keywords": {"i": [f"{i:05d}" for i in range(n)]}, "model_args": {"max_tokens": 8}}


def speeds(n: int, deadline: float) -> dict[str, float | None]:
    """Fake batch lines a second: fast (at once), slow (the job takes three deadlines), never (0)."""
    return {"fast": None, "slow": n / (3 * deadline), "never": 0.0}


def one_run(db: Path, tmp: Path, fake: FakeServer, strategy: str, deadline: float, window: float,
            rpm: float) -> tuple[float, int]:
    """Run the job one way; its wall time and how many prompts were not done by the deadline (their batches
    are cancelled then)."""
    options: dict[str, Any] = {"base_url": fake.url, "api_key": "sk-bench", "cache_dir": str(tmp / "cache"),
                               "quiet": True, "poll": 0.05, "retry": RetryPolicy.no_wait(), "timeout": 5.0,
                               "rpm": rpm, "batch_window": window}
    if strategy == "auto":
        options.update(mode="auto", deadline=deadline)
    else:
        options["mode"] = strategy
    started = time.monotonic()

    async def until_the_deadline() -> None:
        try:
            async with asyncio.timeout(deadline):
                await bp.aresume(db, **options)
        except TimeoutError:  # all-batch with batches slower than the deadline: given up there
            pass

    asyncio.run(until_the_deadline())
    wall = time.monotonic() - started
    counts = bp.status(db)[0]
    missed = counts.total - counts.done
    if missed:
        bp.cancel(db, **{k: v for k, v in options.items() if k not in ("mode", "deadline")})
    return wall, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="40 prompts, a 4 s deadline (CI); targets enforced")
    parser.add_argument("--prompts", type=int, help="prompts (default 400; 40 with --smoke)")
    parser.add_argument("--deadline", type=float, help="seconds (default 10; 4 with --smoke)")
    args = parser.parse_args()
    n = args.prompts or (40 if args.smoke else 400)
    deadline = args.deadline or (4.0 if args.smoke else 10.0)
    window = deadline / 3  # the provider's window, scaled: a deadline of three windows leaves room for a batch
    rpm = 60 * max(20.0, 2 * n / deadline)  # live can meet the deadline with room to spare
    report = Report(enforce=True)
    report.package()
    report.figure("prompts", n)
    report.figure("deadline_s", deadline)
    results: dict[tuple[str, str], tuple[float, int, float]] = {}
    fake = FakeServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-auto-") as tmp_name:
            tmp = Path(tmp_name)
            prices = tmp / "prices.json"
            prices.write_text(json.dumps({"gpt-4o-mini": {"input": PRICE, "output": PRICE}}))
            for speed, lines_per_second in speeds(n, deadline).items():
                for strategy in ("live", "batch", "auto"):
                    fake.reset()
                    fake.configure(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_cancel_seconds=0.0,
                                   batch_lines_per_second=lines_per_second, batch_window_seconds=86400.0)
                    db = tmp / f"{speed}-{strategy}.db"
                    bp.create(db, **make_spec(n))
                    wall, missed = one_run(db, tmp / f"{speed}-{strategy}", fake, strategy, deadline, window, rpm)
                    cost = bp.status(db, prices=prices)[0].cost or 0.0
                    results[speed, strategy] = (wall, missed, cost)
                    report.figure(f"{speed}_{strategy}_wall_s", wall, 2)
                    report.figure(f"{speed}_{strategy}_missed", missed)
                    report.figure(f"{speed}_{strategy}_cost_usd", f"{cost:.8f}")
    finally:
        fake.stop()
    for speed in ("fast", "slow", "never"):
        wall, missed, cost = results[speed, "auto"]
        report.target(f"auto with {speed} batches: prompts missed", missed, 0)
        report.target(f"auto with {speed} batches: wall", wall, deadline, unit=" s")
        report.target(f"auto with {speed} batches: cost / all-live's", cost / results[speed, "live"][2], 1.0001)
    fast_ratio = results["fast", "auto"][2] / results["fast", "batch"][2]
    report.target("auto with fast batches: cost / all-batch's", fast_ratio, 1.0001)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
