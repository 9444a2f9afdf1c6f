"""Probabilities over a question's options, read from the first token's top logprobs of each answer.

    df = bp.option_probs(bp.to_dataframe("jobs.db"), ["H", "T"])   # + columns p_H, p_T, p_other

Run the job with logprobs (chat: `model_args: {"logprobs": true, "top_logprobs": 20}`; legacy completions:
`{"logprobs": 5}`) so the results carry `first_token_top_logprobs`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

# a tokenizer's marks for a leading space (byte-level BPE's "Ġ", SentencePiece's "▁"), besides whitespace
_SPACE_MARKS = "Ġ▁"


def option_key(token: str) -> str:
    """The form tokens and options are compared in: leading whitespace (and space marks) removed, casefolded."""
    return token.lstrip().lstrip(_SPACE_MARKS).lstrip().casefold()


def option_probs(df: Any, options: Iterable[str], column: str = "first_token_top_logprobs") -> Any:
    """A copy of `df` (a pandas DataFrame, as `bp.to_dataframe` gives) with a column `p_<option>` per option,
    exactly as given and in its order, then `p_other`.

    Each row's `column` holds the first token's top alternatives, `{token: logprob}` (a dict, or its JSON
    text as some export formats hold it). A token counts for an option when the two are equal after
    leading whitespace (and the tokenizer marks `Ġ`, `▁`) is removed and case is folded: `" H"`, `"h"`
    and `"H"` all count for `"H"`; `" Heads"` and `"H,"` do not. An option's mass is the sum of
    `exp(logprob)` over the tokens that count for it. Then:

    - `p_<option>` = its mass / the mass of all the options: the options' probabilities given that the
      answer is one of them (they sum to 1; all NaN when no top token is any option, `p_other` then 1);
    - `p_other` = 1 - the mass of all the options (clamped at 0): the probability, not renormalised, that
      the first token is none of the options as far as the top list shows. It includes the mass beyond
      the top list, so a variant of an option ranked below the top list counts as other: ask for more
      top logprobs to see it.

    Only the top list is read: the sampled token (`first_token`) counts when it is in it. A row without
    logprobs (missing, or an empty top list, as `top_logprobs: 0` gives) has NaN in every new column.
    Raises `ValueError` for no options, an option that is empty once normalised, two options that are the
    same once normalised (`["H", "h"]`), an option whose column would be `p_other`, a missing `column`, or
    a cell that is neither a dict nor its JSON text; `TypeError` when `options` is a string or holds
    something else. Needs pandas (and only pandas); `df` itself is not modified.
    """
    if isinstance(options, str):
        raise TypeError(f"options must be a list of strings, not the string {options!r}")
    options = list(options)
    index = {key: i for i, key in enumerate(_option_keys(options))}
    if column not in df.columns:
        raise ValueError(f"no column {column!r}: run the job with logprobs (chat: model_args logprobs true and "
                         "top_logprobs N; completions: logprobs N) and export it with bp.to_dataframe")
    import pandas as pd  # (the caller has a DataFrame: pandas is there)

    cells = df[column]
    rows = [_row_probs(None if missing else cell, index, row)
            for row, cell, missing in zip(df.index, cells, cells.isna(), strict=True)]
    out = df.copy()
    for i, name in enumerate([*(f"p_{option}" for option in options), "p_other"]):
        out[name] = pd.Series([probs[i] for probs in rows], index=df.index, dtype="float64")
    return out


def _option_keys(options: list[Any]) -> list[str]:
    if not options:
        raise ValueError("option_probs needs at least one option")
    keys: dict[str, str] = {}
    for option in options:
        if not isinstance(option, str):
            raise TypeError(f"options must be strings, not {option!r}")
        key = option_key(option)
        if not key:
            raise ValueError(f"option {option!r} is empty once leading spaces are removed")
        if key in keys:
            raise ValueError(f"options {keys[key]!r} and {option!r} are the same once case and leading spaces "
                             "are ignored: their tokens would be counted twice")
        if f"p_{option}" == "p_other":
            raise ValueError(f"option {option!r} would be named p_other, the column of the rest of the mass")
        keys[key] = option
    return list(keys)


def _row_probs(cell: Any, index: dict[str, int], row: Any) -> list[float]:
    """[p per option..., p_other] for one row's top logprobs; `index`: an option's key -> its place."""
    nan = [math.nan] * (len(index) + 1)
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except ValueError:
            raise ValueError(f"row {row!r}: the top logprobs are not JSON: {cell[:80]!r}") from None
    if cell is None:
        return nan
    if not isinstance(cell, Mapping):
        raise ValueError(f"row {row!r}: the top logprobs must be a dict {{token: logprob}}, not {cell!r}")
    if not cell:
        return nan
    mass = [0.0] * len(index)
    for token, logprob in cell.items():
        i = index.get(option_key(token)) if isinstance(token, str) else None
        if i is not None and isinstance(logprob, int | float) and not isinstance(logprob, bool):
            mass[i] += math.exp(logprob)
    total = sum(mass)
    other = max(0.0, 1.0 - total)
    if total == 0:
        return [*nan[:-1], other]
    return [m / total for m in mass] + [other]
