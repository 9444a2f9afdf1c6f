"""The command line under a pseudo-terminal, as a person at a terminal meets it, and the screen it leaves.

`run_in_pty` starts `python -m batch_prompt ARGS` with its stdout and stderr (and stdin, unless told
otherwise) on the slave side of a new pseudo-terminal of a given size, reads everything it draws, types
the answers it is given when their question appears, and kills it if it outlives its timeout. `screen`
feeds what was drawn to pyte, a terminal emulator, and returns the rows a person would see.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyte


@dataclass
class PtyRun:
    output: bytes  # every byte drawn on the terminal (the echo of typed answers too)
    returncode: int

    @property
    def text(self) -> str:
        """The output without escape sequences (carriage returns and newlines kept)."""
        return strip_ansi(self.output.decode(errors="replace"))


def set_size(fd: int, columns: int, lines: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))


def run_in_pty(args: Sequence[str], *, env: dict[str, str], cwd: Path, columns: int = 80, lines: int = 24,
               answers: Sequence[tuple[str, str]] = (), stdin_tty: bool = True, module: str = "batch_prompt",
               timeout: float = 90) -> PtyRun:
    """Run `python -m MODULE ARGS` on a new pseudo-terminal of `columns` x `lines`. `answers`: (question,
    reply) pairs: `reply` is typed once `question` has appeared in the output, in order. With `stdin_tty`
    False, stdin is /dev/null (no terminal to ask on) while stdout and stderr stay on the terminal."""
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    env.setdefault("TERM", "xterm-256color")
    master, slave = pty.openpty()
    set_size(slave, columns, lines)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdin=slave if stdin_tty else subprocess.DEVNULL, stdout=slave,
            stderr=slave, env=env, cwd=cwd, start_new_session=True,
        )
    finally:
        os.close(slave)
    output = bytearray()
    waiting = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(args)} still running after {timeout:.0f} s; it drew:\n"
                                     + strip_ansi(output.decode(errors="replace")))
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal's other side has closed it
                chunk = b""
            if not chunk:
                break
            output += chunk
            if waiting and waiting[0][0].encode() in output:
                os.write(master, waiting.pop(0)[1].encode())
        return PtyRun(bytes(output), proc.wait(timeout=30))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)


def screen(output: bytes, columns: int, lines: int) -> list[str]:
    """The rows of a `columns` x `lines` terminal after `output` was drawn on it (trailing spaces removed)."""
    emulated = pyte.Screen(columns, lines)
    pyte.ByteStream(emulated).feed(output)
    return [row.rstrip() for row in emulated.display]


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)
