"""The results as a flat table: one row per choice, plain columns, for CSV, Parquet, SQLite and pandas.

Columns, in order:

- `job`, `prompt_hash`, `model`, `template_index`, `keywords_index`, `model_index`, `sample_index`,
  `choice_index`;
- one column per keyword field, named after it (`kw_<field>` when that name is one of these columns, or a
  `parsed_<field>` one);
- `template` and `prompt` (chat: the messages as text, one `role: content` line each), `last_user_message`
  (chat only), `text` (the choice's), `finish_reason`, `prompt_tokens`, `completion_tokens`, `total_tokens`
  (the response's usage, repeated on each of its choices), `reasoning_tokens` (of the completion tokens, from
  `usage.completion_tokens_details`; empty when the server does not say), `response_id`;
- tokens that add up: `request_prompt_tokens`, `request_completion_tokens`, `request_total_tokens` (the
  prompt's request's usage on its first choice's row only, empty on the others) and `prompt_tokens_share`,
  `completion_tokens_share`, `total_tokens_share` (the usage split evenly among the choices), so a column's
  sum is the tokens paid for the rows summed;
- what answered: `system_fingerprint`, `response_model` (the model name the server answered with),
  `created` (its unix time), `service_tier`;
- when a job's `model_args` has a `seed`: `seed` (the one sent, see `expand.seed_of`);
- when logprobs were asked for: `first_token`, `first_token_logprob`, `first_token_top_logprobs`
  ({token: logprob});
- when a job has `parse`: `parsed_<field>` per field (typed: see `fields_of`), `parse_ok`, `parse_error`;
- with `include` (failed or pending prompts exported too): `status`, `error_kind`, `error`.

Each column has one type (`str`, `int`, `float`, `bool`, or `json`: the JSON text of each value); a
keyword field's type is the one all its values share in the specs, else `json`.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

INDEX_COLUMNS = ("template_index", "keywords_index", "model_index", "sample_index")
FRONT = (("job", "str"), ("prompt_hash", "str"), ("model", "str"), *((c, "int") for c in INDEX_COLUMNS),
         ("choice_index", "int"))
BACK = (("template", "str"), ("prompt", "str"), ("last_user_message", "str"), ("text", "str"),
        ("finish_reason", "str"), ("prompt_tokens", "int"), ("completion_tokens", "int"), ("total_tokens", "int"),
        ("reasoning_tokens", "int"), ("response_id", "str"))
TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
USAGE = (*((f"request_{t}", "int") for t in TOKENS), *((f"{t}_share", "float") for t in TOKENS))
ANSWERED = (("system_fingerprint", "str"), ("response_model", "str"), ("created", "int"), ("service_tier", "str"))
SEED = (("seed", "int"),)
LOGPROBS = (("first_token", "str"), ("first_token_logprob", "float"), ("first_token_top_logprobs", "json"))
PARSE = (("parse_ok", "bool"), ("parse_error", "str"))
STATUS = (("status", "str"), ("error_kind", "str"), ("error", "str"))
FIXED_TYPES = dict([*FRONT, *BACK, *USAGE, *ANSWERED, *SEED, *LOGPROBS, *PARSE, *STATUS])
FIXED = set(FIXED_TYPES)


@dataclass(frozen=True)
class Columns:
    """The table's columns: (name, type) in order, and where each keyword and parsed field goes."""

    keywords: tuple[tuple[str, str, str], ...]  # (field, column, type)
    logprobs: bool
    indexes: bool = True
    seed: bool = False
    parsed: tuple[tuple[str, str, str], ...] | None = None  # (field, column, type); None: no job parses
    status: bool = False  # failed or pending prompts are exported too

    @property
    def types(self) -> dict[str, str]:
        front = FRONT if self.indexes else tuple(c for c in FRONT if c[0] not in INDEX_COLUMNS)
        parsed = () if self.parsed is None else (*((col, kind) for _, col, kind in self.parsed), *PARSE)
        return dict([*front, *((col, kind) for _, col, kind in self.keywords), *BACK, *USAGE, *ANSWERED,
                     *(SEED if self.seed else ()), *(LOGPROBS if self.logprobs else ()), *parsed,
                     *(STATUS if self.status else ())])

    @property
    def names(self) -> list[str]:
        return list(self.types)


