"""Which kill trials a test run makes. Each trial is numbered and seeded by its own number, so any one of
them replays alone. A test run makes a few, picked by a seed that rotates every day (or
`BATCH_PROMPT_TRIAL_SEED`); `BATCH_PROMPT_ALL_TRIALS=1` (what `scripts/kill_trials` sets) makes every one.
The seed and the picked numbers are in the report's header and in every failing trial's message.
"""

from __future__ import annotations

import datetime
import os
import random

ALL_TRIALS = os.environ.get("BATCH_PROMPT_ALL_TRIALS", "") not in ("", "0")


def trial_seed() -> int:
    """`BATCH_PROMPT_TRIAL_SEED`, else today's date as a number (UTC), e.g. 20261204."""
    given = os.environ.get("BATCH_PROMPT_TRIAL_SEED", "").strip()
    if given:
        return int(given)
    return int(datetime.datetime.now(datetime.UTC).strftime("%Y%m%d"))


SEED = trial_seed()


def pick(name: str, total: int, count: int) -> list[int]:
    """The numbers (0 to `total` - 1) of the trials named `name` to make in this run: all of them under
    `BATCH_PROMPT_ALL_TRIALS`, else `count` of them chosen by the seed (a different draw per name)."""
    if ALL_TRIALS:
        return list(range(total))
    return sorted(random.Random(f"{SEED}:{name}").sample(range(total), count))


def rng(name: str, number: int) -> random.Random:
    """Trial `number`'s own random numbers: the same whichever other trials run, whatever the seed."""
    return random.Random(f"{name}:{number}")


def replay(name: str, number: int) -> str:
    """How to make one trial again, for a failure's message."""
    return (f"{name} trial {number} (this run's seed {SEED}: BATCH_PROMPT_TRIAL_SEED={SEED} picks the same trials; "
            "scripts/kill_trials runs them all)")


def header() -> str:
    mode = "all trials (BATCH_PROMPT_ALL_TRIALS)" if ALL_TRIALS else f"seed {SEED} (BATCH_PROMPT_TRIAL_SEED)"
    return f"kill trials: {mode}; scripts/kill_trials runs every one"
