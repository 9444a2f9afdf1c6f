"""The job spec: what a user asks for, validated before anything is written.

A spec comes from `bp.create(...)` keyword arguments or from a JSON/TOML file with the same fields.
`Spec.from_dict` is the single validation point; every problem raises `SpecError` with a one-line
message naming the field (and the template or keyword dict) at fault. Templates are checked by
`templates.py`, model arguments by `model_args.py` (against the openai SDK's request types), base URLs
by `endpoints.py`.

A spec's fields are of two kinds: its identity (what the job asks: `Spec.identity`, hashed, and a job
of the same name must match it) and its run fields (where and how fast to send it, its budget, how its
answers are parsed: `Spec.run_fields`, stored with the job and updated when the same spec is created
again with others).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingFieldError, SpecError, read_text, shown
from .endpoints import ENV_NAME, looks_like_key, normalize_base_url
from .model_args import check_model_args
from .parse import check_parse
from .templates import Keywords, Template, template_fields

APIS = ("chat", "completions", "responses")
FIELDS = (
    "name", "api", "model", "templates", "keywords", "model_args", "repeats", "dedupe", "prompts_per_request",
    "base_url", "endpoints", "rpm", "tpm", "max_cost", "prices", "parse",
)
RUN_FIELDS = ("base_url", "endpoints", "rpm", "tpm", "max_cost", "prices", "parse")
ENDPOINT_KEYS = ("base_url", "api_key_env")
DEFAULT_PROMPTS_PER_REQUEST = 20
MAX_PROMPTS_PER_REQUEST = 2048  # OpenAI's limit for a list of prompts in one completions request
MAX_REPEATS = 100_000
MAX_PROMPTS = 100_000_000  # templates x keyword dicts x models x repeats, one database row each

Rate = float | dict[str, float] | None  # a limit for every model, or one per model


def canonical_json(obj: Any) -> str:
    """The one JSON form used for hashing and storage: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def rate_for(rate: Rate, model: str) -> float | None:
    """A stored `rpm`/`tpm` (a number, a mapping by model, or None) for one model."""
    return rate.get(model) if isinstance(rate, dict) else rate