def columns_for_specs(specs: Iterable[dict[str, Any]], parsed: dict[str, str] | None = None,
                      status: bool = False) -> Columns:
    """The columns of the jobs with these (stored) specs: keyword fields and their types from the specs;
    `parsed`: the parsed fields' types (None: no job parses)."""
    fields: dict[str, set[str]] = {}
    logprobs = seed = False
    for spec in specs:
        for name, values in _keyword_values(spec.get("keywords")):
            fields.setdefault(name, set()).update(kind_of(v) for v in values)
        args = spec.get("model_args") or {}
        asked = args.get("logprobs")
        logprobs = logprobs or (asked is not None and asked is not False)
        seed = seed or args.get("seed") is not None
    return Columns(_keyword_columns(fields, parsed), logprobs, True, seed, _parsed_columns(parsed), status)


def columns_for_items(items: list[dict[str, Any]]) -> Columns:
    """The columns of a results list: keyword and parsed fields as they first appear, their types from
    their values; the row indexes when the items hold them."""
    fields: dict[str, set[str]] = {}
    parsed: dict[str, set[str]] | None = None
    logprobs = seed = status = False
    indexes = bool(items) and all(name in items[0] for name in INDEX_COLUMNS)
    for item in items:
        for name, value in (item.get("messages_args", item.get("prompt_args")) or {}).items():
            fields.setdefault(name, set()).add(kind_of(value))
        logprobs = logprobs or (item.get("choice") or {}).get("logprobs") is not None
        seed = seed or (item.get("model_args") or {}).get("seed") is not None
        status = status or "status" in item
        if "parsed" in item:
            parsed = {} if parsed is None else parsed
            for name, value in (item["parsed"] or {}).items():
                parsed.setdefault(name, set()).add(kind_of(value))
    parsed_types = None if parsed is None else {name: merge_kinds(kinds) for name, kinds in parsed.items()}
    keywords = _keyword_columns(fields, parsed_types)
    return Columns(keywords, logprobs, indexes, seed, _parsed_columns(parsed_types), status)


def _keyword_values(keywords: Any) -> Iterator[tuple[str, list[Any]]]:
    if isinstance(keywords, dict):  # a grid: a dict of lists
        yield from keywords.items()
    elif isinstance(keywords, list):
        for kw in keywords:
            for name, value in kw.items():
                yield name, [value]


