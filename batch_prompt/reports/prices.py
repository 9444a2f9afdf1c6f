"""Prices: USD per million tokens for each model, live and in batch mode; a guide, not a bill.

List prices come from `genai-prices` (its bundled data: providers, dated snapshots such as
`gpt-4o-mini-2024-07-18`, price changes by date). Its remote update (`UpdatePrices`) is never started,
so pricing needs no network. The library (and pydantic under it) loads on the first price looked up
there, not at import, so `status`, `export` and `create` start at once.

The batch price is genai-prices' own (`processing: batch`) where it has one, otherwise OpenAI's
documented rule for the Batch API: half the live price. The flex price (mode "flex": live requests at
OpenAI's `service_tier: "flex"`) is genai-prices' own (`service_tier: flex`) where it has one, otherwise
the batch price (OpenAI: flex tokens "are priced at Batch API rates"). Cached input tokens (`cached`, a
part of the prompt tokens: `usage.prompt_tokens_details.cached_tokens`) are priced at the cached input
rate (genai-prices' `cache_read_mtok`) where there is one; in batch and flex mode at that rate scaled as
the mode's input price is, unless genai-prices gives one of its own.

An override file (`--prices FILE`, or a spec's `prices`), JSON or TOML, prices private deployments and
negotiated rates, and wins over the library:

    {"my-model": {"input": 0.5, "output": 1.5, "batch_input": 0.25, "batch_output": 0.75}}

`batch_input` / `batch_output` are optional (default: half of `input` / `output`); so are `flex_input` /
`flex_output` (default: the batch prices) and `cached_input` (default: `input`, no discount).

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

MODES = ("live", "batch", "flex")
BATCH_RULE = 0.5  # OpenAI: "Batch API ... 50% cost discount" on inputs and outputs
PRICE_FIELDS = ("input", "output", "batch_input", "batch_output", "flex_input", "flex_output", "cached_input")
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
    flex_input: float | None = None  # None: the batch price
    flex_output: float | None = None
    cached_input: float | None = None  # None: cached input at the input price
    batch_cached: float | None = None  # None: `cached_input` scaled as the batch input price is
    flex_cached: float | None = None  # None: `cached_input` scaled as the flex input price is

    def per_mtok(self, mode: str) -> tuple[float, float, float]:
        """(input, cached input, output) USD per million tokens in `mode`."""
        if mode == "live":
            return self.input, self.input if self.cached_input is None else self.cached_input, self.output
        if mode == "batch":
            own_in, own_cached, own_out = self.batch_input, self.batch_cached, self.batch_output
        elif mode == "flex":
            own_in = self.batch_input if self.flex_input is None else self.flex_input
            own_out = self.batch_output if self.flex_output is None else self.flex_output
            own_cached = self.flex_cached
        else:
            raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
        if own_cached is None:  # the live discount for cached input, at this mode's input price
            share = self.cached_input / self.input if self.cached_input is not None and self.input else 1.0
            own_cached = own_in * share
        return own_in, own_cached, own_out

    def cost(self, mode: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD in `mode` ("live", "batch" or "flex"); `cached_tokens` (of `prompt_tokens`) at the cached rate."""
        rate_in, rate_cached, rate_out = self.per_mtok(mode)
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return ((prompt_tokens - cached) * rate_in + cached * rate_cached + completion_tokens * rate_out) / 1e6


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

    def cost(self, model: str, mode: str, prompt_tokens: int, completion_tokens: int,
             cached_tokens: int = 0) -> float | None:
        """USD for the tokens at the model's price in `mode` ("live", "batch" or "flex"), `cached_tokens` (of
        the prompt tokens) at the cached input rate; None for an unknown model."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
        rate = self.rate(model)
        return None if rate is None else rate.cost(mode, prompt_tokens, completion_tokens, cached_tokens)


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
            flex = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=1, output_tokens=1), model, provider_id=provider,
                genai_request_timestamp=now, price_context={"service_tier": "flex"},
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
        rate = Rate(live_in, live_out, batch_in, batch_out, source, batch_source,
                    cached_input=_per_mtok(live.model_price, "cache_read_mtok"))
        # (a variant's own cached rate: the priced variant falls back to the base's, undiscounted, when it has none)
        own = {tuple(sorted(v.when.items())): v.prices for v in variants if isinstance(v.when, dict)}
        if (batch_own := own.get((("processing", "batch"),))) is not None:
            rate = replace(rate, batch_cached=_per_mtok(batch_own, "cache_read_mtok"))
        if (flex_own := own.get((("service_tier", "flex"),))) is not None:
            rate = replace(rate, flex_input=_per_mtok(flex.model_price, "input_mtok") or 0.0,
                           flex_output=_per_mtok(flex.model_price, "output_mtok") or 0.0,
                           flex_cached=_per_mtok(flex_own, "cache_read_mtok"))
        return rate
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
    return replace(rate, flex_input=values.get("flex_input"), flex_output=values.get("flex_output"),
                   cached_input=values.get("cached_input"))


def money(cost: float, scale: float | None = None) -> str:
    """USD as every command and display prints it: $12.34; below $0.10 two significant digits ($0.00011), or
    as many decimals as `scale` gets (a second amount shown beside a first)."""
    ref = scale if scale is not None else cost
    decimals = 2 if ref >= 0.1 or ref <= 0 else 1 - math.floor(math.log10(ref))
    return f"${cost:,.{decimals}f}"


def usd(cost: float | None) -> str:
    """", ~$1.23 at list price" (as `money` prints it), or "" when nothing was priced."""
    return "" if cost is None else f", ~{money(cost)} at list price"
