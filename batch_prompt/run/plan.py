"""The plan of `--mode auto --deadline`: the cheapest lane that still finishes by the deadline. Pure: inputs in,
a `Plan` (or `ConfigError`) out; no clock, store or network (`auto.py` gathers the inputs and keeps to it).

The rule:

- The live rate is the slowest model's: its `rpm` (and `tpm`, at the worst case of a request), else a rate
  learned from an earlier live run of the job, else an assumption (`ASSUMED_SECONDS` a request per slot of
  `--concurrency`) that is never used to call a deadline impossible.
- Finishing live takes `prompts / rate`; taking a batch back costs its cancelling (OpenAI's 10 minutes of
  24 h, `batch_window / CANCEL_SHARE`, but at most `CANCEL_ROOM` of the time to the deadline: a deadline of
  a minute cannot wait 10 for a cancel) and one poll. The take-back time is the deadline less that, less
  `SAFETY` times the live time: from then on the prompts left are finished live (`take_back_at`).
- Batch (half price) whenever the time until the take-back gives a batch a chance (`TRY_ROOM` of the time
  to the deadline, and a few polls): a batch that finishes before the take-back costs half; one that does
  not is taken back and its unanswered prompts finished live, by the deadline, each paid for once. The
  plan says whether batches at this endpoint have been seen to finish in that time (their worst
  completion time), or whether it is a try (none seen, or slower ones). Prompts already in open batches
  stay there until the take-back. Otherwise live, and open batches are taken back at once.
- A deadline past, or one that even live at a known rate cannot meet, is a `ConfigError` naming the rate
  it would need.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError
from .progress import duration

SAFETY = 1.25  # the live time is planned this much longer than the rate says
CANCEL_SHARE = 144.0  # a batch's cancelling may take its window / this (10 minutes of OpenAI's 24 h)
CANCEL_ROOM = 0.1  # ... but at most this share of the time to the deadline (when the plan is made)
TRY_ROOM = 0.2  # a batch is tried when the time to its take-back is at least this share of the time left
TRY_POLLS = 3  # ... and at least this many polls
ASSUMED_SECONDS = 5.0  # with no rate known: a request per slot of --concurrency every this many seconds
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([dhms]))+")


def parse_duration(text: str) -> float:
    """Seconds in a duration: `90m`, `2h`, `1h30m`, `36h`, `2d`, `45s` (units d, h, m, s, in any mix), or a
    bare number of seconds. `ConfigError` for anything else, and for zero."""
    words = str(text).strip().lower().replace(" ", "")
    seconds: float | None = None
    try:
        seconds = float(words)
    except ValueError:
        if _DURATION.fullmatch(words):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+(?:\.\d+)?)([dhms])", words))
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"deadline must be a duration like 90m, 2h, 1h30m, 2d or 45s, not {text!r}")
    return seconds


@dataclass(frozen=True)
class Rate:
    """How fast a model's prompts go live: requests a second, and where that figure comes from."""

    per_second: float
    source: str  # "rpm 600", "learned", "assumed: 100 in flight, 5 s each"
    known: bool = True  # False: an assumption, never grounds to call a deadline impossible


@dataclass(frozen=True)
class Inputs:
    """What the plan is made of (per job)."""

    now: float  # wall clock
    deadline_at: float
    todo: dict[str, int]  # per model: prompts unfinished (pending, or in batches not yet answered)
    in_batches: int  # of them: held by open batches
    rates: dict[str, Rate]  # per model
    batch_window: float  # the provider's completion window, seconds
    batch_worst: float | None  # the longest a batch at this endpoint has taken, seconds; None: none seen
    poll: float  # seconds between two looks at a batch


