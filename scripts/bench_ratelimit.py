"""Rate-limit benchmark: does the tool use a server's limit fully without hammering it, when not told it?

Fake servers (separate processes) enforce a limit with OpenAI's `x-ratelimit-*` headers and 429s; the
tool is run with no `--rpm`/`--tpm` (but in `told`), concurrency 100, and must learn the limit from the
headers.

1. `rpm`: `--rpm-limit 6000 --burst-seconds 1 --latency 0.05`; N = 3,000 prompts, ideal = N / (rpm / 60)
   = 30 s.
2. `tpm`: `--tpm-limit` set so that tokens are the binding limit at the same pace (100 requests/s), no
   rpm limit; ideal = N x tokens per request (as the server counts them) / (tpm / 60) = 30 s.
3. `minute`: as `rpm`, but the server reports its headers in a minute's units while it enforces 100 per
   second (`--headers-per-minute`, as OpenAI's do): `remaining` says thousands are left when a second's
   hundred are spent.
4. `told`: as `minute`, the tool told the limit (`--rpm`): no careful start, as fast as before it.
5. `endpoints`: three servers side by side, each with its own key and limit (rpm / 2 each, per second,
   headers per minute), three jobs of one file (one model each, served by its own endpoint through the
   spec's `endpoints`) run by one `resume`; N / 2 prompts each, so one endpoint's ideal is the same 30 s.

Figures per case: wall / ideal (the tool's process wall, start-up included, and the span the servers
saw), and the 429s the servers recorded as a % of all requests they received (and how many came after
the first second, i.e. once the limit should have been learnt). Targets: wall / ideal <= 1.05 (1.25 for
`endpoints`: one endpoint's ideal, the three run side by side), 429s <= 2 % (and <= 1 % for `rpm` and
`tpm`). --smoke: 200 prompts at a 60,000/min limit (targets not enforced).

    python scripts/bench_ratelimit.py [--smoke] [--prompts N] [--rpm R] [--concurrency C] [--case CASE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import PYTHON, FakeServerProcess, Measured, Report, bench_env, run_measured, write_json

import batch_prompt as bp

MODEL = "fake-model"
MAX_TOKENS = 10
LATENCY = 0.05
ENDPOINTS = 3
CASES = ("rpm", "tpm", "minute", "told", "endpoints")


def prompt_text(i: int) -> str:
    return f"Say one word about item {i:07d}, please."  # fixed width: every request costs the same tokens


def server_tokens(n_chars: int) -> int:
    """The fake server's TPM cost of one chat request with one message (see testing.api.FakeRequest)."""
    return max(1, n_chars // 4) + MAX_TOKENS


def make_spec(name: str, n: int, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "api": "chat",
        "model": model,
        "templates": ["Say one word about item {item}, please."],
        "keywords": {"item": [f"{i:07d}" for i in range(n)]},
        "model_args": {"max_tokens": MAX_TOKENS},
        **extra,
    }


def run_cmd(tmp: Path, concurrency: int, *words: str) -> list[str]:
    return [PYTHON, "-m", "batch_prompt", *words, "--concurrency", str(concurrency), "--quiet",
            "--cache-dir", str(tmp / "cache")]


def figures(report: Report, case: str, result: Measured, record: list[dict[str, Any]], n: int, ideal: float,
            wall_target: float, share_targets: tuple[float, ...]) -> None:
    """The figures and targets of one case, from the servers' records (several servers: their union)."""
    ok = sum(1 for e in record if e["outcome"] == "ok")
    limited = [e for e in record if e["outcome"] == "error_429"]
    other = len(record) - ok - len(limited)
    if ok != n:
        raise RuntimeError(f"{case}: the servers answered {ok} prompts, expected {n}\n{result.stderr[-3000:]}")
    times = sorted(e["t"] for e in record if e["outcome"] == "ok")
    span = times[-1] - times[0] + LATENCY
    share = 100.0 * len(limited) / len(record)
    start = min(e["t"] for e in record)
    report.figure(f"{case}_ideal_wall_s", ideal)
    report.figure(f"{case}_wall_s", result.wall)
    report.figure(f"{case}_wall_over_ideal", result.wall / ideal)
    report.figure(f"{case}_send_span_s", span)
    report.figure(f"{case}_send_span_over_ideal", span / ideal)
    # the rest of the wall: start-up before the first request, and the end after the last answer
    report.figure(f"{case}_first_request_after_launch_s", min(e["t"] for e in record) - result.launched)
    report.figure(f"{case}_exit_after_last_answer_s", result.launched + result.wall - (times[-1] + LATENCY))
    report.figure(f"{case}_requests", len(record))
    report.figure(f"{case}_429s", len(limited))
    report.figure(f"{case}_429_pct", share, 2)
    report.figure(f"{case}_other_errors", other)
    if limited:
        report.figure(f"{case}_first_429_after_first_request_s", min(e["t"] for e in limited) - start)
    # 429s at start-up (before the limit is learnt) versus in the steady state
    report.figure(f"{case}_429s_after_first_second", sum(1 for e in limited if e["t"] - start > 1.0))
    report.figure(f"{case}_cpu_s", result.cpu)
    report.target(f"{case} wall/ideal", result.wall / ideal, wall_target)
    if wall_target < 1.10:
        report.target(f"{case} wall/ideal (loose)", result.wall / ideal, 1.10)
    for limit in share_targets:
        report.target(f"{case} 429s % of requests", share, limit, unit="%")


def one_server(report: Report, case: str, n: int, rpm: int, concurrency: int) -> None:
    per_request = server_tokens(len(prompt_text(0)))
    if case == "tpm":
        tpm = rpm * per_request
        limit_args = ["--tpm-limit", str(tpm)]
        ideal = n * per_request / (tpm / 60)
        report.figure("tpm_limit", tpm)
        report.figure("tpm_tokens_per_request_server", per_request)
    else:
        limit_args = ["--rpm-limit", str(rpm)]
        ideal = n / (rpm / 60)
        report.figure(f"{case}_rpm_limit", rpm)
    if case in ("minute", "told"):
        limit_args.append("--headers-per-minute")
    told = ["--rpm", str(rpm)] if case == "told" else []
    with tempfile.TemporaryDirectory(prefix=f"bench-ratelimit-{case}-") as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp)
        spec = write_json(tmp / "spec.json", make_spec(f"ratelimit-{case}", n))
        server_args = [*limit_args, "--burst-seconds", "1", "--latency", str(LATENCY)]
        with FakeServerProcess(server_args, env, tmp, tmp / "server.log") as server:
            cmd = run_cmd(tmp, concurrency, "run", str(spec), "--db", str(tmp / "jobs.db"), "--base-url", server.url,
                          *told)
            result = run_measured(cmd, env, tmp, timeout=max(120.0, 10 * ideal)).check()
            record = server.record()
    loose = (1.0, 2.0) if case in ("rpm", "tpm") else (2.0,)
    figures(report, case, result, record, n, ideal, 1.05, loose)


