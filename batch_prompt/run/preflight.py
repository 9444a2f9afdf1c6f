"""Preflight: everything a run depends on that bad input can break, checked before anything is written.

A run's options and its jobs' run fields are checked together, with no database and no call: the options
themselves, per-model rates that name a model of the run, every model's endpoint and key (a spec's
`api_key_env` naming a variable that is not set is refused here, before a `run` records the job), every
price file, and a price for every model of a job with a budget. `run SPEC` checks before it records the
job, and a run checks before it records its choices (mode, fresh samples), so bad input leaves the job
database exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..options import RunOptions
from ..reports.prices import PRICE_HINT, Prices, job_prices
from ..spec.endpoints import Endpoint, endpoint_for


@dataclass(frozen=True)
class Checked:
    """What the preflight of one job found: where each model goes, its prices, its budget."""

    endpoints: dict[str, Endpoint]  # model -> endpoint (and key)
    prices: Prices  # the list prices, the spec's price file, then --prices on top
    own_prices: bool  # the spec names a price file of its own
    limit: float | None  # the budget in USD, if any


def check_run(specs: Sequence[Mapping[str, Any]], opts: RunOptions) -> tuple[Prices, list[Checked]]:
    """Check a run of jobs given by their specs (`JobRow.spec`, or `Spec.identity() | Spec.run_fields()`).

    Returns the run's prices (`--prices` over the list prices) and, per spec in order, what it found.
    Raises `ConfigError` (bad options, an unknown model in a rate, no key, a bad price file, a budget
    over a model with no price) before anything is written anywhere.
    """
    opts.validate()
    opts.check_rates({model for spec in specs for model in spec["models"]})
    prices = Prices.load(opts.prices)
    found = []
    for spec in specs:
        endpoints = {model: endpoint_for(spec, model, base_url=opts.base_url, api_key=opts.api_key)
                     for model in spec["models"]}
        own = job_prices(spec.get("prices"), opts.prices) if spec.get("prices") else prices
        limit = opts.max_cost or spec.get("max_cost")
        if limit:
            unpriced = [model for model in spec["models"] if not own.known(model)]
            if unpriced:
                raise ConfigError(
                    f"a budget (--max-cost) needs a price for every model, and {unpriced[0]!r} has no known "
                    f"price: {PRICE_HINT}")
        found.append(Checked(endpoints, own, bool(spec.get("prices")), float(limit) if limit else None))
    return prices, found
