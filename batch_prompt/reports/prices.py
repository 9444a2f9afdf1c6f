"""Prices: USD per million tokens for each model, live and in batch mode; a guide, not a bill.

List prices come from `genai-prices` (its bundled data: providers, dated snapshots such as
`gpt-4o-mini-2024-07-18`, price changes by date). Its remote update (`UpdatePrices`) is never started,
so pricing needs no network. The library (and pydantic under it) loads on the first price looked up
there, not at import, so `status`, `export` and `create` start at once.

The batch price is genai-prices' own (`processing: batch`) where it has one, otherwise OpenAI's
documented rule for the Batch API: half the live price.

An override file (`--prices FILE`, or a spec's `prices`), JSON or TOML, prices private deployments and
negotiated rates, and wins over the library:

    {"my-model": {"input": 0.5, "output": 1.5, "batch_input": 0.25, "batch_output": 0.75}}

`batch_input` / `batch_output` are optional (default: half of `input` / `output`).

Long-context tiers (a higher rate above some prompt size) are taken at their base rate: spend is summed
by model, so the size of each prompt is not known when a job's cost is worked out.
"""

from __future__ import annotations

import asyncio
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError, read_text

MODES = ("live", "batch")
BATCH_RULE = 0.5  # OpenAI: "Batch API ... 50% cost discount" on inputs and outputs
PRICE_FIELDS = ("input", "output", "batch_input", "batch_output")
PRICE_HINT = "give one with --prices FILE"


@dataclass(frozen=True)
class Rate:
    """A model's prices in USD per million tokens, and where they come from."""

    input: float
    output: float
    batch_input: float
    batch_output: float
    source: str  # "override FILE", or "genai-prices (provider/model id)"
    batch_source: str  # where the batch prices come from

    def cost(self, mode: str, prompt_tokens: int, completion_tokens: int) -> float:
        if mode == "batch":
            return (prompt_tokens * self.batch_input + completion_tokens * self.batch_output) / 1e6
        if mode == "live":
            return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")


class Prices:
    """Model prices: overrides first, then genai-prices' bundled data. Immutable; cheap to build."""

    def __init__(self, overrides: Mapping[str, Rate] | None = None) -> None:
        self.overrides = dict(overrides or {})

    @classmethod
    def load(cls, override_path: str | Path | None = None) -> Prices:
        """Prices with the overrides of `override_path` (JSON or TOML). Raises `ConfigError` for a bad file."""
        return cls(read_overrides(override_path) if override_path is not None else None)

    def overlay(self, override_path: str | Path | None) -> Prices:
        """These prices with another override file's on top (a spec's `prices`, then `--prices`)."""
        if override_path is None:
            return self
        return Prices({**self.overrides, **read_overrides(override_path)})

    def rate(self, model: str) -> Rate | None:
        """The model's prices, or None when neither an override nor genai-prices knows it."""
        found = self.overrides.get(model)
        return found if found is not None else library_rate(model)

    def known(self, model: str) -> bool:
        return self.rate(model) is not None

    def cost(self, model: str, mode: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for the tokens at the model's price in `mode` ("live" or "batch"); None for an unknown model."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
        rate = self.rate(model)
        return None if rate is None else rate.cost(mode, prompt_tokens, completion_tokens)


def job_prices(own: str | Path | None, override: str | Path | None = None, *, lenient: bool = False) -> Prices:
    """The prices that apply to a job (the one rule for estimate, run, budget and status): the list prices,
    its spec's price file (`own`) over them, and `override` (`--prices`) over both. Raises `ConfigError`
    for a bad file; `lenient` (a recorded job's status) passes over a spec's file gone or changed since."""
    base = Prices.load(override)
    if own is None or (lenient and not (isinstance(own, (str, Path)) and Path(own).is_file())):
        return base
    try:
        return Prices.load(own).overlay(override)
    except ConfigError:
        if lenient:  # the spec's file changed since: the list prices and `override` still hold
            return base
        raise


async def look_up_once(event: asyncio.Event, prices: Iterable[Prices | None], models: Iterable[str]) -> None:
    """Once `event` is set (a run's first request is out), look the models' prices up in a thread: the
    first lookup imports genai-prices (0.15-0.2 s), which on the event loop, at the run's first answer,
    held up every answer arriving meanwhile; before the first request, it held that up. The results are
    kept (`library_rate` is cached): the run's own lookups find them."""
    found, names = [each for each in prices if each is not None], list(models)
    await event.wait()
    await asyncio.to_thread(lambda: [each.rate(model) for each in found for model in names])


def unknown_price_message(models: list[str] | tuple[str, ...]) -> str:
    """"no known price for `my-llama`: give one with --prices FILE" (several names: comma-separated)."""
    names = ", ".join(f"`{m}`" for m in models)
    return f"no known price for {names}: {PRICE_HINT}"


# --- genai-prices -------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def library_rate(model: str) -> Rate | None:
    """genai-prices' price of `model` now: the provider its name points to, else OpenAI (the API this
    tool speaks: `davinci-002` has no provider of its own), else OpenRouter for `vendor/model` names."""
    import genai_prices  # lazy: pydantic and the price tables take ~0.15 s to import

    candidates: list[str | None] = [None, "openai"]
    if "/" in model:
        candidates += ["openrouter", "litellm"]  # litellm: genai-prices splits `vendor/model` itself
    now = datetime.now(UTC)
    for provider in candidates:
        try:
            live = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=1, output_tokens=1), model, provider_id=provider,
                genai_request_timestamp=now,
            )
            batch = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=1, output_tokens=1), model, provider_id=provider,
                genai_request_timestamp=now, price_context={"processing": "batch"},
            )
        except (LookupError, ValueError):  # no such provider or model (ValueError: a name it cannot parse)
            continue
        live_in, live_out = _per_mtok(live.model_price, "input_mtok"), _per_mtok(live.model_price, "output_mtok")
        if live_in is None and live_out is None:
            continue  # priced by something else (images, requests): not a token model
        live_in, live_out = live_in or 0.0, live_out or 0.0
        source = f"genai-prices {genai_prices.__version__} ({live.provider.id}/{live.model.id})"
        variants = live.model.price_variants or []
        if any(v.when == {"processing": "batch"} for v in variants):
            batch_in = _per_mtok(batch.model_price, "input_mtok") or 0.0
            batch_out = _per_mtok(batch.model_price, "output_mtok") or 0.0
            batch_source = source
        else:
            batch_in, batch_out = live_in * BATCH_RULE, live_out * BATCH_RULE
            batch_source = "half the live price (OpenAI's Batch API rule)"
        return Rate(live_in, live_out, batch_in, batch_out, source, batch_source)
    return None


