"""`python -m batch_prompt.testing [--port N] [fault options]`: serve the fake API until SIGINT/SIGTERM."""

from .server import main

main()
