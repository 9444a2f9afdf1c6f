"""Helpers for the crash and fault tests, which run batch-prompt as real processes against the fake server.

`Procs` starts `python -m batch_prompt ...` (or `batch_prompt.resume`) with stdout and stderr going to files
under the test's folder, and kills and reaps, one by one, whatever is still running when the test ends.
The rest are the small builders and checks the test files share (specs, statuses, filling a job database
with answers as a run would have written them).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import batch_prompt as bp
from batch_prompt.store.database import Charge, Outcome, Store
from batch_prompt.testing import FakeServer

from .conftest import cli_env

PROC_TIMEOUT = 120.0  # no single process of these tests should come near this


@dataclass
class Proc:
    """A started process, its command line and the files holding its output."""

    popen: subprocess.Popen[bytes]
    args: list[str]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = PROC_TIMEOUT) -> int:
        """The exit code; a process still running after `timeout` is killed and the test fails."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{' '.join(self.args)} still running after {timeout:.0f} s; stderr:\n{self.stderr}"
            ) from None

    def kill(self) -> float:
        """SIGKILL (if still running) and reap; returns the `time.monotonic()` of the kill."""
        t = time.monotonic()
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        return t

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class Procs:
    """The processes of one test. `close()` (the fixture calls it) kills and reaps each one still running."""

    def __init__(self, tmp_path: Path, fake: FakeServer | None) -> None:
        self.tmp_path = tmp_path
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = cli_env(fake, tmp_path)
        self.started: list[Proc] = []

    def start(self, *args: str, module: str = "batch_prompt") -> Proc:
        number = len(self.started)
        out, err = self.logs / f"{number}.out", self.logs / f"{number}.err"
        command = [sys.executable, "-m", module, *args]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(command, env=self.env, cwd=self.tmp_path, stdout=stdout, stderr=stderr)
        proc = Proc(popen, command[2:], out, err)
        self.started.append(proc)
        return proc

    def run(self, *args: str, module: str = "batch_prompt", timeout: float = PROC_TIMEOUT) -> Proc:
        """Start and wait for it to exit."""
        proc = self.start(*args, module=module)
        proc.wait(timeout)
        return proc

    def resume(self, *args: str) -> Proc:
        return self.start(*args, module="batch_prompt.resume")

    def close(self) -> None:
        for proc in self.started:
            if proc.popen.poll() is None:
                proc.popen.kill()
            proc.popen.wait()


# --- specs -----------------------------------------------------------------------------------------


def chat_spec(count: int, prefix: str = "q", *, name: str = "chat", n: int = 2,
              fail400: Iterable[int] = (), **extra: Any) -> dict[str, Any]:
    """`count` chat prompts `"{prefix} {i}"` (or `"{prefix} {i} FAIL400"` for i in `fail400`), n samples each;
    `extra` adds or replaces spec fields (`templates` over the keyword `w`, `rpm`, ...)."""
    bad = set(fail400)
    words = [f"{i} FAIL400" if i in bad else str(i) for i in range(count)]
    return {"name": name, "api": "chat", "model": "gpt-4o-mini", "templates": [prefix + " {w}"],
            "keywords": {"w": words}, "model_args": {"n": n, "max_tokens": 8}, **extra}


def prompts_of(spec: dict[str, Any]) -> list[str]:
    """The rendered prompt texts of a `chat_spec`, in order."""
    template = spec["templates"][0]
    return [template.format(w=w) for w in spec["keywords"]["w"]]


def write_spec(folder: Path, spec: dict[str, Any], filename: str = "spec.json") -> Path:
    path = folder / filename
    path.write_text(json.dumps(spec))
    return path


def run_args(spec: Path, db: Path, cache: Path, concurrency: int = 16, *extra: str) -> list[str]:
    return ["run", str(spec), "--db", str(db), "--cache-dir", str(cache), "--concurrency", str(concurrency),
            "--quiet", *extra]