@dataclass(frozen=True)
class Spec:
    """A validated job spec. Build it with `Spec.from_dict` or `load_spec`."""

    api: str
    models: tuple[str, ...]
    templates: tuple[Template, ...]
    keywords: Any  # list of dicts, or a dict of lists (its full grid); see `keyword_dicts`
    model_args: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    prompts_per_request: int = DEFAULT_PROMPTS_PER_REQUEST
    name: str | None = None
    dedupe: bool = False  # identical rows share one hash (one answer) instead of each being its own draw
    # run fields: not part of the job's identity
    base_url: str | None = None  # normalized
    endpoints: dict[str, dict[str, str]] | None = None  # model -> {"base_url" (normalized), "api_key_env"}
    rpm: Rate = None
    tpm: Rate = None
    max_cost: float | None = None  # USD
    prices: str | None = None  # a price override file, an absolute path
    parse: dict[str, Any] | None = None  # how answers are parsed at export (`parse.py`)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """Validate a spec given as a mapping of its fields. Raises `SpecError`."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec must be a JSON object / TOML table, not {type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise SpecError(f"unknown spec field {unknown[0]!r} (known fields: {', '.join(FIELDS)})")
        for required in ("model", "templates"):
            if data.get(required) is None:
                raise SpecError(f"spec field {required!r} is required")
        api = data.get("api", "chat")
        if api not in APIS:
            raise SpecError(f"unknown api {shown(api)}: use 'chat', 'completions' or 'responses'")
        if api != "completions" and data.get("prompts_per_request") is not None:
            raise SpecError(f"spec field 'prompts_per_request' is for api 'completions' only: a {api} request "
                            "holds one prompt")
        models = _models(data["model"])
        spec = cls(
            api=api,
            models=models,
            templates=_templates(data["templates"], api),
            keywords=_keywords(data.get("keywords", [{}])),
            model_args=_model_args(data.get("model_args", {}), api),
            repeats=_positive_int(data.get("repeats", 1), "repeats", MAX_REPEATS),
            prompts_per_request=_positive_int(
                data.get("prompts_per_request", DEFAULT_PROMPTS_PER_REQUEST), "prompts_per_request",
                MAX_PROMPTS_PER_REQUEST,
            ),
            name=_optional_str(data.get("name"), "name"),
            dedupe=_bool(data.get("dedupe", False), "dedupe"),
            base_url=_base_url(data.get("base_url"), "spec field 'base_url'"),
            endpoints=_endpoints(data.get("endpoints"), models),
            rpm=_rate(data.get("rpm"), "rpm", models),
            tpm=_rate(data.get("tpm"), "tpm", models),
            max_cost=_optional_positive(data.get("max_cost"), "spec field 'max_cost'"),
            prices=_path(data.get("prices"), "prices"),
            parse=check_parse(data.get("parse")),
        )
        count = spec.count_prompts()
        if count > MAX_PROMPTS:
            raise SpecError(
                f"the spec makes {shown(count)} prompts (templates x keyword dicts x models x repeats): "
                f"at most {MAX_PROMPTS:,} are allowed in one job"
            )
        spec.check_text()
        spec.check_fields()
        return spec

    def identity(self) -> dict[str, Any]:
        """The fields that define what the job asks (not its name or where it is sent). `dedupe` is
        there only when set, so a job recorded before it existed keeps its identity."""
        identity = {
            "api": self.api,
            "models": list(self.models),
            "templates": list(self.templates),
            "keywords": self.keywords,
            "model_args": self.model_args,
            "repeats": self.repeats,
            "prompts_per_request": self.prompts_per_request if self.api == "completions" else None,
        }
        if self.dedupe:
            identity["dedupe"] = True
        return identity

    def run_fields(self) -> dict[str, Any]:
        """Where, how fast and for how much to run, and how to parse the answers: stored with the job,
        not part of its identity."""
        return {name: getattr(self, name) for name in RUN_FIELDS}

    def keyword_dicts(self) -> Iterator[Keywords]:
        """The keyword dicts in order: the list as given, or the grid of a dict of lists (last key fastest)."""
        if isinstance(self.keywords, list):
            yield from self.keywords
            return
        keys = list(self.keywords)
        for values in itertools.product(*(self.keywords[k] for k in keys)):
            yield dict(zip(keys, values, strict=True))

    def count_keyword_dicts(self) -> int:
        if isinstance(self.keywords, list):
            return len(self.keywords)
        count = 1
        for values in self.keywords.values():
            count *= len(values)
        return count

    def count_prompts(self) -> int:
        return len(self.templates) * self.count_keyword_dicts() * len(self.models) * self.repeats

    def check_text(self) -> None:
        """Every string is valid Unicode; raises `SpecError` naming the field.

        JSON can spell a lone surrogate (`"\\ud800"`), which no UTF-8 file, hash or database can hold.
        """
        fields = {
            "name": self.name, "model": self.models, "templates": self.templates, "keywords": self.keywords,
            "model_args": self.model_args, "endpoints": self.endpoints, "prices": self.prices,
            "parse": self.parse,
        }
        for name, value in fields.items():
            try:
                canonical_json(value).encode()
            except UnicodeEncodeError as exc:
                bad = exc.object[exc.start : exc.end]
                raise SpecError(
                    f"spec field {name!r} holds text that is not valid Unicode: {bad!r} (a lone surrogate)"
                ) from None

    def check_fields(self) -> None:
        """Every template's fields exist in every keyword dict; raises `MissingFieldError` naming both."""
        needed = [(template, template_fields(template)) for template in self.templates]
        if isinstance(self.keywords, dict):  # a grid: every dict has the same keys
            dicts: Iterator[Keywords] = iter([dict.fromkeys(self.keywords)])
        else:
            dicts = iter(self.keywords)
        for k_index, kw in enumerate(dicts):
            keys = kw.keys()
            for template, fields in needed:
                if not fields <= keys:
                    missing = sorted(fields - keys)[0]
                    raise MissingFieldError(
                        f"template {shown(template)} needs field {missing!r}, "
                        f"missing from keyword dict {k_index} {shown(kw)}",
                        template=template, field=missing,
                    )


