"""Parsed answers: the spec field `parse`, checked when a spec is read and applied at export.

`{"regex": "PATTERN"}`: the first match of PATTERN in the answer's text (`re.search`); its named groups
are the fields; a pattern with no named group gives one field, `answer` (its one group, or the whole
match when it has none). `{"json": true}`: the answer is a JSON object (alone, or in a ``` fence); its
top-level keys are the fields, or, when the job's `response_format` has a JSON schema, the schema's
properties (typed, and its `required` ones checked).

`parse` is not part of a job's identity: it is stored with the job, a changed one replaces it, and every
export parses again from the stored answers (no API call).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError

ANSWER = "answer"
# a JSON schema's property type -> the flat column's type
SCHEMA_TYPES = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def check_parse(value: Any) -> dict[str, Any] | None:
    """The spec field `parse`, validated (None when absent). Raises `SpecError` naming what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("regex", "json"):
        raise SpecError('spec field \'parse\' must be {"regex": "PATTERN"} or {"json": true}')
    if "json" in value:
        if value["json"] is not True:
            raise SpecError('spec field \'parse\': {"json": true} is the only JSON form')
        return {"json": True}
    pattern = value["regex"]
    if not isinstance(pattern, str) or not pattern:
        raise SpecError("spec field 'parse': 'regex' must be a non-empty pattern")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise SpecError(f"spec field 'parse': regex {pattern!r} is not valid: {exc}") from None
    if not compiled.groupindex and compiled.groups > 1:
        raise SpecError(f"spec field 'parse': regex {pattern!r} has {compiled.groups} groups and no names: "
                        "name the fields, (?P<name>...), or keep one group")
    return {"regex": pattern}


def response_schema(model_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema of a `response_format` (chat) or `text.format` (Responses) in `model_args`."""
    args = model_args or {}
    shape = args.get("response_format")
    if isinstance(shape, dict) and isinstance(shape.get("json_schema"), dict):
        schema = shape["json_schema"].get("schema")
        return schema if isinstance(schema, dict) else None
    text = args.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return dict(fmt["schema"])
    return None


@dataclass(frozen=True)
class Parser:
    """How one job's answers are parsed. `fields`: the fields known before any answer is read (regex
    groups, or a schema's properties) with their types (None: learned from the answers)."""

    regex: re.Pattern[str] | None
    schema: dict[str, Any] | None
    fields: tuple[tuple[str, str | None], ...]

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Parser | None:
        """The parser of a stored spec (`JobRow.spec`), None when it has no `parse`."""
        parse = spec.get("parse")
        if not isinstance(parse, dict):
            return None
        if "regex" in parse:
            regex = re.compile(parse["regex"])
            names = tuple(regex.groupindex) or (ANSWER,)
            return cls(regex, None, tuple((name, None) for name in names))
        schema = response_schema(spec.get("model_args"))
        properties = (schema or {}).get("properties")
        if not isinstance(properties, dict):
            return cls(None, None, ())
        return cls(None, schema, tuple((name, _schema_type(p)) for name, p in properties.items()))

    def parse(self, text: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """(parsed fields, None), or (None, why the answer does not parse)."""
        if text is None:
            return None, "no answer text"
        if self.regex is not None:
            match = self.regex.search(text)
            if match is None:
                return None, f"no match for regex {self.regex.pattern!r}"
            # a group that matched empty text (or did not take part) holds nothing: None
            if self.regex.groupindex:
                return {name: value or None for name, value in match.groupdict().items()}, None
            return {ANSWER: match.group(1 if self.regex.groups else 0) or None}, None
        value, error = _json_object(text)
        if value is None:
            return None, error
        if self.schema is not None:
            error = _schema_error(value, self.schema, dict(self.fields))
            if error is not None:
                return None, error
            return {name: value.get(name) for name, _ in self.fields}, None  # the schema's, in its order
        return value, None


def _json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    candidates = [text.strip()]
    fenced = _FENCE.search(text)
    if fenced:
        candidates.append(fenced.group(1))
    error = ""
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError as exc:
            error = f"not JSON: {exc}"
            continue
        if not isinstance(value, dict):
            return None, f"not a JSON object: {type(value).__name__}"
        return value, None
    return None, error


def _schema_type(prop: Any) -> str:
    kind = prop.get("type") if isinstance(prop, dict) else None
    if isinstance(kind, list):  # ["integer", "null"]: a nullable one
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return SCHEMA_TYPES.get(kind, "json") if isinstance(kind, str) else "json"


def _schema_error(value: dict[str, Any], schema: dict[str, Any], types: dict[str, str | None]) -> str | None:
    required = schema.get("required")
    for name in required if isinstance(required, list) else []:
        if name not in value:
            return f"field {name!r} is required by the schema, missing"
    for name, kind in types.items():
        got = value.get(name)
        if got is not None and kind is not None and not fits(got, kind):
            return f"field {name!r} is not {kind}: {json.dumps(got, ensure_ascii=False)[:60]}"
    return None


def fits(value: Any, kind: str) -> bool:
    """Whether a JSON value is of a column type (`json` holds anything; an int is a float too)."""
    if kind == "json":
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, int | float)
    return isinstance(value, str)


INT64 = range(-(2**63), 2**63)  # what an `int` column holds (Parquet, SQLite, pandas); a larger one is a float


def text_kind(text: str) -> str:
    """The type a regex group's text reads as: `int`, `float` or `str` (an integer beyond 64 bits: `float`)."""
    if _INT.fullmatch(text):
        return "int" if int(text) in INT64 else "float"
    return "float" if _FLOAT.fullmatch(text) else "str"


def typed(value: Any, kind: str) -> Any:
    """A parsed value as a value of its column's type: a regex group's text in an `int`/`float` column as a
    number, an integer in a `float` column as a float."""
    if isinstance(value, str) and kind == "int":
        return int(value)
    if kind == "float" and isinstance(value, str | int) and not isinstance(value, bool):
        return float(value)
    return value
