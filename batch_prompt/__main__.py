"""`python -m batch_prompt COMMAND ...`: see `batch_prompt.cli`."""

import sys

from .cli import main

sys.exit(main(prog="python -m batch_prompt"))
