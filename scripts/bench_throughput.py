"""Throughput benchmark: the tool against a minimal openai-SDK client, same fake server, same prompts.

The fake server (a separate process) answers every request after `--latency` seconds (0.2). N chat
prompts (5,000; 300 with --smoke) at concurrency C (100): ideal wall = N x latency / C (10 s).

1. the tool: `python -m batch_prompt run SPEC --db DB --concurrency C --quiet --cache-dir D --base-url URL`
   (fresh database and cache: it creates the job, then sends every prompt);
2. a minimal client: `openai.AsyncOpenAI(max_retries=0, http_client=openai.DefaultAioHttpClient())` +
   `asyncio.Semaphore(C)` + `gather`, no database, no cache (this script with --minimal-client, also a
   child process, so its CPU is measured the same way).

Figures: wall / ideal of each (the process's whole life, Python start-up included), client CPU seconds
per 1,000 requests, the span the server saw (first request to last answer: the process's wall less
its start-up and exit), and cpu_ratio = tool CPU per request / minimal CPU per request. The start-up cost
(`python -m batch_prompt --help`, `python -c "import openai"`) is printed too, so figures net of it can
be worked out. Targets: tool wall / ideal <= 1.10 (also checked for the send span alone), cpu_ratio <= 1.5
(enforced only in full mode; the exit code is 0 either way, 1 only when the benchmark itself breaks).

On a 2-core machine that also runs the fake server (2026-11-24): 5,000 prompts, tool wall/ideal 1.15 (send
span 1.07, CPU 0.71 s per 1,000 requests) against 1.16-1.19 for the minimal client (span 1.09-1.11, 1.12 s);
20,000 prompts (`--prompts 20000`): tool 1.08 (span 1.06), minimal 1.11. Of a 10 s ideal, 0.6 s (6 %) is
Python start-up and `import openai`, which any SDK client pays, the floor included.

    python scripts/bench_throughput.py [--smoke] [--prompts N] [--concurrency C] [--latency S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import PYTHON, FakeServerProcess, Measured, Report, bench_env, run_measured, write_json

MODEL = "fake-model"
MAX_TOKENS = 5
N_TEMPLATES = 50  # templates x keyword dicts = prompts


def prompt_text(t: int, k: int) -> str:
    """Prompt (t, k) as the tool renders it from the spec below; the minimal client sends the same text."""
    return f"Template {t}: write one word about item {k}."


def grid(n: int) -> list[tuple[int, int]]:
    per_template = -(-n // N_TEMPLATES)
    return [(t, k) for t in range(N_TEMPLATES) for k in range(per_template)][:n]


def make_spec(n: int) -> dict[str, Any]:
    if n % N_TEMPLATES:
        raise SystemExit(f"--prompts must be a multiple of {N_TEMPLATES}")
    return {
        "name": "throughput",
        "api": "chat",
        "model": MODEL,
        "templates": [f"Template {t}: write one word about item {{item}}." for t in range(N_TEMPLATES)],
        "keywords": {"item": list(range(n // N_TEMPLATES))},
        "model_args": {"max_tokens": MAX_TOKENS},
    }


async def minimal_client(url: str, n: int, concurrency: int) -> int:
    """The baseline: the openai SDK on aiohttp, a semaphore and gather. Returns the answers received."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=url, api_key="sk-bench", max_retries=0, http_client=openai.DefaultAioHttpClient()
    )
    semaphore = asyncio.Semaphore(concurrency)

    async def one(t: int, k: int) -> str | None:
        async with semaphore:
            response = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt_text(t, k)}], max_tokens=MAX_TOKENS
            )
            return response.choices[0].message.content

    try:
        answers = await asyncio.gather(*(one(t, k) for t, k in grid(n)))
    finally:
        await client.close()
    return sum(1 for a in answers if a)


