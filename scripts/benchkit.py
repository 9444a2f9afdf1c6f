"""Shared helpers of the benchmark scripts (scripts/bench_*.py); not a benchmark itself.

- `FakeServerProcess`: the project's fake server as a separate process (so the tool's CPU is measured
  apart from the server's), controlled over its `/_fake/*` HTTP endpoints.
- `run_measured`: run a command in a child process and return its wall time, CPU seconds and peak RSS,
  read with `os.wait4` (the rusage of exactly that child, no psutil, no wrapper).
- `Report`: prints one `name=value` line per figure and one `PASS`/`FAIL` line per target.

`python scripts/benchkit.py --smoke` self-checks the helpers (start a fake server, measure a child that
sends it one request) in a few seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PYTHON = sys.executable
API_KEY = "sk-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def bench_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of every child: a fixed fake key, no endpoint from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = API_KEY
    env["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")  # in case a command falls back to the default cache
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (from /proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5), 0-based after pid/comm


class FakeServerProcess:
    """`python -m batch_prompt.testing --port 0 ARGS` in a child process; a context manager."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.args = list(args)
        self.env, self.cwd, self.log_path = env, cwd, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log: IO[bytes] | None = None

    def __enter__(self) -> FakeServerProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "batch_prompt.testing", "--port", "0", *self.args],
            stdout=subprocess.PIPE, stderr=self._log, env=self.env, cwd=self.cwd,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("FAKE_SERVER_URL="):
            self.__exit__()
            raise RuntimeError(f"fake server did not start: {line!r}; see {self.log_path}")
        self.url = line.partition("=")[2]
        self.root = self.url.removesuffix("/v1")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(
            self.root + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def record(self) -> list[dict[str, Any]]:
        """One dict per completion request received: seq, outcome, status, t (server's time.monotonic)..."""
        result: list[dict[str, Any]] = self._call("/_fake/record")
        return result

    def reset(self) -> None:
        self._call("/_fake/reset", {})

    def configure(self, **settings: Any) -> None:
        self._call("/_fake/config", settings)


@dataclass
class Measured:
    """What one child process cost."""

    cmd: list[str]
    returncode: int
    wall: float  # seconds from launch to exit
    user: float  # CPU seconds
    system: float
    maxrss_mb: float  # peak resident set size (MiB)
    stdout: str
    stderr: str
    launched: float  # time.monotonic() at launch (comparable with the fake server's `t` on Linux)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def check(self, *ok: int) -> Measured:
        """Raise when the child exited with a code not in `ok` (default: 0)."""
        if self.returncode not in (ok or (0,)):
            raise RuntimeError(
                f"{' '.join(self.cmd)} exited {self.returncode}\n--- stdout:\n{self.stdout[-2000:]}"
                f"\n--- stderr:\n{self.stderr[-4000:]}"
            )
        return self


def run_measured(
    cmd: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float = 600.0,
    while_running: Callable[[subprocess.Popen[bytes], float], bool] | None = None,
    poll_interval: float = 0.01,
) -> Measured:
    """Run `cmd` to its end; wall time, CPU and peak RSS of that child (and any child it waited for).

    `while_running(proc, launched)` is called every `poll_interval` seconds while the child runs, until it
    returns True (it may signal the child). The child is killed after `timeout` seconds.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        launched = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        watching = while_running is not None
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            now = time.monotonic()
            if now - launched > timeout and not killed:
                proc.kill()
                killed = True
            if watching and while_running is not None and while_running(proc, launched):
                watching = False
            time.sleep(poll_interval if watching else min(0.05, poll_interval * 5))
        wall = time.monotonic() - launched
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if killed:
        raise RuntimeError(f"{' '.join(cmd)} timed out after {timeout:.0f} s\n{stderr[-4000:]}")
    return Measured(
        list(cmd), proc.returncode, wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, stdout, stderr,
        launched,
    )


class Report:
    """Figures as `name=value` lines, targets as `PASS`/`FAIL` lines; `failed` lists the missed targets."""

    def __init__(self, enforce: bool) -> None:
        self.enforce = enforce
        self.failed: list[str] = []

    def package(self) -> None:
        """Which batch_prompt the children run: the interpreter's installed one (editable or not)."""
        spec = importlib.util.find_spec("batch_prompt")
        print(f"package={spec.origin if spec else 'NOT INSTALLED'}", flush=True)

    def figure(self, name: str, value: float | int | str, digits: int = 3) -> None:
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        print(f"{name}={text}", flush=True)

    def target(self, name: str, value: float, limit: float, *, unit: str = "", lower_is_better: bool = True) -> bool:
        ok = value <= limit if lower_is_better else value >= limit
        op = "<=" if lower_is_better else ">="
        word = "PASS" if ok else "FAIL"
        note = "" if self.enforce else " (smoke: not enforced)"
        print(f"{word} {name}: {value:.3f}{unit} {op} {limit:g}{unit}{note}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok

    def note(self, text: str) -> None:
        print(f"# {text}", flush=True)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _self_check() -> int:
    """Start a fake server, measure a child that sends it one request, read the record back."""
    report = Report(enforce=False)
    with tempfile.TemporaryDirectory(prefix="bench-util-") as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp)
        with FakeServerProcess(["--latency", "0.01"], env, tmp, tmp / "server.log") as server:
            code = (
                "import json, sys, urllib.request\n"
                "body = json.dumps({'model': 'fake-model', 'messages': [{'role': 'user', 'content': 'hi'}]})\n"
                "req = urllib.request.Request(sys.argv[1] + '/chat/completions', data=body.encode(),\n"
                "    headers={'Content-Type': 'application/json'})\n"
                "print(json.loads(urllib.request.urlopen(req).read())['choices'][0]['message']['content'])\n"
            )
            result = run_measured([PYTHON, "-c", code, server.url], env, tmp).check()
            record = server.record()
            report.figure("child_wall_s", result.wall)
            report.figure("child_cpu_s", result.cpu)
            report.figure("child_maxrss_mb", result.maxrss_mb, 1)
            report.figure("server_requests", len(record))
            report.figure("server_cpu_s", server.cpu_seconds())
            if result.stdout.strip() != "echo 0: hi" or len(record) != 1:
                print(f"self-check failed: {result.stdout!r}, {record!r}", file=sys.stderr)
                return 1
            # the fake server's `t` is time.monotonic() of another process: comparable on Linux
            report.figure("first_request_after_launch_s", record[0]["t"] - result.launched)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="self-check of the helpers (what CI runs)")
    parser.parse_args()
    sys.exit(_self_check())
