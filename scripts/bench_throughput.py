"""Throughput benchmark: the tool against a minimal openai-SDK client, same fake server, same prompts.

Two cases, each client a child process (its CPU and peak RSS read with `os.wait4`), the fake server
another:

- latency-bound: the server answers every request after `--latency` seconds (0.2); N chat prompts (5,000;
  300 with --smoke) at concurrency C (100): ideal wall = N x latency / C (10 s);
- client-bound: latency 0, `--client-bound-prompts` (20,000; 1,000 with --smoke): how many requests per
  second the client itself can make.

The clients: the tool (`python -m batch_prompt run SPEC --db DB --concurrency C --quiet --cache-dir D
--base-url URL`, fresh database and cache: it creates the job, then sends every prompt); a minimal client
(`openai.AsyncOpenAI(max_retries=0, http_client=openai.DefaultAioHttpClient())` + `asyncio.Semaphore(C)`
+ `gather`, no database, no cache: this script with --minimal-client); and, client-bound only, a raw
aiohttp client (the floor: this script with --raw-client; with --smoke the minimal client is left out of
the client-bound case).

Figures per case and client (`<case>_<client>_<figure>`): wall (the process's whole life), time from
launch to the first request and from the last answer to exit (as the server saw them), the send span
(first request to last answer) and req/s over it, CPU ms per request, peak RSS. Targets (enforced only in
full mode; the exit code is 0 either way, 1 only when the benchmark itself breaks): latency-bound tool
wall / ideal <= 1.10 (also for the send span alone), cpu_ratio (tool / minimal CPU) <= 1.5, tool time to
first request <= 0.5 s, tool peak RSS <= minimal's + 20 MB; client-bound tool >= 2,000 req/s (a raw
aiohttp client reaches about 2,500 on the 2-core machine that also runs the server).

    python scripts/bench_throughput.py [--smoke] [--prompts N] [--client-bound-prompts N] [--concurrency C]
                                       [--latency S]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import PYTHON, FakeServerProcess, Report, bench_env, run_measured, write_json

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


async def raw_client(url: str, n: int, concurrency: int) -> int:
    """A floor: aiohttp alone (a session, a semaphore and gather), no SDK. Returns the answers received."""
    import aiohttp

    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=headers) as session:

        async def one(t: int, k: int) -> str | None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt_text(t, k)}],
                    "max_tokens": MAX_TOKENS}
            async with semaphore, session.post(url + "/chat/completions", json=body) as response:
                data = await response.json()
                content: str | None = data["choices"][0]["message"]["content"]
                return content

        answers = await asyncio.gather(*(one(t, k) for t, k in grid(n)))
    return sum(1 for a in answers if a)


def server_span(record: list[dict[str, Any]], launched: float, latency: float) -> tuple[float, float, float]:
    """(seconds from launch to the first request, seconds from the first request to the last answer,
    time.monotonic() of the last answer)."""
    times = sorted(entry["t"] for entry in record)
    return times[0] - launched, times[-1] + latency - times[0], times[-1] + latency


def command(name: str, url: str, spec: Path, tmp: Path, n: int, concurrency: int) -> list[str]:
    if name == "tool":
        return [
            PYTHON, "-m", "batch_prompt", "run", str(spec), "--db", str(tmp / "jobs.db"), "--concurrency",
            str(concurrency), "--quiet", "--cache-dir", str(tmp / "cache"), "--base-url", url,
        ]
    flag = {"minimal": "--minimal-client", "raw": "--raw-client"}[name]
    return [PYTHON, str(Path(__file__).resolve()), flag, url, "--prompts", str(n), "--concurrency", str(concurrency)]


def measure(report: Report, case: str, name: str, server: FakeServerProcess, tmp: Path, env: dict[str, str],
            n: int, concurrency: int, latency: float) -> dict[str, float]:
    """Run one client against `server` (fresh database and cache for the tool); print and return its figures."""
    for leftover in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
        (tmp / leftover).unlink(missing_ok=True)
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    server.reset()
    spec = write_json(tmp / "spec.json", make_spec(n))
    cpu_before = server.cpu_seconds()
    cmd = command(name, server.url, spec, tmp, n, concurrency)
    result = run_measured(cmd, env, tmp, timeout=max(120.0, 20 * n * max(latency, 0.001) / concurrency)).check()
    server_cpu = server.cpu_seconds() - cpu_before
    record = server.record()
    ok = sum(1 for entry in record if entry["outcome"] == "ok")
    if ok != n or len(record) != n:
        raise RuntimeError(f"{case} {name}: the server answered {ok} of {len(record)} requests, expected {n}")
    first, span, last = server_span(record, result.launched, latency)
    figures = {
        "wall_s": result.wall, "first_request_s": first, "send_span_s": span,
        "exit_after_last_answer_s": result.launched + result.wall - last, "req_per_s": n / span,
        "cpu_s": result.cpu, "cpu_ms_per_request": result.cpu / n * 1000, "maxrss_mb": result.maxrss_mb,
        "server_cpu_s": server_cpu,
    }
    for key, value in figures.items():
        report.figure(f"{case}_{name}_{key}", value, 1 if key == "maxrss_mb" else 3)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI; targets not enforced")
    parser.add_argument("--prompts", type=int, help="latency-bound prompts (default 5000; 300 with --smoke)")
    parser.add_argument("--client-bound-prompts", type=int, help="client-bound prompts (default 20000; 1000 --smoke)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--minimal-client", metavar="URL", help=argparse.SUPPRESS)  # the baseline child
    parser.add_argument("--raw-client", metavar="URL", help=argparse.SUPPRESS)  # the aiohttp floor child
    args = parser.parse_args()
    n = args.prompts or (300 if args.smoke else 5000)
    n_bound = args.client_bound_prompts or (1000 if args.smoke else 20_000)
    if args.minimal_client or args.raw_client:
        client = minimal_client if args.minimal_client else raw_client
        answered = asyncio.run(client(args.minimal_client or args.raw_client, n, args.concurrency))
        print(f"answered={answered}")
        return 0 if answered == n else 1

    report = Report(enforce=not args.smoke)
    ideal = n * args.latency / args.concurrency
    report.package()
    report.figure("prompts", n)
    report.figure("client_bound_prompts", n_bound)
    report.figure("concurrency", args.concurrency)
    report.figure("latency_s", args.latency)
    report.figure("ideal_wall_s", ideal)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp)
        # start-up costs: what each process pays before its first request
        tool_start = run_measured([PYTHON, "-m", "batch_prompt", "--help"], env, tmp).check()
        sdk_start = run_measured([PYTHON, "-c", "import openai"], env, tmp).check()
        report.figure("tool_startup_wall_s", tool_start.wall)
        report.figure("minimal_startup_wall_s", sdk_start.wall)
        bound: dict[str, dict[str, float]] = {}
        with FakeServerProcess(["--latency", str(args.latency)], env, tmp, tmp / "server.log") as server:
            lat = {name: measure(report, "latency_bound", name, server, tmp, env, n, args.concurrency, args.latency)
                   for name in ("minimal", "tool")}
        with FakeServerProcess(["--latency", "0"], env, tmp, tmp / "server0.log") as server:
            for name in ("raw", "tool") if args.smoke else ("raw", "minimal", "tool"):  # smoke: a few seconds
                bound[name] = measure(report, "client_bound", name, server, tmp, env, n_bound, args.concurrency, 0.0)

    tool, minimal = lat["tool"], lat["minimal"]
    report.figure("latency_bound_tool_wall_over_ideal", tool["wall_s"] / ideal)
    report.figure("latency_bound_minimal_wall_over_ideal", minimal["wall_s"] / ideal)
    report.figure("latency_bound_tool_send_span_over_ideal", tool["send_span_s"] / ideal)
    report.figure("cpu_ratio", tool["cpu_s"] / minimal["cpu_s"])
    report.target("tool wall/ideal (latency-bound)", tool["wall_s"] / ideal, 1.10)
    report.target("tool send span/ideal (latency-bound, start-up excluded)", tool["send_span_s"] / ideal, 1.10)
    report.target("cpu_ratio (tool/minimal CPU per request, latency-bound)", tool["cpu_s"] / minimal["cpu_s"], 1.5)
    report.target("tool time to first request (latency-bound)", tool["first_request_s"], 0.5, unit=" s")
    report.target("tool peak RSS - minimal's (latency-bound)", tool["maxrss_mb"] - minimal["maxrss_mb"], 20.0,
                  unit=" MB")
    report.target("tool req/s (client-bound)", bound["tool"]["req_per_s"], 2000.0, lower_is_better=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
