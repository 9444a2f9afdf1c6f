"""The job spec: what a user asks for, validated before anything is written.

A spec comes from `bp.create(...)` keyword arguments or from a JSON/TOML file with the same fields.
`Spec.from_dict` is the single validation point; every problem raises `SpecError` with a one-line
message naming the field (and the template or keyword dict) at fault. Model arguments are checked by
`model_args.py` (against the openai SDK's request types).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import string
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MissingFieldError, SpecError
from .model_args import check_model_args

APIS = ("chat", "completions")
FIELDS = (
    "name", "api", "model", "templates", "keywords", "model_args", "repeats", "dedupe", "prompts_per_request",
    "base_url", "rpm", "tpm",
)
DEFAULT_PROMPTS_PER_REQUEST = 20
MAX_PROMPTS_PER_REQUEST = 2048  # OpenAI's limit for a list of prompts in one completions request
MAX_REPEATS = 100_000
MAX_PROMPTS = 100_000_000  # templates x keyword dicts x models x repeats, one database row each

Template = str | list[dict[str, str]]
Keywords = dict[str, Any]


def canonical_json(obj: Any) -> str:
    """The one JSON form used for hashing and storage: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
    base_url: str | None = None
    rpm: float | None = None  # rate limits to run at (run options, not part of the job's identity)
    tpm: float | None = None

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
            raise SpecError(f"unknown api {api!r}: use 'chat' or 'completions'")
        spec = cls(
            api=api,
            models=_models(data["model"]),
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
            base_url=_optional_str(data.get("base_url"), "base_url"),
            rpm=_optional_positive(data.get("rpm"), "rpm"),
            tpm=_optional_positive(data.get("tpm"), "tpm"),
        )
        count = spec.count_prompts()
        if count > MAX_PROMPTS:
            raise SpecError(
                f"the spec makes {_short(count)} prompts (templates x keyword dicts x models x repeats): "
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
            "model_args": self.model_args, "base_url": self.base_url,
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
                        f"template {_short(template)} needs field {missing!r}, "
                        f"missing from keyword dict {k_index} {_short(kw)}",
                        template=template, field=missing,
                    )


def load_spec(path: str | Path, **overrides: Any) -> Spec:
    """Read a JSON or TOML spec file (by suffix; otherwise JSON, then TOML). Raises `SpecError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {path}: {exc}") from None
    data = parse_spec_text(text, path.suffix.lower(), str(path))
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return Spec.from_dict(data)


def parse_spec_text(text: str, suffix: str, where: str) -> Any:
    # Besides syntax errors (both are ValueErrors), both parsers raise ValueError for an integer past
    # Python's 4300-digit limit and RecursionError for nesting too deep.
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except (ValueError, RecursionError) as exc:
            raise SpecError(f"{where} is not valid TOML: {_reason(exc)}") from None
    try:
        return json.loads(text)
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


def template_fields(template: Template) -> frozenset[str]:
    """The `str.format` field names a template uses (the part before any `.` or `[`)."""
    texts = [template] if isinstance(template, str) else [m["content"] for m in template]
    names: set[str] = set()
    for text in texts:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise SpecError(f"template {_short(template)} is not a valid format string: {exc}") from None
        for _, field_name, _, _ in parsed:
            if field_name is None:
                continue
            base = field_name.split(".", 1)[0].split("[", 1)[0]
            if base == "" or base.isdigit():
                raise SpecError(f"template {_short(template)} uses a positional field; name it, e.g. {{food}}")
            names.add(base)
    return frozenset(names)


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr) if not isinstance(value, str) else repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str(), or a value that contains itself
        text = f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise SpecError(f"spec field {name!r} must be a positive integer, not {_short(value)}")
    if value > most:
        raise SpecError(f"spec field {name!r} is {_short(value)}: at most {most:,} is allowed")
    return value


def _optional_positive(value: Any, name: str) -> float | None:
    """A finite positive number (JSON's `1e999` and TOML's `inf` parse to infinity), as a float."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        with contextlib.suppress(OverflowError):  # an int too large for a float
            if math.isfinite(float(value)):
                return float(value)
    raise SpecError(f"spec field {name!r} must be a positive number (finite), not {_short(value)}")


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"spec field {name!r} must be true or false, not {_short(value)}")
    return value


def _optional_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"spec field {name!r} must be a non-empty string")
    return value
