"""`bp.option_probs`: probabilities over answer options from the first token's top logprobs, on jobs run
against the fake with known logprobs (chat, legacy completions, live and batch, every export format),
and its rules on small frames: variants merged, rows without logprobs NaN, bad options refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import API_KEY

# the first token's top alternatives the fake returns: a distribution whose top sums to less than 1
TOP = {"H": -0.7, " h": -2.3, "T": -1.6, " t": -3.0, "X": -3.5}


def expected(top: dict[str, float]) -> list[float]:
    """(p_H, p_T, p_other) computed here from the logprobs the fake was told to return."""
    heads = sum(math.exp(lp) for t, lp in top.items() if t.strip().upper() == "H")
    tails = sum(math.exp(lp) for t, lp in top.items() if t.strip().upper() == "T")
    return [heads / (heads + tails), tails / (heads + tails), 1 - heads - tails]


def run(db: Path, fake: FakeServer, tmp_path: Path, **options: Any) -> bp.RunSummary:
    summary = bp.resume(db, base_url=fake.url, api_key=API_KEY, cache_dir=str(tmp_path / "cache"), quiet=True,
                        poll=0.05, retry=RetryPolicy.no_wait(), **options)
    assert summary.exit_code == 0
    return summary


def probs(df: Any, job: str) -> list[float]:
    """p_H, p_T, p_other of each row of `job`, one after the other."""
    rows = df[df["job"] == job]
    return [p for row in zip(rows["p_H"], rows["p_T"], rows["p_other"], strict=True) for p in row]


def test_chat_and_completions_jobs_give_the_exact_probabilities(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(top_logprobs=TOP)
    db = tmp_path / "jobs.db"
    flips = dict(templates=["Flip {i}:"], keywords={"i": [1, 2, 3]})
    bp.create(db, name="chat", model="gpt-4o-mini", model_args={"logprobs": True, "top_logprobs": 5,
                                                                 "max_tokens": 1, "n": 2}, **flips)
    bp.create(db, name="legacy", api="completions", model="gpt-3.5-turbo-instruct",
              model_args={"logprobs": 5, "max_tokens": 1}, **flips)
    bp.create(db, name="top3", model="gpt-4o-mini", model_args={"logprobs": True, "top_logprobs": 3}, **flips)
    bp.create(db, name="plain", model="gpt-4o-mini", **flips)  # no logprobs asked for
    run(db, fake, tmp_path)
    df = bp.to_dataframe(db)
    before = df.copy()
    out = bp.option_probs(df, ["H", "T"])
    assert df.equals(before) and "p_H" not in df.columns  # a new frame; the input is left alone
    assert list(out.columns) == [*df.columns, "p_H", "p_T", "p_other"]
    assert probs(out, "chat") == pytest.approx(expected(TOP) * 6)  # 3 prompts, n=2
    assert probs(out, "legacy") == pytest.approx(expected(TOP) * 3)
    # the top 3 are H, T, " h": " t" and X fall beyond it, and count as other
    assert probs(out, "top3") == pytest.approx(expected({"H": -0.7, "T": -1.6, " h": -2.3}) * 3)
    assert len(probs(out, "plain")) == 9 and all(math.isnan(p) for p in probs(out, "plain"))


@pytest.mark.parametrize("fmt", ["pkl", "jsonl", "parquet", "db", "csv"])
def test_every_export_format_gives_the_same_probabilities(fake: FakeServer, tmp_path: Path, fmt: str) -> None:
    """Some formats hold the top logprobs as JSON text: option_probs reads both."""
    fake.configure(top_logprobs=TOP)
    db = tmp_path / "jobs.db"
    bp.create(db, name="coin", model="gpt-4o-mini", templates=["Flip {i}:"], keywords={"i": [1, 2]},
              model_args={"logprobs": True, "top_logprobs": 5, "max_tokens": 1})
    run(db, fake, tmp_path)
    path = tmp_path / f"results.{fmt}"
    bp.export(db, path)
    df = pd.read_csv(path) if fmt == "csv" else bp.to_dataframe(path)
    assert probs(bp.option_probs(df, ["H", "T"]), "coin") == pytest.approx(expected(TOP) * 2)


def test_batch_mode_carries_the_logprobs(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(top_logprobs=TOP)
    db = tmp_path / "jobs.db"
    bp.create(db, name="coin", model="gpt-4o-mini", templates=["Flip {i}:"], keywords={"i": [1, 2, 3, 4]},
              model_args={"logprobs": True, "top_logprobs": 4, "max_tokens": 1})
    assert run(db, fake, tmp_path, mode="batch").batches_submitted == 1
    assert fake.record == [] and len(fake.batches) == 1  # every answer came through the Batch API
    df = bp.to_dataframe(db)
    top4 = {"H": -0.7, "T": -1.6, " h": -2.3, " t": -3.0}
    assert df["first_token_top_logprobs"].tolist() == [top4] * 4
    out = bp.option_probs(df, ["h", "T"])  # an option in any case: its column is named as given
    assert probs(out.rename(columns={"p_h": "p_H"}), "coin") == pytest.approx(expected(top4) * 4)


def frame(*tops: Any) -> Any:
    return pd.DataFrame({"job": ["j"] * len(tops), "first_token_top_logprobs": list(tops)})


def test_variants_merge_and_the_rest_is_other() -> None:
    top = {" Yes": math.log(0.3), "yes": math.log(0.1), "ĠYES": math.log(0.1), "▁no": math.log(0.2),
           " Yes,": math.log(0.05), "Maybe": math.log(0.05)}
    out = bp.option_probs(frame(top, json.dumps(top)), ["Yes", " no"])
    assert list(out.columns) == ["job", "first_token_top_logprobs", "p_Yes", "p_ no", "p_other"]
    for _, row in out.iterrows():  # " Yes," is another token: other, with Maybe and what is beyond the top
        assert (row["p_Yes"], row["p_ no"], row["p_other"]) == pytest.approx((0.5 / 0.7, 0.2 / 0.7, 0.3))


def test_rows_without_logprobs_or_without_any_option() -> None:
    out = bp.option_probs(frame(None, float("nan"), {}, "null", {"X": -0.1}, {"H": -0.01, "T": -0.01}), ["H", "T"])
    rows = out[["p_H", "p_T", "p_other"]].values.tolist()
    assert all(math.isnan(p) for row in rows[:4] for p in row)  # no logprobs (an empty top list: none shown)
    assert math.isnan(rows[4][0]) and math.isnan(rows[4][1]) and rows[4][2] == 1.0  # no option in the top
    assert rows[5] == pytest.approx([0.5, 0.5, 0.0])  # rounding past 1: other is clamped at 0
    assert out["p_H"].dtype == "float64" and bp.option_probs(frame(), ["H"])["p_H"].dtype == "float64"


@pytest.mark.parametrize(("options", "error", "message"), [
    (["H", "h"], ValueError, "'H' and 'h' are the same once case and leading spaces are ignored"),
    (["H", " H"], ValueError, "are the same"),
    (["H", "Ġh"], ValueError, "are the same"),
    ([], ValueError, "at least one option"),
    (["H", " "], ValueError, "' ' is empty"),
    (["other", "H"], ValueError, "would be named p_other"),
    ("HT", TypeError, "not the string 'HT'"),
    (["H", 1], TypeError, "options must be strings"),
])
def test_bad_options_are_refused(options: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        bp.option_probs(frame({"H": -0.1}), options)


def test_a_frame_without_logprobs_says_how_to_get_them() -> None:
    with pytest.raises(ValueError, match="no column 'first_token_top_logprobs': run the job with logprobs"):
        bp.option_probs(pd.DataFrame({"text": ["H"]}), ["H", "T"])
    with pytest.raises(ValueError, match="row 0: the top logprobs must be a dict"):
        bp.option_probs(frame([["H", -0.1]]), ["H"])
