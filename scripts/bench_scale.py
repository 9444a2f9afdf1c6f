"""Scale benchmark: a job of 1,000,000 chat prompts (1,000 templates x 1,000 keyword dicts).

Every step runs the command line in a child process (`os.wait4` gives its CPU and peak RSS); the fake
server is another process.

(a) `python -m batch_prompt create SPEC --db DB`: wall, rows/s, peak RSS.
(c) resume start with nothing done (1,000,000 pending): time from launching `python -m batch_prompt.resume`
    to the fake server receiving its first request; the resume is then stopped with SIGTERM.
    Set-up (not measured): one SQL UPDATE marks every row done with a small fake response, except the
    last 1,000, which are pending.
(c) resume start with 999,000 done and 1,000 pending, the same figure; that resume runs to the end, and
(d) its peak RSS (and wall) is the cost of finishing the last 1,000 of 1,000,000.
(b) `python -m batch_prompt export DB -o out.pkl` of the 1,000,000 done rows: wall, rows/s, peak RSS.
(e) with `--whole-run N`: a job of N prompts sent from start to end against a fake server that answers at
    once (client-bound, so the run is as long as the client makes it): wall, req/s and peak RSS, which
    must stay under 100 MB whatever N (what a run keeps per finished row would show here). 2026-12-04,
    N = 1,000,000: 419 s (2,390 req/s), peak RSS 97 MB. --smoke runs N = 2,000.

"First request" is the `t` (the server's `time.monotonic()`) of the first entry of `GET /_fake/record`,
minus `time.monotonic()` here at launch: CLOCK_MONOTONIC is one clock for every process on Linux. The
record is also polled every 10 ms and the time it was first seen non-empty is printed as a check
(`*_first_answer_polled_s`): the server lists a request once it has answered it, so that figure is
the first request's arrival plus the server's latency (0.2 s) plus up to one poll.

Targets (full mode): create < 30 s, resume start < 2 s, export < 60 s, peak RSS < 300 MB (create,
export), < 100 MB for a run (either resume: the bare SDK client alone holds 70-100 MB).
--smoke: 20,000 prompts (100 x 200), targets not enforced. Exit 1 only when the benchmark itself breaks.

    python scripts/bench_scale.py [--smoke] [--templates T] [--keywords K] [--pending P] [--keep DIR]
                                  [--whole-run N]
"""

from __future__ import annotations

import argparse
import json
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import PYTHON, FakeServerProcess, Measured, Report, bench_env, run_measured, write_json

CONCURRENCY = 100
LATENCY = 0.2
RSS_LIMIT_MB = 300.0
RUN_RSS_LIMIT_MB = 100.0  # a run of the 1,000,000-prompt job (issue 18)

FAKE_RESPONSE_SQL = (
    """'{"id":"chatcmpl-' || id || '","object":"chat.completion","created":1,"model":"' || model || '",'"""
    """ || '"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop",'"""
    """ || '"logprobs":null}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'"""
)


def make_spec(n_templates: int, n_keywords: int) -> dict[str, Any]:
    return {
        "name": "scale",
        "api": "chat",
        "model": "fake-model",
        "templates": [f"Template {t}: tell me about {{thing}} in the style of {{style}}." for t in range(n_templates)],
        "keywords": [{"thing": f"thing number {k}", "style": f"style {k % 7}"} for k in range(n_keywords)],
        "model_args": {"max_tokens": 5, "temperature": 0.0},
    }