def kind_of(value: Any) -> str:
    """A value's column type (`null` for None)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "float"  # an `int` column holds 64 bits
    if isinstance(value, float):
        return "float"
    return "str" if isinstance(value, str) else "json"


def merge_kinds(kinds: set[str]) -> str:
    """The one type of a column whose values have these types: ints with floats are floats; text alone
    (or nothing) is `str`; any other mix is `json`."""
    kinds = kinds - {"null"}
    if kinds == {"int", "float"}:
        return "float"
    return kinds.pop() if len(kinds) == 1 else ("str" if not kinds else "json")


def _keyword_columns(fields: dict[str, set[str]], parsed: dict[str, str] | None) -> tuple[tuple[str, str, str], ...]:
    taken = FIXED | {f"parsed_{name}" for name in parsed or ()}  # a keyword field named so is `kw_<field>`
    return tuple((name, f"kw_{name}" if name in taken else name, merge_kinds(kinds)) for name, kinds in fields.items())


def _parsed_columns(types: dict[str, str] | None) -> tuple[tuple[str, str, str], ...] | None:
    if types is None:
        return None
    return tuple((name, f"parsed_{name}", kind) for name, kind in types.items())


def flat_row(item: dict[str, Any], columns: Columns, choices: int = 1) -> dict[str, Any]:
    """One result item as a row of `columns` (Python values: `json` columns still hold dicts and lists);
    `choices`: how many items its prompt's response gave (its usage's share is 1/`choices`). An item of a
    prompt not done (exported with `include`) has no choice: its choice columns are empty."""
    chat = "messages" in item
    choice = item.get("choice") or {}
    completion = item.get("completion") or {}
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    keywords = (item["messages_args"] if chat else item["prompt_args"]) or {}
    row: dict[str, Any] = {"job": item.get("job"), "prompt_hash": item.get("prompt_hash"), "model": item.get("model")}
    if columns.indexes:
        row.update((name, item.get(name)) for name in INDEX_COLUMNS)
    index = choice.get("index")
    row["choice_index"] = index
    for name, column, _ in columns.keywords:
        row[column] = keywords.get(name)
    if chat:
        users = [m for m in item["messages"] if m.get("role") == "user"]
        row.update(template=messages_text(item["messages_raw"]), prompt=messages_text(item["messages"]),
                   last_user_message=users[-1].get("content") if users else None)
    else:
        row.update(template=item.get("prompt_raw"), prompt=item.get("prompt"), last_user_message=None)
    row.update(text=choice_text(choice) if choice else None, finish_reason=choice.get("finish_reason"),
               response_id=completion.get("id"))
    for name in TOKENS:
        value = usage.get(name)
        value = value if isinstance(value, int) and not isinstance(value, bool) else None
        row[name] = value
        row[f"request_{name}"] = value if index == 0 else None
        row[f"{name}_share"] = None if value is None else value / max(1, choices)
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    row["reasoning_tokens"] = reasoning if isinstance(reasoning, int) and not isinstance(reasoning, bool) else None
    row.update(system_fingerprint=completion.get("system_fingerprint"), response_model=completion.get("model"),
               created=completion.get("created"), service_tier=completion.get("service_tier"))
    if columns.seed:
        row["seed"] = (item.get("model_args") or {}).get("seed")
    if columns.logprobs:
        row.update(zip(("first_token", "first_token_logprob", "first_token_top_logprobs"),
                       first_token(choice.get("logprobs")), strict=True))
    if columns.parsed is not None:
        parsed = item.get("parsed")
        for name, column, _ in columns.parsed:
            row[column] = parsed.get(name) if isinstance(parsed, dict) else None
        row["parse_ok"] = None if "parsed" not in item or not choice else parsed is not None
        row["parse_error"] = item.get("parse_error")
    if columns.status:
        row.update(status=item.get("status", "done"), error_kind=item.get("error_kind"), error=item.get("error"))
    return row


def messages_text(messages: list[dict[str, Any]]) -> str:
    """Chat messages as text: one `role: content` line each."""
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)


def first_token(logprobs: Any) -> tuple[Any, Any, dict[Any, Any] | None]:
    """(token, logprob, {top token: logprob}) of a choice's first token, chat or completions; Nones when absent."""
    if not isinstance(logprobs, dict):
        return None, None, None
    content = logprobs.get("content")
    if isinstance(content, list):  # chat: [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]
        if not content or not isinstance(content[0], dict):
            return None, None, None
        first = content[0]
        top = {t.get("token"): t.get("logprob") for t in first.get("top_logprobs") or [] if isinstance(t, dict)}
        return first.get("token"), first.get("logprob"), top
    tokens, values, tops = (logprobs.get(k) or [] for k in ("tokens", "token_logprobs", "top_logprobs"))
    if not tokens:  # completions: parallel lists
        return None, None, None
    top_first = tops[0] if tops and isinstance(tops[0], dict) else {}
    return tokens[0], values[0] if values else None, top_first


def cell(value: Any, kind: str) -> Any:
    """A value as a typed column holds it: `json` as JSON text (text too: `"x"`, so every value reads back
    as it was), `float` as a float."""
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


_AS_IS = {"str": str, "float": float}  # a value of this very type is its own cell


def row_cells(types: dict[str, str]) -> Callable[[dict[str, Any]], list[Any]]:
    """A function from a flat row (every column of `types`) to its cells (`cell`), in column order: the same
    cells, with only the values that need it converted (an export's hot loop)."""
    values_of = operator.itemgetter(*types)
    fix = [(i, kind, _AS_IS.get(kind)) for i, kind in enumerate(types.values()) if kind in ("json", "str", "float")]

    def cells(row: dict[str, Any]) -> list[Any]:
        values = list(values_of(row)) if len(types) > 1 else [values_of(row)]
        for i, kind, as_is in fix:
            value = values[i]
            if value is not None and type(value) is not as_is:
                values[i] = cell(value, kind)
        return values

    return cells


def choice_text(choice: dict[str, Any]) -> str:
    """A choice's text: a chat message's content (its JSON when it has none: a tool call), or `text`."""
    if "message" in choice:
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else json.dumps(message, ensure_ascii=False)
    text = choice.get("text")
    return text if isinstance(text, str) else ""
