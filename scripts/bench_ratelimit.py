"""Rate-limit benchmark: does the tool use a server's limit fully without hammering it, when not told it?

The fake server (a separate process) enforces a limit with OpenAI's `x-ratelimit-*` headers and 429s;
the tool is run with no `--rpm`/`--tpm`, concurrency 100, and must learn the limit from the headers.

1. requests: `--rpm-limit 6000 --burst-seconds 1 --latency 0.05`; N = 3,000 prompts, ideal = N / (rpm / 60)
   = 30 s.
2. tokens: `--tpm-limit` set so that tokens are the binding limit at the same pace (100 requests/s), no
   rpm limit; ideal = N x tokens per request (as the server counts them) / (tpm / 60) = 30 s.

Figures per case: wall / ideal (the tool's process wall, start-up included, and the span the server saw),
and the 429s the server recorded as a % of all requests it received (and how many came after the first
second, i.e. once the limit should have been learnt). Targets: wall / ideal <= 1.05 (and
<= 1.10 reported), 429s <= 1% (and <= 2% reported). --smoke: 200 prompts at a 60,000/min limit.

    python scripts/bench_ratelimit.py [--smoke] [--prompts N] [--rpm R] [--concurrency C]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import PYTHON, FakeServerProcess, Report, bench_env, run_measured, write_json

MODEL = "fake-model"
MAX_TOKENS = 10
LATENCY = 0.05


def prompt_text(i: int) -> str:
    return f"Say one word about item {i:07d}, please."  # fixed width: every request costs the same tokens


def server_tokens(n_chars: int) -> int:
    """The fake server's TPM cost of one chat request with one message (see testing.api.FakeRequest)."""
    return max(1, n_chars // 4) + MAX_TOKENS


def make_spec(name: str, n: int) -> dict[str, Any]:
    return {
        "name": name,
        "api": "chat",
        "model": MODEL,
        "templates": ["Say one word about item {item}, please."],
        "keywords": {"item": [f"{i:07d}" for i in range(n)]},
        "model_args": {"max_tokens": MAX_TOKENS},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI; targets not enforced")
    parser.add_argument("--prompts", type=int, help="prompts per case (default 3000; 200 with --smoke)")
    parser.add_argument("--rpm", type=int, help="the server's limit in requests/min (default 6000; 60000 smoke)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--case", choices=("rpm", "tpm", "both"), default="both")
    args = parser.parse_args()
    n = args.prompts or (200 if args.smoke else 3000)
    rpm = args.rpm or (60_000 if args.smoke else 6000)
    per_request = server_tokens(len(prompt_text(0)))
    tpm = rpm * per_request
    report = Report(enforce=not args.smoke)
    report.package()
    report.figure("prompts", n)
    report.figure("concurrency", args.concurrency)
    report.figure("server_latency_s", LATENCY)
    cases = ["rpm", "tpm"] if args.case == "both" else [args.case]
    for case in cases:
        if case == "rpm":
            limit_args = ["--rpm-limit", str(rpm)]
            ideal = n / (rpm / 60)
            report.figure("rpm_limit", rpm)
        else:
            limit_args = ["--tpm-limit", str(tpm)]
            ideal = n * per_request / (tpm / 60)
            report.figure("tpm_limit", tpm)
            report.figure("tpm_tokens_per_request_server", per_request)
        report.figure(f"{case}_ideal_wall_s", ideal)
        with tempfile.TemporaryDirectory(prefix=f"bench-ratelimit-{case}-") as tmp_name:
            tmp = Path(tmp_name)
            env = bench_env(tmp)
            spec = write_json(tmp / "spec.json", make_spec(f"ratelimit-{case}", n))
            server_args = [*limit_args, "--burst-seconds", "1", "--latency", str(LATENCY)]
            with FakeServerProcess(server_args, env, tmp, tmp / "server.log") as server:
                cmd = [
                    PYTHON, "-m", "batch_prompt", "run", str(spec), "--db", str(tmp / "jobs.db"),
                    "--concurrency", str(args.concurrency), "--quiet", "--cache-dir", str(tmp / "cache"),
                    "--base-url", server.url,
                ]
                result = run_measured(cmd, env, tmp, timeout=max(120.0, 10 * ideal)).check()
                record = server.record()
        ok = sum(1 for e in record if e["outcome"] == "ok")
        limited = [e for e in record if e["outcome"] == "error_429"]
        other = len(record) - ok - len(limited)
        if ok != n:
            raise RuntimeError(f"{case}: the server answered {ok} prompts, expected {n}\n{result.stderr[-3000:]}")
        times = sorted(e["t"] for e in record if e["outcome"] == "ok")
        span = times[-1] - times[0] + LATENCY
        share = 100.0 * len(limited) / len(record)
        first_429 = min((e["t"] for e in limited), default=None)
        report.figure(f"{case}_wall_s", result.wall)
        report.figure(f"{case}_wall_over_ideal", result.wall / ideal)
        report.figure(f"{case}_send_span_s", span)
        report.figure(f"{case}_send_span_over_ideal", span / ideal)
        report.figure(f"{case}_requests", len(record))
        report.figure(f"{case}_429s", len(limited))
        report.figure(f"{case}_429_pct", share, 2)
        report.figure(f"{case}_other_errors", other)
        start = min(e["t"] for e in record)
        if first_429 is not None:
            report.figure(f"{case}_first_429_after_first_request_s", first_429 - start)
        # 429s at start-up (before the limit is learnt) versus in the steady state
        report.figure(f"{case}_429s_after_first_second", sum(1 for e in limited if e["t"] - start > 1.0))
        report.figure(f"{case}_cpu_s", result.cpu)
        report.target(f"{case} wall/ideal", result.wall / ideal, 1.05)
        report.target(f"{case} wall/ideal (loose)", result.wall / ideal, 1.10)
        report.target(f"{case} 429s % of requests", share, 1.0, unit="%")
        report.target(f"{case} 429s % of requests (loose)", share, 2.0, unit="%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