def endpoints(report: Report, n: int, rpm: int, concurrency: int) -> None:
    """Three servers, a key and a limit each; three jobs of one file, each model at its own endpoint."""
    each_rpm, each_n = rpm // 2, n // 2
    ideal = each_n / (each_rpm / 60)
    report.figure("endpoints", ENDPOINTS)
    report.figure("endpoints_rpm_limit_each", each_rpm)
    report.figure("endpoints_prompts_each", each_n)
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-endpoints-") as tmp_name, \
            contextlib.ExitStack() as servers:
        tmp = Path(tmp_name)
        keys = {f"BENCH_KEY_{i}": f"sk-bench-endpoint-{i}" for i in range(ENDPOINTS)}
        env = bench_env(tmp, **keys)
        started = []
        for i, key in enumerate(keys.values()):
            args = ["--rpm-limit", str(each_rpm), "--burst-seconds", "1", "--headers-per-minute",
                    "--latency", str(LATENCY), "--api-key", key]
            started.append(servers.enter_context(FakeServerProcess(args, env, tmp, tmp / f"server{i}.log")))
        db = tmp / "jobs.db"
        for i, (server, variable) in enumerate(zip(started, keys, strict=True)):
            model = f"model-{i}"
            spec = make_spec(f"endpoint-{i}", each_n, model,
                             endpoints={model: {"base_url": server.url, "api_key_env": variable}})
            bp.create(db, write_json(tmp / f"spec{i}.json", spec))  # here: only the run is measured
        cmd = run_cmd(tmp, concurrency, "resume", str(db))
        result = run_measured(cmd, env, tmp, timeout=max(120.0, 10 * ideal)).check()
        records = [server.record() for server in started]
    for i, record in enumerate(records):
        models = {e["model"] for e in record}
        if models != {f"model-{i}"}:
            raise RuntimeError(f"endpoint {i} saw models {sorted(models)}")
        report.figure(f"endpoints_{i}_429s", sum(1 for e in record if e["outcome"] == "error_429"))
    figures(report, "endpoints", result, [e for r in records for e in r], ENDPOINTS * each_n, ideal, 1.25, (2.0,))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI; targets not enforced")
    parser.add_argument("--prompts", type=int, help="prompts per case (default 3000; 200 with --smoke)")
    parser.add_argument("--rpm", type=int, help="the server's limit in requests/min (default 6000; 60000 smoke)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--case", choices=(*CASES, "all"), default="all")
    args = parser.parse_args()
    n = args.prompts or (200 if args.smoke else 3000)
    rpm = args.rpm or (60_000 if args.smoke else 6000)
    report = Report(enforce=not args.smoke)
    report.package()
    report.figure("prompts", n)
    report.figure("concurrency", args.concurrency)
    report.figure("server_latency_s", LATENCY)
    for case in CASES if args.case == "all" else (args.case,):
        if case == "endpoints":
            endpoints(report, n, rpm, args.concurrency)
        else:
            one_server(report, case, n, rpm, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
