"""Shared fixtures: a real fake server on loopback for the whole session, a clean environment, the command
line run in this process as a user's process would see it (`run_cli`), or in a subprocess where a real
process is the point (`run_process`, `procs`); the kill trials' seed in the report."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_prompt.testing import FakeConfig, FakeServer

API_KEY = "sk-test-SECRET-a1b2c3d4e5f6"


def pytest_report_header() -> str:
    from .helpers_trials import header

    return header()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .helpers_trials import header

    terminalreporter.write_line(header())


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real key or endpoint leaks in; the default cache lives in the test's own folder."""
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def fake_session() -> Iterator[FakeServer]:
    server = FakeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake(fake_session: FakeServer) -> Iterator[FakeServer]:
    """The session's fake server, reset to a clean record and no faults for each test."""
    fake_session.configure(**DEFAULT_FAKE_CONFIG)
    fake_session.reset()
    yield fake_session
    fake_session.configure(**DEFAULT_FAKE_CONFIG)
    fake_session.reset()


@pytest.fixture
def procs(fake: FakeServer, tmp_path: Path) -> Iterator[Any]:
    """The test's real processes (see `helpers_procs.Procs`), killed and reaped when it ends."""
    from .helpers_procs import Procs  # (it imports this module)

    started = Procs(tmp_path, fake)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs of `run_cli` use the no-wait retry policy (`RetryPolicy.no_wait`, as library tests pass
    it), with the attempts the command line was given: no test sleeps through backoff. The limiter's
    pauses (an outage's breaker, a 429's shared deadline) are the product's own, unchanged."""
    from batch_prompt.cli import commands as cli
    from batch_prompt.run.retry import RetryPolicy

    options = cli._options
    monkeypatch.setattr(cli, "_options", lambda args: dataclasses.replace(
        options(args), retry=RetryPolicy.no_wait(args.max_attempts)))


DEFAULT_FAKE_CONFIG: dict[str, Any] = dataclasses.asdict(FakeConfig())  # every setting, faults off


def cli_env(fake: FakeServer | None = None, tmp_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = API_KEY
    if fake is not None:
        env["OPENAI_BASE_URL"] = fake.url
    if tmp_path is not None:
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_process(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                module: str = "batch_prompt", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m batch_prompt ARGS` in a subprocess (cwd outside the repo, so the installed package runs).
    For the tests whose claim is about a real process (its file descriptors, its start-up, its exit);
    the others use `run_cli`, which costs no interpreter start-up."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


PROGS = {"batch_prompt": "python -m batch_prompt", "batch_prompt.resume": "python -m batch_prompt.resume"}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            module: str = "batch_prompt", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` run in this process through `cli.main`, seen as a subprocess would see it:
    `env` (when given) is the whole environment, `cwd` the working directory, stdin empty and not a
    terminal, stdout and stderr captured, the exit code as `returncode`. (`timeout` is accepted for the
    same calls as `run_process`; an in-process call is bounded by the test's own timeouts.) Its pid is the
    test's: rows a failed run leaves running belong to a live process, so a test whose next step must
    reclaim them (a dead process's) runs that failing run with `procs`."""
    from batch_prompt.cli import main

    argv = ["resume", *args] if module == "batch_prompt.resume" else list(args)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", line_buffering=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", line_buffering=True)
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(""), stdout, stderr
        try:
            code = main(argv, prog=PROGS[module])
        except SystemExit as exc:  # argparse: --help, a usage error
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        stdout.flush()
        stderr.flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, out.getvalue().decode(),
                                       err.getvalue().decode())


@pytest.fixture
def immutable(tmp_path: Path) -> Any:
    """Make a file read-only even for root (chattr +i); skip where the filesystem cannot."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)
