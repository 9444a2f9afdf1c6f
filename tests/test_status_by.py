"""`status --by FIELD` (and `bp.status(db, by=...)`): prompts, tokens and cost per keyword value, template or
model, proved from the fake server's own record of the usage it answered with."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.reports.prices import money
from batch_prompt.reports.status import _group_costs
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.store.database import Spend
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, run_cli

PRICES = {"m1": {"input": 1.0, "output": 2.0, "batch_input": 0.3, "batch_output": 0.7},
          "m2": {"input": 3.0, "output": 5.0}}
FOODS: list[Any] = ["pizza", "apples", ["rice", "beans"]]
# every food is asked with both templates (the second always refused: a permanent 400), by 2 models, twice
SPEC: dict[str, Any] = {
    "name": "likes", "api": "chat", "model": ["m1", "m2"], "templates": ["I like {food}", "FAIL400 I hate {food}"],
    "keywords": [{"food": "pizza", "lang": "en"}, {"food": "apples"}, {"food": ["rice", "beans"]}],
    "model_args": {"n": 2, "max_tokens": 6}, "repeats": 2,
}
GROUP_FIELDS = {"value", "label", "total", "pending", "running", "done", "failed", "cached", "prompt_tokens",
                "completion_tokens", "cost"}


def run_job(db: Path, fake: FakeServer, tmp_path: Path, **spec: Any) -> bp.RunSummary:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    job = bp.create(db, **{**SPEC, "prices": str(prices), **spec})
    return job.run(base_url=fake.url, api_key=API_KEY, cache_dir=str(tmp_path / "cache"), quiet=True,
                   retry=RetryPolicy.no_wait(2))


def food_of(prompt: str) -> str:
    """The group key (as `status --by food` names it) of a prompt the fake was sent."""
    [found] = [f for f in FOODS if prompt.endswith(f" {f}")]
    return found if isinstance(found, str) else json.dumps(found, separators=(",", ":"))


def recorded(fake: FakeServer, group: Any) -> dict[Any, Counter[str]]:
    """From the fake's record: per group (`group(entry)`), the usage it answered with, the cost of that usage
    at `PRICES` (live), the answers and the refusals."""
    found: dict[Any, Counter[str]] = {}
    for entry in fake.record:
        mine = found.setdefault(group(entry), Counter())
        if entry["outcome"] == "error_400":
            mine["refused"] += 1
            continue
        assert entry["outcome"] == "ok", entry
        usage, price = entry["usage"], PRICES[entry["model"]]
        mine["answers"] += 1
        mine["prompt_tokens"] += usage["prompt_tokens"]
        mine["completion_tokens"] += usage["completion_tokens"]
        mine["cost_micro"] += usage["prompt_tokens"] * price["input"] + usage["completion_tokens"] * price["output"]
    return found


@pytest.fixture
def likes_db(fake: FakeServer, tmp_path: Path) -> Path:
    db = tmp_path / "jobs.db"
    summary = run_job(db, fake, tmp_path)
    assert (summary.done, summary.failed, summary.cached) == (12, 12, 0)
    return db


def test_status_by_food_sums_are_the_fakes_recorded_usage(likes_db: Path, fake: FakeServer, tmp_path: Path) -> None:
    expected = recorded(fake, lambda entry: food_of(entry["prompts"][0]))
    assert set(expected) == {"pizza", "apples", '["rice","beans"]'}
    out = run_cli("status", str(likes_db), "--by", "food", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [job] = json.loads(out.stdout)
    assert job["by"] == "food"
    assert [g["value"] for g in job["groups"]] == ["pizza", "apples", '["rice","beans"]']
    assert [g["label"] for g in job["groups"]] == ["pizza", "apples", '["rice","beans"]']
    for group in job["groups"]:
        assert set(group) == GROUP_FIELDS
        mine = expected[group["value"]]
        assert mine["answers"] == 4 and mine["refused"] == 4  # 2 models x 2 repeats, each template
        assert (group["total"], group["done"], group["failed"], group["pending"], group["running"],
                group["cached"]) == (8, 4, 4, 0, 0, 0)
        assert (group["prompt_tokens"], group["completion_tokens"]) == (mine["prompt_tokens"],
                                                                         mine["completion_tokens"])
        assert group["prompt_tokens"] > 0 and group["completion_tokens"] > 0
        assert group["cost"] == pytest.approx(mine["cost_micro"] / 1e6, rel=1e-12)
    # the groups add up to the job: its prompts, and the tokens and cost plain status reports
    assert sum(g["total"] for g in job["groups"]) == job["total"] == 24
    assert sum(g["prompt_tokens"] for g in job["groups"]) == job["prompt_tokens"]
    assert sum(g["completion_tokens"] for g in job["groups"]) == job["completion_tokens"]
    assert sum(g["cost"] for g in job["groups"]) == pytest.approx(job["cost"], rel=1e-12)
    # the library gives the same, as data
    [data] = bp.status(likes_db, by="food")
    assert data.by == "food" and isinstance(data.groups[0], bp.GroupStatus)  # type: ignore[index]
    assert json.loads(json.dumps(data.to_dict())) == job

    # the table: one row per food, then their sum
    text = run_cli("status", str(likes_db), "--by", "food", cwd=tmp_path).stdout.splitlines()
    assert text[0] == "likes (chat, live): 12 of 24 prompts done, 12 failed"
    assert text[1].split() == ["food", "prompts", "done", "failed", "pending", "tokens", "in", "tokens", "out",
                               "cost"]
    for line, group in zip(text[2:5], job["groups"], strict=True):
        assert line.split() == [group["label"], "8", "4", "4", "0", f"{group['prompt_tokens']:,}",
                                f"{group['completion_tokens']:,}", money(group["cost"])]
    assert text[5].split() == ["all", "24", "12", "12", "0", f"{job['prompt_tokens']:,}",
                               f"{job['completion_tokens']:,}", money(job["cost"])]
    assert len(text) == 6


def test_status_by_model_and_by_template(likes_db: Path, fake: FakeServer, tmp_path: Path) -> None:
    by_model = recorded(fake, lambda entry: entry["model"])
    [job] = bp.status(likes_db, by="model")
    assert job.groups is not None
    assert [(g.value, g.label, g.total, g.done, g.failed) for g in job.groups] == [
        ("m1", "m1", 12, 6, 6), ("m2", "m2", 12, 6, 6)]
    for group in job.groups:
        mine = by_model[group.value]
        assert (group.prompt_tokens, group.completion_tokens) == (mine["prompt_tokens"], mine["completion_tokens"])
        assert group.cost == pytest.approx(mine["cost_micro"] / 1e6, rel=1e-12)
    # per model, the groups are what plain status says of each model
    assert [(g.prompt_tokens, g.completion_tokens, g.cost) for g in job.groups] == [
        (m.prompt_tokens, m.completion_tokens, pytest.approx(m.cost, rel=1e-12)) for m in job.models]

    by_template = recorded(fake, lambda entry: int(entry["prompts"][0].startswith("FAIL400")))
    [job] = bp.status(likes_db, by="template")
    assert job.groups is not None
    assert [(g.value, g.label, g.total, g.done, g.failed) for g in job.groups] == [
        (0, "0: I like {food}", 12, 12, 0), (1, "1: FAIL400 I hate {food}", 12, 0, 12)]
    liked, hated = job.groups
    assert (liked.prompt_tokens, liked.completion_tokens) == (by_template[0]["prompt_tokens"],
                                                              by_template[0]["completion_tokens"])
    assert liked.cost == pytest.approx(by_template[0]["cost_micro"] / 1e6, rel=1e-12)
    assert (hated.prompt_tokens, hated.completion_tokens, hated.cost) == (0, 0, 0.0)
    assert by_template[1]["refused"] == 12

    text = run_cli("status", str(likes_db), "--by", "template", cwd=tmp_path).stdout.splitlines()
    assert [line.split()[:2] for line in text[2:]] == [["0:", "I"], ["1:", "FAIL400"], ["all", "24"]]


def test_a_field_some_keyword_dicts_lack_groups_under_none(likes_db: Path, tmp_path: Path) -> None:
    [job] = bp.status(likes_db, by="lang")
    assert job.groups is not None
    assert [(g.value, g.label, g.total, g.done, g.failed) for g in job.groups] == [
        ("en", "en", 8, 4, 4), (None, "(none)", 16, 8, 8)]
    assert sum(g.prompt_tokens for g in job.groups) == job.prompt_tokens
    text = run_cli("status", str(likes_db), "--by", "lang", cwd=tmp_path).stdout.splitlines()
    assert [line.split()[0] for line in text[2:]] == ["en", "(none)", "all"]


def test_plain_status_is_unchanged(likes_db: Path, tmp_path: Path) -> None:
    [job] = bp.status(likes_db)
    assert (job.by, job.groups) == (None, None)
    assert "by" not in job.to_dict() and "groups" not in job.to_dict()
    out = run_cli("status", str(likes_db), "--json", cwd=tmp_path)
    assert "groups" not in json.loads(out.stdout)[0]


def test_an_unknown_field_is_exit_2_naming_the_fields_there_are(likes_db: Path, tmp_path: Path) -> None:
    out = run_cli("status", str(likes_db), "--by", "colour", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"batch-prompt: error: no job in {likes_db} has a keyword field 'colour': group by template, "
        "model, food, lang"]
    with pytest.raises(bp.UnknownFieldError) as caught:
        bp.status(likes_db, by="colour")
    assert (caught.value.field, caught.value.available) == ("colour", ("template", "model", "food", "lang"))


def test_answers_from_the_cache_are_counted_as_cached_not_as_tokens(likes_db: Path, fake: FakeServer,
                                                                    tmp_path: Path) -> None:
    """A second job asking the same prompts is answered from the cache: it paid nothing, and says so."""
    fake.reset()
    again = tmp_path / "again.db"
    summary = run_job(again, fake, tmp_path, name="again")
    assert (summary.done, summary.cached) == (12, 12) and not [e for e in fake.record if e["outcome"] == "ok"]
    [job] = bp.status(again, by="food")
    assert job.groups is not None
    assert [(g.done, g.cached, g.failed, g.prompt_tokens, g.completion_tokens, g.cost) for g in job.groups] == [
        (4, 4, 4, 0, 0, 0.0)] * 3
    assert job.prompt_tokens == 0
    text = run_cli("status", str(again), "--by", "food", cwd=tmp_path).stdout.splitlines()
    assert text[1].split()[5] == "cached" and text[2].split()[:6] == ["pizza", "8", "4", "4", "0", "4"]


def test_a_field_named_with_a_double_quote(tmp_path: Path) -> None:
    """A JSON path cannot name it; the groups are found all the same (values of every JSON type)."""
    db = tmp_path / "jobs.db"
    keywords = [{"food": "a", 'say "x"': True}, {"food": "b", 'say "x"': 1.5}, {"food": "c", 'say "x"': None},
                {"food": "d", 'say "x"': {"k": [1]}}, {"food": "e"}]
    bp.create(db, **{**SPEC, "keywords": keywords, "repeats": 1})
    [job] = bp.status(db, by='say "x"')
    assert job.groups is not None
    assert [(g.value, g.label, g.total, g.pending) for g in job.groups] == [
        (True, "true", 4, 4), (1.5, "1.5", 4, 4), (None, "(none)", 8, 8), ('{"k":[1]}', '{"k":[1]}', 4, 4)]
    [plain] = bp.status(db, by="food")
    assert [g.value for g in plain.groups or ()] == ["a", "b", "c", "d", "e"]


def test_a_model_spent_in_both_modes_is_priced_in_their_proportions() -> None:
    prices = bp.Prices({"m": bp.Rate(1.0, 2.0, 0.5, 1.0, "test", "test")})
    cost = _group_costs([Spend("m", "batch", 1, 1, 300, 100), Spend("m", "live", 1, 1, 100, 300)], "live", prices)
    # a quarter of the prompt tokens at the live price, three quarters at the batch price; completion: reversed
    assert cost("m", 40, 40) == pytest.approx((10 * 1.0 + 30 * 0.5 + 30 * 2.0 + 10 * 1.0) / 1e6, rel=1e-12)
    only_batch = _group_costs([Spend("m", "batch", 1, 1, 300, 100)], "live", prices)
    assert only_batch("m", 40, 40) == pytest.approx((40 * 0.5 + 40 * 1.0) / 1e6, rel=1e-12)
    assert _group_costs([], "batch", prices)("m", 40, 40) == only_batch("m", 40, 40)
    assert cost("unknown-model-xyz", 1, 1) is None
