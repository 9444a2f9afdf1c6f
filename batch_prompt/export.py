"""`python -m batch_prompt.export jobs.db -o results.pkl [--format pickle|jsonl]`: see `results.py`.

Only the command line lives here: in Python, `batch_prompt.export` is the function (`bp.export(...)`),
from `results.py`, which the package imports; this module is never imported, only run.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]], prog="python -m batch_prompt.export"))
