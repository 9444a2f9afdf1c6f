"""`python -m batch_prompt.resume jobs.db [run options]`: finish every unfinished prompt in the file."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["resume", *sys.argv[1:]], prog="python -m batch_prompt.resume"))
