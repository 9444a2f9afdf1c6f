"""The command line: `batch-prompt` / `python -m batch_prompt` (`main`), its arguments, what it prints and the
live display on a terminal."""

from .commands import main as main