@dataclass(frozen=True)
class Plan:
    """The lane chosen and when a batch is taken back. JSON-ready through `to_dict` (`status --json`)."""

    mode: str  # "batch" or "live"
    deadline_at: float
    take_back_at: float | None  # batch: from then on, what the batches have not answered goes live
    rate: float  # requests a second assumed live (all models: prompts / the slowest model's time)
    rate_source: str
    batch_seconds: float  # what a batch is expected to take: the worst seen, else the window
    batch_seen: bool  # batch_seconds is the worst seen here (else the provider's window)
    prompts: int
    made_at: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["deadline"] = _iso(self.deadline_at)
        data["take_back"] = None if self.take_back_at is None else _iso(self.take_back_at)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def line(self) -> str:
        """The one line printed before sending."""
        left = f"deadline in {duration(self.deadline_at - self.made_at)}"
        rate = f"{self.rate:,.3g}/s ({self.rate_source})"
        need = self.prompts / self.rate if self.rate else 0.0
        if self.mode == "batch":
            fits = self.take_back_at is not None and self.take_back_at - self.made_at >= self.batch_seconds
            seen = (f"batches here have taken up to {duration(self.batch_seconds)}" if self.batch_seen
                    else f"the Batch API's window is {duration(self.batch_seconds)}")
            at = "" if self.take_back_at is None else _clock(self.take_back_at, self.made_at)
            return (f"plan: batch ({left}, {seen}{'' if fits else ': a try'}); live from {at} at {rate} if "
                    f"unfinished ({self.prompts:,} prompts take about {duration(need)} live)")
        return (f"plan: live ({left}: no room to try a batch first); "
                f"{self.prompts:,} prompts at {rate} take about {duration(need)}")


def live_seconds(todo: dict[str, int], rates: dict[str, Rate]) -> float:
    """How long the prompts take live, the models side by side: the slowest model's time."""
    return max((count / rates[model].per_second for model, count in todo.items() if count), default=0.0)


def take_back_at(inputs: Inputs, todo: dict[str, int] | None = None) -> float:
    """When what is left in batches (`todo`, per model; default the inputs') must start going live."""
    todo = inputs.todo if todo is None else todo
    lead = SAFETY * live_seconds(todo, inputs.rates) + cancel_seconds(inputs) + inputs.poll
    return inputs.deadline_at - lead


def cancel_seconds(inputs: Inputs) -> float:
    """The time allowed for a batch to be cancelled: the provider's (scaled with its window), at most
    `CANCEL_ROOM` of the time the plan had to the deadline."""
    return min(inputs.batch_window / CANCEL_SHARE, CANCEL_ROOM * max(0.0, inputs.deadline_at - inputs.now))


def make_plan(inputs: Inputs) -> Plan:
    """The plan (see the module docstring); `ConfigError` when the deadline has passed or cannot be met."""
    room = inputs.deadline_at - inputs.now
    if room <= 0:
        raise ConfigError(f"the deadline has passed ({_iso(inputs.deadline_at)}): give a new --deadline")
    prompts = sum(inputs.todo.values())
    live = live_seconds(inputs.todo, inputs.rates)
    rate = prompts / live if live else max((r.per_second for r in inputs.rates.values()), default=0.0)
    sources = sorted({r.source for m, r in inputs.rates.items() if inputs.todo.get(m)}) or ["none needed"]
    known = all(inputs.rates[m].known for m, count in inputs.todo.items() if count)
    if known and live > room:
        raise ConfigError(f"deadline in {duration(room)}: {prompts:,} prompts need {prompts / room:,.3g} requests/s "
                          f"live; known rate: {rate:,.3g}/s ({', '.join(sources)})")
    seen = inputs.batch_worst is not None
    expect = min(inputs.batch_worst, inputs.batch_window) if inputs.batch_worst is not None else inputs.batch_window
    back = take_back_at(inputs)
    chance = back - inputs.now >= max(TRY_ROOM * room, TRY_POLLS * inputs.poll)
    batch = prompts > 0 and (chance or (inputs.in_batches > 0 and back > inputs.now))
    return Plan(mode="batch" if batch else "live", deadline_at=inputs.deadline_at,
                take_back_at=back if batch else None, rate=rate, rate_source=", ".join(sources),
                batch_seconds=expect, batch_seen=seen, prompts=prompts, made_at=inputs.now)


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def _clock(at: float, now: float) -> str:
    """A time of day (`14:05`), with its date when it is not today's."""
    when, today = datetime.datetime.fromtimestamp(at), datetime.datetime.fromtimestamp(now)
    if when.date() == today.date():
        return when.strftime("%H:%M" if at - now >= 120 else "%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")
