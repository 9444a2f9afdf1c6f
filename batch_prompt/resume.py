"""`python -m batch_prompt.resume jobs.db [run options]`: finish every unfinished prompt in the file.

This module is a command, never imported: `import batch_prompt.resume` would replace the function
`batch_prompt.resume` with this module, so it refuses (`bp.resume(...)` is the Python way).
"""

import sys

if __name__ != "__main__":
    raise ImportError(
        "batch_prompt.resume is the command `python -m batch_prompt.resume`; in Python call batch_prompt.resume()"
    )

from .cli import main

sys.exit(main(["resume", *sys.argv[1:]], prog="python -m batch_prompt.resume", last=True))
