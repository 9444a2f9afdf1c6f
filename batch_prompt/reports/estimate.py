"""The preview of a spec before anything is recorded or sent: prompts, requests, tokens, the most it can cost.

`estimate(spec)` expands the spec (streamed, never all in memory) and counts per model: prompts, requests
(packed legacy completions share one), estimated input tokens (`tokens.py`), the most output tokens the
model args allow (`max_tokens` x `n`), the most that costs at the live and at the batch price
(`prices.py`), and how many prompts the response cache already answers (free unless `--no-cache`).
It writes nothing: no database, no cache folder, no call, no key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..spec.expand import expand
from ..spec.spec import Spec, load_spec
from ..spec.tokens import estimate_parts
from ..store.cache import ResponseCache, endpoint_identity
from .html import estimate_html
from .prices import job_prices
from .text import estimate_lines


@dataclass(frozen=True)
class ModelEstimate:
    """One model's share of a spec. Costs are None when the model has no known price."""

    model: str
    prompts: int
    requests: int
    input_tokens: int  # estimated
    max_output_tokens: int  # max_tokens x n per prompt
    max_cost_live: float | None  # USD at list price
    max_cost_batch: float | None  # USD at the Batch API's price
    cached: int  # prompts the response cache already answers


@dataclass(frozen=True)
class Estimate:
    """What a spec asks for, per model and in total. A total cost is None when any model has no price."""

    models: tuple[ModelEstimate, ...]
    unpriced: tuple[str, ...]  # models with no known price
    cache_dir: str | None  # the cache looked in; None when there is none yet
    prompts: int = field(init=False)
    requests: int = field(init=False)
    input_tokens: int = field(init=False)
    max_output_tokens: int = field(init=False)
    max_cost_live: float | None = field(init=False)
    max_cost_batch: float | None = field(init=False)
    cached: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("prompts", "requests", "input_tokens", "max_output_tokens", "cached"):
            object.__setattr__(self, name, sum(getattr(m, name) for m in self.models))
        for name in ("max_cost_live", "max_cost_batch"):
            costs = [getattr(m, name) for m in self.models]
            object.__setattr__(self, name, None if None in costs else sum(costs))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the totals, then `models` (a list of per-model dicts), `unpriced`, `cache_dir`."""
        data = asdict(self)
        totals = {k: data.pop(k) for k in ("prompts", "requests", "input_tokens", "max_output_tokens",
                                           "max_cost_live", "max_cost_batch", "cached")}
        return {**totals, "models": data["models"], "unpriced": data["unpriced"], "cache_dir": data["cache_dir"]}

    def __str__(self) -> str:
        """The readable text (what the command line prints); `repr()` stays the dataclass's."""
        return "\n".join(estimate_lines(self))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text (a notebook's `text/plain`, the REPL): the readable text."""
        p.text(str(self))

    def _repr_html_(self) -> str:
        """Jupyter's HTML: a table of the figures, every name and message escaped."""
        return estimate_html(self)


def estimate(
    spec: str | Path | Spec | Mapping[str, Any],
    *,
    prices: str | Path | None = None,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
) -> Estimate:
    """Estimate a spec (a file path, a `Spec` or its fields as a mapping) without writing or sending anything.

    `prices` is a price override file, on top of the spec's own `prices`. `base_url` (else the spec's,
    else `$OPENAI_BASE_URL`, else OpenAI's) names the endpoint whose cached answers count, in
    `cache_dir` (default: the user's cache folder). Raises `SpecError` for a bad spec, `ConfigError` for
    a bad price file.
    """
    parsed = spec if isinstance(spec, Spec) else (
        Spec.from_dict(spec) if isinstance(spec, Mapping) else load_spec(spec)
    )
    price_table = job_prices(getattr(parsed, "prices", None), prices)
    per_request = parsed.prompts_per_request if parsed.api == "completions" else 1
    sums = {model: [0, 0, 0, 0] for model in parsed.models}  # prompts, input, output, cached
    caches = _caches(parsed, cache_dir, base_url)
    try:
        for record in expand(parsed):
            prompt, completion = estimate_parts(json.loads(record.request_json))
            row = sums[record.model]
            row[0] += 1
            row[1] += prompt
            row[2] += completion
            cache = caches.get(record.model)
            if cache is not None and cache.contains(record.hash):
                row[3] += 1
    finally:
        for cache in set(caches.values()):
            if cache is not None:
                cache.close()
    models = []
    for model, (count, prompt, completion, cached) in sums.items():
        models.append(ModelEstimate(
            model=model, prompts=count, requests=-(-count // per_request), input_tokens=prompt,
            max_output_tokens=completion, max_cost_live=price_table.cost(model, "live", prompt, completion),
            max_cost_batch=price_table.cost(model, "batch", prompt, completion), cached=cached,
        ))
    looked_in = next((str(c.directory) for c in caches.values() if c is not None), None)
    return Estimate(tuple(models), tuple(m.model for m in models if m.max_cost_live is None), looked_in)


def _caches(spec: Spec, cache_dir: str | Path | None, base_url: str | None) -> dict[str, ResponseCache | None]:
    """The existing cache for each model's endpoint (its own in the spec's `endpoints`, else the job's)."""
    endpoints = getattr(spec, "endpoints", None) or {}
    opened: dict[str, ResponseCache | None] = {}
    caches: dict[str, ResponseCache | None] = {}
    for model in spec.models:
        own = endpoints.get(model) if isinstance(endpoints, Mapping) else None
        own_url = own.get("base_url") if isinstance(own, Mapping) else getattr(own, "base_url", None)
        identity = endpoint_identity(own_url or base_url or spec.base_url)
        if identity not in opened:
            opened[identity] = ResponseCache.existing(cache_dir, identity)
        caches[model] = opened[identity]
    return caches