def fill_done(db: Path, pending: int) -> float:
    """Set-up: every prompt done with a small fake response, except the last `pending` (by id) pending."""
    started = time.monotonic()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (top,) = conn.execute("SELECT max(id) FROM prompts").fetchone()
        cut = top - pending
        conn.execute(
            "UPDATE prompts SET"
            " status = CASE WHEN id > :cut THEN 'pending' ELSE 'done' END,"
            f" response = CASE WHEN id > :cut THEN NULL ELSE {FAKE_RESPONSE_SQL} END,"
            " prompt_tokens = CASE WHEN id > :cut THEN NULL ELSE 12 END,"
            " completion_tokens = CASE WHEN id > :cut THEN NULL ELSE 1 END,"
            " finished_at = CASE WHEN id > :cut THEN NULL ELSE 1.0 END,"
            " cached = 0, attempts = 0, last_error = NULL, lease_owner = NULL, lease_expires = NULL",
            {"cut": cut},
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started


def status_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        (total,) = conn.execute("SELECT count(*) FROM prompts").fetchone()
        rows = conn.execute("SELECT status, count(*) FROM prompts WHERE status != 'done' GROUP BY status").fetchall()
    finally:
        conn.close()
    counts = {"pending": 0, "running": 0, "failed": 0, **dict(rows)}
    counts["done"] = total - sum(counts.values())
    return counts


class FirstRequest:
    """Polls the fake server's record while a resume starts; optionally SIGTERMs it once it sends."""

    def __init__(self, server: FakeServerProcess, stop: bool) -> None:
        self.server, self.stop = server, stop
        self.seen_at: float | None = None  # time.monotonic() when the record was first seen non-empty
        self.first_t: float | None = None  # the first request's arrival, the server's time.monotonic()
        self.stopped_at: float | None = None

    def __call__(self, proc: subprocess.Popen[bytes], launched: float) -> bool:
        record = self.server.record()
        if not record:
            return False
        self.seen_at = time.monotonic()
        self.first_t = min(entry["t"] for entry in record)
        if self.stop:
            proc.send_signal(signal.SIGTERM)
            self.stopped_at = time.monotonic()
        return True


def measure_resume(
    server: FakeServerProcess, db: Path, tmp: Path, env: dict[str, str], stop: bool, timeout: float
) -> tuple[Measured, FirstRequest]:
    cmd = [
        PYTHON, "-m", "batch_prompt.resume", str(db), "--concurrency", str(CONCURRENCY), "--quiet",
        "--cache-dir", str(tmp / "cache"), "--base-url", server.url,
    ]
    watcher = FirstRequest(server, stop)
    server.reset()
    result = run_measured(cmd, env, tmp, timeout=timeout, while_running=watcher, poll_interval=0.01)
    result.check(130 if stop else 0)
    if watcher.first_t is None:
        raise RuntimeError(f"the resume never sent a request\n{result.stderr[-3000:]}")
    return result, watcher


def measured_step(
    report: Report, name: str, args: list[str], expect: str, n: int, env: dict[str, str], cwd: Path
) -> Measured:
    """Run `python -m batch_prompt ARGS`, check its output names `expect`, report wall, rows/s, CPU, RSS."""
    result = run_measured([PYTHON, "-m", "batch_prompt", *args], env, cwd, timeout=1800).check()
    if expect not in result.stdout.replace(",", ""):
        raise RuntimeError(f"{name} did not report {expect}: {result.stdout!r}")
    report.figure(f"{name}_wall_s", result.wall)
    report.figure(f"{name}_rows_per_s", round(n / result.wall))
    report.figure(f"{name}_cpu_s", result.cpu)
    report.figure(f"{name}_maxrss_mb", result.maxrss_mb, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="20,000 prompts for CI; targets not enforced")
    parser.add_argument("--templates", type=int, help="templates (default 1000; 100 with --smoke)")
    parser.add_argument("--keywords", type=int, help="keyword dicts (default 1000; 200 with --smoke)")
    parser.add_argument("--pending", type=int, default=1000, help="prompts left pending for the last resume")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--whole-run", type=int, metavar="N",
                        help="also send a whole job of N prompts (about 7 min for 1,000,000; 2,000 with --smoke)")
    args = parser.parse_args()
    n_templates = args.templates or (100 if args.smoke else 1000)
    n_keywords = args.keywords or (200 if args.smoke else 1000)
    n = n_templates * n_keywords
    report = Report(enforce=not args.smoke)
    report.package()
    # (e) first, while this process is small: a child's peak RSS counts what it shared with it at its start
    whole = args.whole_run or (2_000 if args.smoke else 0)
    run = whole_run(report, whole) if whole else None
    report.figure("prompts", n)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(args.keep) if args.keep else Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        env = bench_env(tmp)
        db = tmp / "jobs.db"
        if db.exists():
            raise SystemExit(f"{db} exists: give --keep an empty folder")
        spec = write_json(tmp / "spec.json", make_spec(n_templates, n_keywords))

        # (a) create
        create = measured_step(report, "create", ["create", str(spec), "--db", str(db)], f"{n} prompts", n, env, tmp)
        report.figure("db_size_mb_after_create", db.stat().st_size / 2**20, 1)

        with FakeServerProcess(["--latency", str(LATENCY)], env, tmp, tmp / "server.log") as server:
            # (c) resume start, nothing done; stopped with SIGTERM once it sends
            result, first = measure_resume(server, db, tmp, env, stop=True, timeout=600)
            assert first.first_t is not None and first.seen_at is not None and first.stopped_at is not None
            sent = len(server.record())
            counts = status_counts(db)
            report.figure("resume_start_none_done_s", first.first_t - result.launched)
            report.figure("resume_none_done_first_answer_polled_s", first.seen_at - result.launched)
            report.figure("resume_none_done_stop_after_sigterm_s", result.launched + result.wall - first.stopped_at)
            report.figure("resume_none_done_requests_sent", sent)
            report.figure("resume_none_done_maxrss_mb", result.maxrss_mb, 1)
            report.figure("resume_none_done_left_running", counts["running"])
            if counts["running"]:
                report.note(f"rows left 'running' after a SIGTERM'd resume: {counts}")
            start_none = first.first_t - result.launched
            rss_none = result.maxrss_mb

            # set-up: all done but the last `pending`
            report.figure("setup_fill_done_s", fill_done(db, args.pending))
            report.figure("db_size_mb_after_fill", db.stat().st_size / 2**20, 1)

            # (c) resume start with n - pending done, and (d) the run of the last `pending`
            result, first = measure_resume(server, db, tmp, env, stop=False, timeout=600)
            assert first.first_t is not None and first.seen_at is not None
            record = server.record()
            ok = sum(1 for entry in record if entry["outcome"] == "ok")
            counts = status_counts(db)
            if ok != args.pending or counts["done"] != n:
                raise RuntimeError(f"the last resume answered {ok} requests; rows {counts}\n{result.stderr[-3000:]}")
            start_rest = first.first_t - result.launched
            ideal = args.pending * LATENCY / CONCURRENCY
            report.figure(f"resume_start_{n - args.pending}_done_s", start_rest)
            report.figure(f"resume_{n - args.pending}_done_first_answer_polled_s", first.seen_at - result.launched)
            report.figure(f"resume_last_{args.pending}_wall_s", result.wall)
            report.figure(f"resume_last_{args.pending}_ideal_s", ideal)
            report.figure(f"resume_last_{args.pending}_cpu_s", result.cpu)
            report.figure(f"resume_last_{args.pending}_maxrss_mb", result.maxrss_mb, 1)
            rss_rest = result.maxrss_mb

        # (b) export of n done rows
        out = tmp / "out.pkl"
        export = measured_step(report, "export", ["export", str(db), "-o", str(out)], f"{n} results", n, env, tmp)
        report.figure("export_file_mb", out.stat().st_size / 2**20, 1)
        if args.smoke:  # small enough to load and check
            with out.open("rb") as f:
                results = pickle.load(f)
            if len(results) != n or results[-1]["choice"]["message"]["content"] != f"echo 0: {_last_prompt(spec)}":
                raise RuntimeError(f"unexpected export: {len(results)} items, last {results[-1]!r}")

    report.target("create wall", create.wall, 30.0, unit=" s")
    report.target("resume start (none done)", start_none, 2.0, unit=" s")
    report.target(f"resume start ({n - args.pending} done)", start_rest, 2.0, unit=" s")
    report.target("export wall", export.wall, 60.0, unit=" s")
    report.target("create peak RSS", create.maxrss_mb, RSS_LIMIT_MB, unit=" MB")
    report.target("resume (none done) peak RSS", rss_none, RUN_RSS_LIMIT_MB, unit=" MB")
    report.target(f"resume (last {args.pending}) peak RSS", rss_rest, RUN_RSS_LIMIT_MB, unit=" MB")
    report.target("export peak RSS", export.maxrss_mb, RSS_LIMIT_MB, unit=" MB")
    if run is not None:
        report.target(f"whole run of {whole:,} prompts: peak RSS", run.maxrss_mb, RUN_RSS_LIMIT_MB, unit=" MB")
    return 0