def load_spec(path: str | Path, **overrides: Any) -> Spec:
    """Read a JSON or TOML spec file (by suffix; otherwise JSON, then TOML). Raises `SpecError`.

    A relative `prices` path in the file is relative to the file's folder.
    """
    path = Path(path)
    data = parse_spec_text(read_text(path, "spec file", SpecError), path.suffix.lower(), str(path))
    if isinstance(data, dict):
        prices = data.get("prices")
        if isinstance(prices, str) and prices.strip():
            data["prices"] = os.path.join(path.parent, os.path.expanduser(prices))
        data.update({k: v for k, v in overrides.items() if v is not None})
    return Spec.from_dict(data)


def parse_spec_text(text: str, suffix: str, where: str) -> Any:
    """A spec file's data. A key given twice in one JSON object is an error (TOML refuses it itself)."""
    # Besides syntax errors (both are ValueErrors), both parsers raise ValueError for an integer past
    # Python's 4300-digit limit and RecursionError for nesting too deep.
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except (ValueError, RecursionError) as exc:
            raise SpecError(f"{where} is not valid TOML: {_reason(exc)}") from None

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(pairs)
        if len(data) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise SpecError(
                        f"{where}: key {key!r} appears twice in one JSON object (the last would silently win)"
                    )
                seen.add(key)
        return data

    try:
        return json.loads(text, object_pairs_hook=unique)
    except (ValueError, RecursionError) as exc:
        if suffix == ".json" or not isinstance(exc, json.JSONDecodeError):
            raise SpecError(f"{where} is not valid JSON: {_reason(exc)}") from None
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError):
        raise SpecError(f"{where} is neither valid JSON nor valid TOML") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split("; use sys.set_int_max_str_digits()", 1)[0]  # advice for Python code, not a user


def _models(value: Any) -> tuple[str, ...]:
    models = [value] if isinstance(value, str) else value
    if not isinstance(models, list) or not models:
        raise SpecError("spec field 'model' must be a model name or a non-empty list of names")
    for i, model in enumerate(models):
        if not isinstance(model, str) or not model.strip():
            raise SpecError(f"spec field 'model' has an invalid model name: {model!r}")
        if model in models[:i]:
            raise SpecError(f"spec field 'model' lists {model!r} twice: for more samples use repeats (or n)")
    return tuple(models)


