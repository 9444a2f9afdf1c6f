"""A server that counts the first choice only (llama.cpp's with n > 1 or a list of prompts) is noticed from its
answers, and its token counts are marked as its own: by `status` (and `--json`) and the run's summary. A
server that counts honestly is never doubted, chat or packed completions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.reports.usage import FIRST_CHOICE_ONLY, doubt, undercounts
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, cli_env, run_cli

CHAT = {"name": "chat", "api": "chat", "model": "gpt-4o-mini", "templates": ["Tell me about {w}"],
        "keywords": {"w": ["apples", "pears", "plums"]}, "model_args": {"n": 3, "max_tokens": 16}}
PACKED = {"name": "packed", "api": "completions", "model": "gpt-3.5-turbo-instruct", "templates": ["Say {w}"],
          "keywords": {"w": [f"word {i}" for i in range(8)]}, "model_args": {"n": 2, "max_tokens": 16},
          "prompts_per_request": 4}


def run_job(tmp_path: Path, fake: FakeServer, spec: dict[str, Any]) -> Path:
    db = tmp_path / f"{spec['name']}.db"
    cache = tmp_path / f"cache-{spec['name']}"  # a cache of its own: every answer comes from the server
    bp.create(db, **spec).run(base_url=fake.url, api_key=API_KEY, cache_dir=str(cache), quiet=True,
                              retry=RetryPolicy.no_wait(3))
    return db


def choice(text: str) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}


def test_a_response_undercounts_when_its_choices_need_more_tokens_than_reported() -> None:
    three = [choice("one two three"), choice("four five"), choice("six")]
    assert not undercounts(three, {"completion_tokens": 6}, None)  # every word at least a token: honest
    assert not undercounts(three, {"completion_tokens": 9}, None)  # words split into several tokens
    assert undercounts(three, {"completion_tokens": 3}, None)  # the first choice's only
    assert not undercounts(three, {"completion_tokens": 3}, 1)  # max_tokens 1: each choice took one token
    assert not undercounts(three[:1], {"completion_tokens": 1}, None)  # one choice: nothing to compare
    assert not undercounts(three, None, None) and not undercounts(three, {"completion_tokens": "3"}, None)


def test_packed_rows_are_judged_together_and_only_whole() -> None:
    def row(text: str, share: int) -> tuple[str, str]:
        response = {"id": "cmpl-1", "choices": [{"index": 0, "text": text}], "usage": {"completion_tokens": share}}
        return json.dumps({"prompt": "x", "max_tokens": 16}), json.dumps(response)

    short = [row("a b c d e f", 3), row("g h", 4)]  # 8 words need 8 tokens; 7 were reported in all
    assert doubt(short, packed=2) == FIRST_CHOICE_ONLY
    assert doubt([row("a b c d e f", 4), row("g h", 4)], packed=2) is None  # 8 of 8: even shares add up
    assert doubt([row("a b c d e f", 4)], packed=2) is None  # half a request: its share proves nothing


@pytest.mark.parametrize("spec", [CHAT, PACKED], ids=["chat-n3", "completions-packed"])
def test_a_first_choice_only_server_is_noticed_and_an_honest_one_is_not(
    fake: FakeServer, tmp_path: Path, spec: dict[str, Any]
) -> None:
    honest = run_job(tmp_path, fake, spec)
    [job] = bp.status(honest)
    assert job.usage_doubt is None and job.done == job.total

    fake.reset()
    fake.configure(usage_first_choice_only=True)
    db = run_job(tmp_path, fake, {**spec, "name": spec["name"] + "-llama"})
    [job] = bp.status(db)
    assert job.usage_doubt == FIRST_CHOICE_ONLY
    assert job.requests == len([e for e in fake.record if e["status"] == 200]) > 0  # answered now, not cached
    out = run_cli("status", str(db), "--json", cwd=tmp_path)
    assert json.loads(out.stdout)[0]["usage_doubt"] == FIRST_CHOICE_ONLY
    out = run_cli("status", str(db), cwd=tmp_path)
    assert f"  {FIRST_CHOICE_ONLY}" in out.stdout.splitlines()


def test_the_run_summary_says_so(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(usage_first_choice_only=True)
    (tmp_path / "spec.json").write_text(json.dumps(CHAT))
    out = run_cli("run", "spec.json", "--db", "jobs.db", "--quiet", "--yes", env=cli_env(fake, tmp_path),
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"  {FIRST_CHOICE_ONLY}" in out.stderr.splitlines()
    fake.configure(usage_first_choice_only=False)
    fake.reset()
    (tmp_path / "spec.json").write_text(json.dumps({**CHAT, "name": "honest"}))
    out = run_cli("run", "spec.json", "--db", "honest.db", "--quiet", "--yes", "--no-cache",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 0 and FIRST_CHOICE_ONLY not in out.stderr, out.stderr