def _per_mtok(model_price: Any, key: str) -> float | None:
    value = getattr(model_price, key, None)
    if value is None:
        return None
    base = getattr(value, "base", value)  # TieredPrices: its base tier
    return float(base)


# --- override files -----------------------------------------------------------------------------


def read_overrides(path: str | Path) -> dict[str, Rate]:
    """Parse a price override file. Raises `ConfigError` naming the file and the faulty entry."""
    path = Path(path)
    data = _parse(read_text(path, "price file", ConfigError), path)
    if not isinstance(data, dict):
        raise ConfigError(f"price file {path} must map model names to prices, e.g. {_EXAMPLE}")
    return {str(model): _rate(entry, str(model), path) for model, entry in data.items()}


_EXAMPLE = '{"my-model": {"input": 0.5, "output": 1.5}} (USD per million tokens)'


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(text)
        except ValueError as exc:
            raise ConfigError(f"price file {path} is not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        if path.suffix.lower() == ".json":
            raise ConfigError(f"price file {path} is not valid JSON: {exc}") from None
    try:
        return tomllib.loads(text)
    except ValueError:
        raise ConfigError(f"price file {path} is neither valid JSON nor valid TOML") from None


def _rate(entry: Any, model: str, path: Path) -> Rate:
    if not isinstance(entry, dict):
        raise ConfigError(f"price file {path}: {model!r} must be a table of prices, e.g. {_EXAMPLE}")
    unknown = sorted(set(entry) - set(PRICE_FIELDS))
    if unknown:
        raise ConfigError(f"price file {path}: {model!r} has unknown field {unknown[0]!r} "
                          f"(known: {', '.join(PRICE_FIELDS)})")
    values: dict[str, float] = {}
    for key in PRICE_FIELDS:
        value = entry.get(key)
        if value is None:
            if key in ("input", "output"):
                raise ConfigError(f"price file {path}: {model!r} needs {key!r} (USD per million tokens)")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"price file {path}: {model!r} {key!r} must be a number >= 0, not {value!r}")
        values[key] = float(value)
    rate = Rate(values["input"], values["output"], values["input"] * BATCH_RULE, values["output"] * BATCH_RULE,
                f"override {path}", f"half the live price of override {path}")
    if "batch_input" in values or "batch_output" in values:
        rate = replace(rate, batch_input=values.get("batch_input", rate.batch_input),
                       batch_output=values.get("batch_output", rate.batch_output), batch_source=f"override {path}")
    return rate


def money(cost: float, scale: float | None = None) -> str:
    """USD as every command and display prints it: $12.34; below $0.10 two significant digits ($0.00011), or
    as many decimals as `scale` gets (a second amount shown beside a first)."""
    ref = scale if scale is not None else cost
    decimals = 2 if ref >= 0.1 or ref <= 0 else 1 - math.floor(math.log10(ref))
    return f"${cost:,.{decimals}f}"


def usd(cost: float | None) -> str:
    """", ~$1.23 at list price" (as `money` prints it), or "" when nothing was priced."""
    return "" if cost is None else f", ~{money(cost)} at list price"
