"""Batch API mode at scale: a 100,000-prompt job against the fake server's Files and Batch endpoints.

Two measured processes, as a user runs them:
(a) `run SPEC --mode batch --no-wait`: claim the prompts, write the batch files, upload them, create the
    batches (two of 50,000): wall time and peak RSS;
(b) `python -m batch_prompt.resume DB`: poll, download the output files (lines in shuffled order),
    record every answer (cache, then rows, at the batch price): wall time and peak RSS, less the time
    the fake server spends answering (its own work, not ours: measured as the time from (b)'s start to
    the moment the server reports the last batch completed).

Targets: each step well under a minute and under 200 MB peak RSS. `--smoke` runs 2,000 prompts (CI).

    .venv/bin/python scripts/bench_batch.py [--smoke] [--prompts N]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import PYTHON, FakeServerProcess, Report, bench_env, run_measured, write_json

RSS_LIMIT_MB = 200.0
WALL_LIMIT_S = 60.0


def make_spec(n: int) -> dict[str, Any]:
    return {"name": "big", "api": "chat", "model": "gpt-4o-mini", "templates": ["Say one word about item {i}."],
            "keywords": {"i": [f"{i:07d}" for i in range(n)]}, "model_args": {"max_tokens": 8}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="2,000 prompts for CI; targets not enforced")
    parser.add_argument("--prompts", type=int, help="prompts (default 100,000; 2,000 with --smoke)")
    args = parser.parse_args()
    n = args.prompts or (2_000 if args.smoke else 100_000)
    report = Report(enforce=not args.smoke)
    report.package()
    report.figure("prompts", n)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        spec = write_json(tmp / "spec.json", make_spec(n))
        db, cache = tmp / "jobs.db", tmp / "cache"
        # the fake answers a batch as fast as it can; validation and finalizing take no time
        with FakeServerProcess(["--batch-validate-seconds", "0", "--batch-finalize-seconds", "0"], bench_env(tmp),
                               tmp, tmp / "server.log") as server:
            env = bench_env(tmp, OPENAI_BASE_URL=server.url)
            create = run_measured([PYTHON, "-m", "batch_prompt", "create", str(spec), "--db", str(db)], env, tmp,
                                  timeout=600).check()
            report.figure("create_wall_s", create.wall)
            submit = run_measured([PYTHON, "-m", "batch_prompt", "run", str(spec), "--db", str(db), "--cache-dir",
                                   str(cache), "--mode", "batch", "--no-wait", "--quiet"], env, tmp,
                                  timeout=600).check()
            batches = server._call("/_fake/batches")
            report.figure("submit_wall_s", submit.wall)
            report.figure("submit_maxrss_mb", submit.maxrss_mb, 1)
            report.figure("batches", len(batches))
            report.figure("lines_submitted", sum(b["lines"] or 0 for b in batches))
            # wait for the fake to answer every line, so that (b) measures collecting and recording, not the
            # fake's own work
            started = time.monotonic()
            deadline = started + 600
            while time.monotonic() < deadline:
                states = [b["status"] for b in server._call("/_fake/batches")]
                if all(state == "completed" for state in states):
                    break
                time.sleep(0.2)
            report.figure("fake_answering_s", time.monotonic() - started)
            collect = run_measured([PYTHON, "-m", "batch_prompt.resume", str(db), "--cache-dir", str(cache),
                                    "--poll", "0.2", "--quiet"], env, tmp, timeout=900).check()
            report.figure("collect_wall_s", collect.wall)
            report.figure("collect_maxrss_mb", collect.maxrss_mb, 1)
            conn = sqlite3.connect(db)
            done = conn.execute("SELECT count(*) FROM prompts WHERE status = 'done'").fetchone()[0]
            conn.close()
            report.figure("prompts_done", done)
            if done != n:
                raise RuntimeError(f"{done} of {n} prompts done\n{collect.stderr[-3000:]}")
            files_left = server._call("/_fake/files")
            report.figure("provider_files_left", len(files_left))
    report.target("write and upload wall", submit.wall, WALL_LIMIT_S, unit=" s")
    report.target("write and upload peak RSS", submit.maxrss_mb, RSS_LIMIT_MB, unit=" MB")
    report.target("collect and record wall", collect.wall, WALL_LIMIT_S, unit=" s")
    report.target("collect and record peak RSS", collect.maxrss_mb, RSS_LIMIT_MB, unit=" MB")
    return 1 if report.failed and not args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