def resume_args(db: Path, cache: Path, concurrency: int = 16, *extra: str) -> list[str]:
    return [str(db), "--cache-dir", str(cache), "--concurrency", str(concurrency), "--quiet", *extra]


# --- checks ----------------------------------------------------------------------------------------


def statuses(db: Path, job: str | None = None) -> Counter[str]:
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT status FROM prompts"
        params: tuple[str, ...] = ()
        if job is not None:
            sql += " WHERE job_id = (SELECT id FROM jobs WHERE name = ?)"
            params = (job,)
        return Counter(row[0] for row in conn.execute(sql, params))
    finally:
        conn.close()


def statuses_by_model(db: Path) -> Counter[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return Counter(conn.execute("SELECT model, status FROM prompts").fetchall())
    finally:
        conn.close()


def fill_done(db: Path, limit: int = 1_000_000) -> None:
    """Mark up to `limit` pending prompts of each job and model done, with responses shaped as the API's (the
    fake server's echo, choices in reverse order) and their spend: what a run would have written."""
    with Store(db) as store:
        for job in store.jobs():
            rows = [row for model in job.spec["models"] for row in store.claim(job, model, "test:1:x", limit, 60)]
            outcomes = []
            for row in rows:
                request = json.loads(row.request)
                n = request.get("n", 1)
                text = request["messages"][-1]["content"] if "messages" in request else request["prompt"]
                choices = [
                    {"index": j, "message": {"role": "assistant", "content": f"echo {j}: {text}"},
                     "finish_reason": "stop", "logprobs": None} if "messages" in request else
                    {"index": j, "text": f"echo {j}: {text}", "finish_reason": "stop", "logprobs": None}
                    for j in reversed(range(n))
                ]
                response = {"id": f"x-{row.id}", "object": "chat.completion", "created": 1, "model": row.model,
                            "choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                                          "total_tokens": 7}}
                outcomes.append(Outcome(row.id, row.job_id, "done", json.dumps(response), False, 3, 4, 1))
            charges = [Charge(job.id, row.model, "live", 1, 1, 3, 4) for row in rows]
            store.record(outcomes, "test:1:x", charges)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def check_chat_results(results: list[dict[str, Any]], prompts: list[str], n: int) -> None:
    """Exactly n items per prompt, each choice's content the fake's echo of its own prompt and sample."""
    assert len(results) == len(prompts) * n, (len(results), len(prompts), n)
    by_prompt: Counter[str] = Counter()
    for item in results:
        prompt = item["messages"][-1]["content"]
        choice = item["choice"]
        assert choice["message"]["content"] == f"echo {choice['index']}: {prompt}", item
        assert choice["finish_reason"] == "stop"
        by_prompt[prompt] += 1
    assert by_prompt == Counter({p: n for p in prompts})
    per_hash = Counter(item["prompt_hash"] for item in results)
    assert set(per_hash.values()) == {n} and len(per_hash) == len(prompts)


def check_export(db: Path, prompts: list[str], n: int, job: str | None = None) -> list[dict[str, Any]]:
    results = bp.export(db)
    assert isinstance(results, list)
    if job is not None:
        results = [item for item in results if item["job"] == job]
    check_chat_results(results, prompts, n)
    return results


def ok_times(fake: FakeServer, prompts: Iterable[str]) -> dict[str, list[float]]:
    """Arrival times of the requests the server answered in full (outcome "ok"), by prompt."""
    wanted = set(prompts)
    times: dict[str, list[float]] = {}
    for entry in fake.record:
        if entry["outcome"] == "ok":
            for prompt in entry["prompts"]:
                if prompt in wanted:
                    times.setdefault(prompt, []).append(entry["t"])
    return times


def outcomes(fake: FakeServer, prompts: Iterable[str] | None = None) -> Counter[str]:
    wanted = None if prompts is None else set(prompts)
    return Counter(
        entry["outcome"] for entry in fake.record if wanted is None or wanted & set(entry["prompts"])
    )
