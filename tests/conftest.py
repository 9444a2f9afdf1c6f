"""Shared fixtures: a real fake server on loopback for the whole session, a clean environment, helpers
to run the command line in a subprocess exactly as a user would."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_prompt.testing import FakeConfig, FakeServer

API_KEY = "sk-test-SECRET-a1b2c3d4e5f6"


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


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            module: str = "batch_prompt", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m batch_prompt ARGS` in a subprocess (cwd outside the repo, so the installed package runs)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


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