def _templates(value: Any, api: str) -> tuple[Template, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SpecError("spec field 'templates' must be a list")
    if not value:
        raise SpecError("spec field 'templates' is empty: give at least one template")
    for i, template in enumerate(value):
        if isinstance(template, str):
            continue
        if api == "completions":
            raise SpecError(f"templates[{i}] must be a string for api 'completions'")
        if not isinstance(template, list) or not template:
            raise SpecError(f"templates[{i}] must be a string or a non-empty list of {{role, content}} messages")
        for j, message in enumerate(template):
            if (
                not isinstance(message, dict)
                or set(message) != {"role", "content"}
                or not all(isinstance(v, str) for v in message.values())
            ):
                raise SpecError(f"templates[{i}][{j}] must be a message {{\"role\": str, \"content\": str}}")
    return tuple(value)


def _keywords(value: Any) -> Any:
    if isinstance(value, dict):
        for key, values in value.items():
            if not isinstance(values, list):
                raise SpecError(f"keywords[{key!r}] must be a list (a dict of lists means their full grid)")
            if not values:
                raise SpecError(f"keywords[{key!r}] is empty: a grid needs at least one value per key")
            _check_json(values, f"keywords[{key!r}]")
        return value
    if not isinstance(value, list):
        raise SpecError("spec field 'keywords' must be a list of dicts or a dict of lists")
    if not value:
        raise SpecError("spec field 'keywords' is empty: give at least one keyword dict (or omit it)")
    for i, kw in enumerate(value):
        if not isinstance(kw, dict):
            raise SpecError(f"keywords[{i}] must be a dict, not {type(kw).__name__}")
        _check_json(kw, f"keywords[{i}]")
    return value


def _model_args(value: Any, api: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError("spec field 'model_args' must be a dict")
    _check_json(value, "model_args")
    return dict(check_model_args(api, value))


def _check_json(value: Any, where: str) -> None:
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where} holds a value that is not plain JSON data: {exc}") from None


def _positive_int(value: Any, name: str, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"spec field {name!r} must be a positive integer, not {shown(value)}")
    if value > most:
        raise SpecError(f"spec field {name!r} is {shown(value)}: at most {most:,} is allowed")
    return value


def _optional_positive(value: Any, where: str) -> float | None:
    """A finite positive number (JSON's `1e999` and TOML's `inf` parse to infinity), as a float."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        with contextlib.suppress(OverflowError):  # an int too large for a float
            if math.isfinite(float(value)):
                return float(value)
    raise SpecError(f"{where} must be a positive number (finite), not {shown(value)}")


def _rate(value: Any, name: str, models: tuple[str, ...]) -> Rate:
    """`rpm`/`tpm`: a number for every model, or a mapping model -> number for some."""
    if not isinstance(value, dict):
        return _optional_positive(value, f"spec field {name!r}")
    if not value:
        raise SpecError(f"spec field {name!r} is an empty mapping: give a number, or a number per model")
    rates: dict[str, float] = {}
    for model, rate in value.items():
        _known_model(model, f"spec field {name!r}", models)
        checked = _optional_positive(rate, f"{name}[{model!r}]")
        if checked is None:
            raise SpecError(f"{name}[{model!r}] must be a positive number (finite), not null")
        rates[model] = checked
    return rates


def _endpoints(value: Any, models: tuple[str, ...]) -> dict[str, dict[str, str]] | None:
    """model -> {"base_url", "api_key_env"}: the URL normalized, the key named, never given."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise SpecError('spec field \'endpoints\' must map model names to {"base_url": ..., "api_key_env": "VAR"}')
    endpoints: dict[str, dict[str, str]] = {}
    for model, entry in value.items():
        where = f"endpoints[{model!r}]"
        _known_model(model, "spec field 'endpoints'", models)
        if not isinstance(entry, dict):
            raise SpecError(f'{where} must be {{"base_url": ..., "api_key_env": "VAR"}}, not {shown(entry)}')
        for key, item in entry.items():  # before anything else: a pasted key is never echoed back
            if isinstance(item, str) and looks_like_key(item):
                raise SpecError(
                    f"{where}.{key} looks like an API key: a key is never written in a spec; put it in an "
                    "environment variable and give that variable's name as api_key_env"
                )
        unknown = sorted(set(entry) - set(ENDPOINT_KEYS))
        if unknown:
            raise SpecError(f"{where} has unknown key {unknown[0]!r} (known keys: {', '.join(ENDPOINT_KEYS)})")
        for key in ENDPOINT_KEYS:
            if key not in entry:
                raise SpecError(f"{where} needs {key!r} (the server's URL, and the name of the variable with its key)")
        variable = entry["api_key_env"]
        if not isinstance(variable, str) or not ENV_NAME.fullmatch(variable):
            raise SpecError(f"{where}.api_key_env must name an environment variable (letters, digits and _, "
                            f"not starting with a digit), not {shown(variable)}")
        base_url = normalize_base_url(entry["base_url"], f"{where}.base_url", SpecError)
        endpoints[model] = {"base_url": base_url, "api_key_env": variable}
    return endpoints


def _known_model(model: str, where: str, models: tuple[str, ...]) -> None:
    if model not in models:
        raise SpecError(f"{where} names model {model!r}, which is not one of the spec's models "
                        f"({', '.join(map(repr, models))})")


def _base_url(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and looks_like_key(value):
        raise SpecError(f"{where} looks like an API key, not a URL: a key is never written in a spec")
    return normalize_base_url(value, where, SpecError)


def _path(value: Any, name: str) -> str | None:
    """A file path, absolute (a relative one is relative to the working folder, or a spec file's)."""
    path = _optional_str(value, name)
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"spec field {name!r} must be true or false, not {shown(value)}")
    return value


def _optional_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"spec field {name!r} must be a non-empty string")
    return value
