"""The README's walkthrough, run exactly as written: its `bash walkthrough` blocks, one after the other in
one shell in an empty folder (the fake server started as the README starts it), each `text walkthrough-output`
block checked against the output of the commands just before it. The README and the tool cannot disagree."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\S*)(?: +(\S+))?\n(.*?)^```\n", re.S | re.M)
MARK = "@@walkthrough block {}@@"
PORT = 8765  # the README's


def blocks() -> list[tuple[str, list[str]]]:
    """The walkthrough's command blocks, each with the output lines shown after it (patterns: `...` is anything)."""
    found: list[tuple[str, list[str]]] = []
    for match in FENCE.finditer(README.read_text()):
        kind, body = match.group(2), match.group(3)
        if kind == "walkthrough":
            found.append((body, []))
        elif kind == "walkthrough-output":
            assert found, "an output block before any walkthrough block"
            found[-1][1].extend(body.splitlines())
    return found


def pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.split("...")) + r"\Z")


def port_free() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", PORT))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    steps = blocks()
    assert len(steps) >= 8 and sum(len(expected) for _, expected in steps) >= 10
    if not port_free():
        pytest.skip(f"port {PORT}, the README's fake server's, is in use on this machine")
    script = "".join(f"echo '{MARK.format(i)}'\n{body}" for i, (body, _) in enumerate(steps))
    (tmp_path / "walkthrough.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv, as if activated
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(["bash", str(tmp_path / "walkthrough.sh")], cwd=work, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what it left running (its fake server, had `kill %1` failed)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, output
    parts = output.split("\n")
    for i, (body, expected) in enumerate(steps):
        start = parts.index(MARK.format(i)) + 1
        end = parts.index(MARK.format(i + 1)) if i + 1 < len(steps) else len(parts)
        got = parts[start:end]
        at = 0
        for line in expected:  # in order; other lines may come between
            if line == "...":
                continue
            wanted = pattern(line)
            while at < len(got) and not wanted.match(got[at]):
                at += 1
            assert at < len(got), f"README block {i}:\n{body}\nshows {line!r}, the tool said:\n" + "\n".join(got)
            at += 1
    assert (work / "results.csv").is_file() and (work / "jobs.db").is_file()