def server_span(record: list[dict[str, Any]], launched: float, latency: float) -> tuple[float, float]:
    """(seconds from launch to the first request, seconds from the first request to the last answer)."""
    times = sorted(entry["t"] for entry in record)
    return times[0] - launched, times[-1] + latency - times[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI; targets not enforced")
    parser.add_argument("--prompts", type=int, help="prompts (default 5000; 300 with --smoke)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--minimal-client", metavar="URL", help=argparse.SUPPRESS)  # the baseline child
    args = parser.parse_args()
    n = args.prompts or (300 if args.smoke else 5000)
    if args.minimal_client:
        answered = asyncio.run(minimal_client(args.minimal_client, n, args.concurrency))
        print(f"answered={answered}")
        return 0 if answered == n else 1

    report = Report(enforce=not args.smoke)
    ideal = n * args.latency / args.concurrency
    report.package()
    report.figure("prompts", n)
    report.figure("concurrency", args.concurrency)
    report.figure("latency_s", args.latency)
    report.figure("ideal_wall_s", ideal)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp)
        spec = write_json(tmp / "spec.json", make_spec(n))
        with FakeServerProcess(["--latency", str(args.latency)], env, tmp, tmp / "server.log") as server:
            # start-up costs: what each process pays before its first request
            tool_start = run_measured([PYTHON, "-m", "batch_prompt", "--help"], env, tmp).check()
            sdk_start = run_measured([PYTHON, "-c", "import openai"], env, tmp).check()
            report.figure("tool_startup_wall_s", tool_start.wall)
            report.figure("tool_startup_cpu_s", tool_start.cpu)
            report.figure("minimal_startup_wall_s", sdk_start.wall)
            report.figure("minimal_startup_cpu_s", sdk_start.cpu)

            results: dict[str, Measured] = {}
            spans: dict[str, float] = {}
            for name in ("minimal", "tool"):
                server.reset()
                cpu_before = server.cpu_seconds()
                if name == "tool":
                    cmd = [
                        PYTHON, "-m", "batch_prompt", "run", str(spec), "--db", str(tmp / "jobs.db"),
                        "--concurrency", str(args.concurrency), "--quiet", "--cache-dir", str(tmp / "cache"),
                        "--base-url", server.url,
                    ]
                else:
                    cmd = [
                        PYTHON, str(Path(__file__).resolve()), "--minimal-client", server.url, "--prompts", str(n),
                        "--concurrency", str(args.concurrency),
                    ]
                result = run_measured(cmd, env, tmp, timeout=max(120.0, 20 * ideal)).check()
                server_cpu = server.cpu_seconds() - cpu_before
                record = server.record()
                ok = sum(1 for entry in record if entry["outcome"] == "ok")
                if ok != n or len(record) != n:
                    raise RuntimeError(f"{name}: the server answered {ok} of {len(record)} requests, expected {n}")
                first, span = server_span(record, result.launched, args.latency)
                results[name], spans[name] = result, span
                report.figure(f"{name}_wall_s", result.wall)
                report.figure(f"{name}_wall_over_ideal", result.wall / ideal)
                report.figure(f"{name}_first_request_s", first)
                report.figure(f"{name}_send_span_s", span)
                report.figure(f"{name}_send_span_over_ideal", span / ideal)
                report.figure(f"{name}_cpu_s", result.cpu)
                report.figure(f"{name}_cpu_s_per_1000_requests", result.cpu / n * 1000)
                report.figure(f"{name}_maxrss_mb", result.maxrss_mb, 1)
                report.figure(f"{name}_server_cpu_s", server_cpu)

    tool, minimal = results["tool"], results["minimal"]
    cpu_ratio = tool.cpu / minimal.cpu
    net_ratio = (tool.cpu - tool_start.cpu) / max(minimal.cpu - sdk_start.cpu, 1e-9)
    report.figure("cpu_ratio", cpu_ratio)
    report.figure("cpu_ratio_net_of_startup", net_ratio)
    report.target("tool wall/ideal", tool.wall / ideal, 1.10)
    report.target("tool send span/ideal (start-up excluded)", spans["tool"] / ideal, 1.10)
    report.target("cpu_ratio (tool/minimal CPU per request)", cpu_ratio, 1.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