def whole_run(report: Report, n: int) -> Measured:
    """(e): create a job of `n` prompts (not measured), then send all of it, measured."""
    templates = max(1, min(1_000, n // 1_000))
    if n % templates:
        raise SystemExit(f"--whole-run must be a multiple of {templates}")
    with tempfile.TemporaryDirectory(prefix="bench-whole-run-") as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp)
        db = tmp / "whole.db"
        spec = write_json(tmp / "spec.json", make_spec(templates, n // templates))
        create = [PYTHON, "-m", "batch_prompt", "create", str(spec), "--db", str(db)]
        run_measured(create, env, tmp, timeout=1800).check()
        with FakeServerProcess(["--latency", "0"], env, tmp, tmp / "server.log") as server:
            cmd = [PYTHON, "-m", "batch_prompt.resume", str(db), "--concurrency", str(CONCURRENCY), "--quiet",
                   "--cache-dir", str(tmp / "cache"), "--base-url", server.url]
            result = run_measured(cmd, env, tmp, timeout=7200).check()
        counts = status_counts(db)
        if counts["done"] != n:
            raise RuntimeError(f"the whole run left rows {counts}\n{result.stderr[-3000:]}")
    report.figure("whole_run_prompts", n)
    report.figure("whole_run_wall_s", result.wall)
    report.figure("whole_run_req_per_s", round(n / result.wall))
    report.figure("whole_run_cpu_s", result.cpu)
    report.figure("whole_run_maxrss_mb", result.maxrss_mb, 1)
    return result


def _last_prompt(spec: Path) -> str:
    data = json.loads(spec.read_text())
    return str(data["templates"][-1].format(**data["keywords"][-1]))


if __name__ == "__main__":
    sys.exit(main())
