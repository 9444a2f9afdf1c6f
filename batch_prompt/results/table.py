"""The results as a flat table: one row per choice, plain columns, for CSV, Parquet, SQLite and pandas.

Columns, in order:

- `job`, `prompt_hash`, `model`, `template_index`, `keywords_index`, `model_index`, `sample_index`
  (read from the job database: absent when flattening a results list, which does not hold them),
  `choice_index`;
- one column per keyword field, named after it (`kw_<field>` when that name is one of these columns);
- `template` and `prompt` (chat: the messages as text, one `role: content` line each), `last_user_message`
  (chat only), `text` (the choice's), `finish_reason`, `prompt_tokens`, `completion_tokens`, `total_tokens`
  (the response's usage, repeated on each of its choices), `response_id`;
- when logprobs were asked for: `first_token`, `first_token_logprob`, `first_token_top_logprobs`
  ({token: logprob}).

Each column has one type (`str`, `int`, `float`, `bool`, or `json`: JSON text of values that are not
text); a keyword field's type is the one all its values share in the specs, else `json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

INDEX_COLUMNS = ("template_index", "keywords_index", "model_index", "sample_index")
FRONT = (("job", "str"), ("prompt_hash", "str"), ("model", "str"), *((c, "int") for c in INDEX_COLUMNS),
         ("choice_index", "int"))
BACK = (("template", "str"), ("prompt", "str"), ("last_user_message", "str"), ("text", "str"),
        ("finish_reason", "str"), ("prompt_tokens", "int"), ("completion_tokens", "int"), ("total_tokens", "int"),
        ("response_id", "str"))
LOGPROBS = (("first_token", "str"), ("first_token_logprob", "float"), ("first_token_top_logprobs", "json"))
FIXED = {name for name, _ in (*FRONT, *BACK, *LOGPROBS)}


@dataclass(frozen=True)
class Columns:
    """The table's columns: (name, type) in order, and where each keyword field goes."""

    keywords: tuple[tuple[str, str, str], ...]  # (field, column, type)
    logprobs: bool
    indexes: bool

    @property
    def types(self) -> dict[str, str]:
        front = FRONT if self.indexes else tuple(c for c in FRONT if c[0] not in INDEX_COLUMNS)
        return dict([*front, *((col, kind) for _, col, kind in self.keywords), *BACK,
                     *(LOGPROBS if self.logprobs else ())])

    @property
    def names(self) -> list[str]:
        return list(self.types)


def columns_for_specs(specs: Iterable[dict[str, Any]]) -> Columns:
    """The columns of the jobs with these (stored) specs: keyword fields and their types from the specs."""
    fields: dict[str, set[str]] = {}
    logprobs = False
    for spec in specs:
        for name, values in _keyword_values(spec.get("keywords")):
            fields.setdefault(name, set()).update(_kind(v) for v in values)
        asked = (spec.get("model_args") or {}).get("logprobs")
        logprobs = logprobs or (asked is not None and asked is not False)
    return Columns(_keyword_columns(fields), logprobs, indexes=True)


def columns_for_items(items: list[dict[str, Any]]) -> Columns:
    """The columns of a results list (no row indexes): keyword fields as they first appear."""
    fields: dict[str, set[str]] = {}
    logprobs = False
    for item in items:
        for name, value in (item.get("messages_args", item.get("prompt_args")) or {}).items():
            fields.setdefault(name, set()).add(_kind(value))
        logprobs = logprobs or (item.get("choice") or {}).get("logprobs") is not None
    return Columns(_keyword_columns(fields), logprobs, indexes=False)


def _keyword_values(keywords: Any) -> Iterator[tuple[str, list[Any]]]:
    if isinstance(keywords, dict):  # a grid: a dict of lists
        yield from keywords.items()
    elif isinstance(keywords, list):
        for kw in keywords:
            for name, value in kw.items():
                yield name, [value]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str" if isinstance(value, str) else "json"


def _keyword_columns(fields: dict[str, set[str]]) -> tuple[tuple[str, str, str], ...]:
    out = []
    for name, kinds in fields.items():
        kinds = kinds - {"null"}
        if kinds == {"int", "float"}:
            kinds = {"float"}
        kind = kinds.pop() if len(kinds) == 1 else ("str" if not kinds else "json")
        out.append((name, f"kw_{name}" if name in FIXED else name, kind))
    return tuple(out)


def flat_row(item: dict[str, Any], columns: Columns, indexes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """One result item as a row of `columns` (Python values: `json` columns still hold dicts and lists)."""
    chat = "messages" in item
    choice = item.get("choice") or {}
    completion = item.get("completion") or {}
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    keywords = (item["messages_args"] if chat else item["prompt_args"]) or {}
    row: dict[str, Any] = {"job": item.get("job"), "prompt_hash": item.get("prompt_hash"), "model": item.get("model")}
    if columns.indexes:
        row.update(zip(INDEX_COLUMNS, indexes or (None, None, None, None), strict=True))
    row["choice_index"] = choice.get("index")
    for name, column, _ in columns.keywords:
        row[column] = keywords.get(name)
    if chat:
        users = [m for m in item["messages"] if m.get("role") == "user"]
        row.update(template=messages_text(item["messages_raw"]), prompt=messages_text(item["messages"]),
                   last_user_message=users[-1].get("content") if users else None)
    else:
        row.update(template=item.get("prompt_raw"), prompt=item.get("prompt"), last_user_message=None)
    row.update(text=choice_text(choice), finish_reason=choice.get("finish_reason"),
               prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
               total_tokens=usage.get("total_tokens"), response_id=completion.get("id"))
    if columns.logprobs:
        row.update(zip(("first_token", "first_token_logprob", "first_token_top_logprobs"),
                       first_token(choice.get("logprobs")), strict=True))
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
    """A value as a typed column holds it: `json` as JSON text (text stays text), `float` as a float."""
    if value is None:
        return None
    if kind == "json":
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


def choice_text(choice: dict[str, Any]) -> str:
    """A choice's text: a chat message's content (its JSON when it has none: a tool call), or `text`."""
    if "message" in choice:
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else json.dumps(message, ensure_ascii=False)
    text = choice.get("text")
    return text if isinstance(text, str) else ""
