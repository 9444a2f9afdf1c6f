"""`api: "responses"`: the Responses API (`POST /v1/responses`), live and in batches, exported in the same flat
shape as chat, its usage mapped, priced by estimate, budget and status; the fake serves it as OpenAI does."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

import batch_prompt as bp
from batch_prompt.results.responses import as_chat
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import cli_env, run_cli
from .helpers_procs import statuses, write_spec

FAST = dict(batch_validate_seconds=0.0, batch_finalize_seconds=0.0, batch_lines_per_second=None)
PRICE = 1000.0  # USD per million tokens, in and out
WORDS = " ".join(f"w{i}" for i in range(30))  # a 30-token answer (`REPLY:` makes the fake answer it verbatim)


def spec(api: str, count: int = 6, name: str | None = None, **args: Any) -> dict[str, Any]:
    limit = {"chat": "max_tokens", "responses": "max_output_tokens"}[api]
    return {"name": name or api, "api": api, "model": "gpt-4o-mini", "templates": ["q {w}"],
            "keywords": {"w": [str(i) for i in range(count)]}, "model_args": {limit: 50, **args}}


def run(db: Path, fake: FakeServer, tmp_path: Path, **options: Any) -> bp.RunSummary:
    options = {"base_url": fake.url, "api_key": "sk-test", "cache_dir": str(tmp_path / "cache"), "quiet": True,
               "poll": 0.05, "retry": RetryPolicy.no_wait(), **options}
    return bp.resume(db, **options)


def table(db: Path, tmp_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    path = tmp_path / f"{db.stem}.csv"
    bp.export(db, path)
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def requests_of(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        return [json.loads(r) for (r,) in conn.execute("SELECT request FROM prompts ORDER BY id")]


def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o-mini": {"input": PRICE, "output": PRICE}}))
    return path


COMPARED = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens", "prompt", "template",
            "last_user_message", "w", "choice_index", "response_model", "service_tier")


@pytest.mark.parametrize("mode", ["live", "batch"])
def test_a_responses_job_exports_the_flat_columns_of_the_same_chat_job(fake: FakeServer, tmp_path: Path,
                                                                        mode: str) -> None:
    fake.configure(**FAST)
    chat_db, responses_db = tmp_path / "chat.db", tmp_path / "responses.db"
    bp.create(chat_db, **spec("chat"))
    run(chat_db, fake, tmp_path / "c1", mode="live")
    fake.reset()
    fake.configure(**FAST)
    bp.create(responses_db, **spec("responses"))
    summary = run(responses_db, fake, tmp_path / "c2", mode=mode)
    assert (summary.done, summary.failed, summary.exit_code) == (6, 0, 0)
    if mode == "live":
        assert [e["path"] for e in fake.record] == ["/v1/responses"] * 6
        assert sorted(p for e in fake.record for p in e["prompts"]) == [f"q {i}" for i in range(6)]
    else:
        assert fake.record == []  # no live request: every line went in the batch, at /v1/responses
        assert [(b["endpoint"], b["lines"], b["status"]) for b in fake.batches] == [("/v1/responses", 6, "completed")]
    assert set(fake.answered().values()) == {1} and len(fake.answered()) == 6
    chat_columns, chat_rows = table(chat_db, tmp_path)
    columns, rows = table(responses_db, tmp_path)
    assert columns == chat_columns
    assert [{c: r[c] for c in COMPARED} for r in rows] == [{c: r[c] for c in COMPARED} for r in chat_rows]
    assert [r["text"] for r in rows] == [f"echo 0: q {i}" for i in range(6)]
    assert {r["finish_reason"] for r in rows} == {"stop"} and all(r["response_id"].startswith("resp_") for r in rows)
    items = bp.export(responses_db)
    assert isinstance(items, list) and items[0]["model_args"] == {"max_output_tokens": 50}
    assert items[0]["messages"] == [{"role": "user", "content": "q 0"}]
    assert items[0]["messages_raw"] == [{"role": "user", "content": "q {w}"}]
    assert set(items[0]["choice"]) == {"index", "message", "finish_reason", "logprobs"}
    # status prices it as it prices chat: the same tokens, the same cost
    with_prices = {"prices": price_file(tmp_path)}
    report, chat_report = bp.status(responses_db, **with_prices)[0], bp.status(chat_db, **with_prices)[0]
    assert (report.prompt_tokens, report.completion_tokens) == (chat_report.prompt_tokens,
                                                                chat_report.completion_tokens)
    factor = 0.5 if mode == "batch" else 1.0
    assert report.cost == pytest.approx(chat_report.cost * factor)  # type: ignore[operator]


def test_string_and_messages_templates_become_the_input(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    messages = [{"role": "system", "content": "Be brief about {w}."}, {"role": "user", "content": "Say {w}"}]
    bp.create(db, api="responses", model="gpt-4o-mini", templates=["Say {w}", messages],
              keywords=[{"w": "tea"}], model_args={"max_output_tokens": 20})
    assert run(db, fake, tmp_path).exit_code == 0
    assert requests_of(db) == [
        {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Say tea"}], "max_output_tokens": 20},
        {"model": "gpt-4o-mini", "input": [{"role": "system", "content": "Be brief about tea."},
                                           {"role": "user", "content": "Say tea"}], "max_output_tokens": 20},
    ]
    assert [e["path"] for e in fake.record] == ["/v1/responses"] * 2
    # the system message is part of the input: counted in its tokens
    assert sorted(e["usage"]["input_tokens"] for e in fake.record) == [len("Say tea") // 4,
                                                                      len("Be brief about tea.Say tea") // 4]
    items = bp.export(db)
    assert isinstance(items, list)
    assert [item["messages"] for item in items] == [requests_of(db)[0]["input"], requests_of(db)[1]["input"]]
    assert items[1]["messages_raw"] == messages and items[0]["messages_raw"] == [{"role": "user", "content": "Say {w}"}]


def test_usage_is_mapped_and_reasoning_tokens_kept_where_chat_keeps_them(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(reasoning_tokens=7)
    db = tmp_path / "jobs.db"
    bp.create(db, **spec("responses", 4))
    assert run(db, fake, tmp_path).exit_code == 0
    recorded = {e["prompts"][0]: e["usage"] for e in fake.record}
    items = bp.export(db)
    assert isinstance(items, list) and len(items) == 4
    for item in items:
        got = recorded[item["messages"][-1]["content"]]
        assert got["output_tokens_details"] == {"reasoning_tokens": 7}
        assert item["completion"]["usage"] == {
            "prompt_tokens": got["input_tokens"], "completion_tokens": got["output_tokens"],
            "total_tokens": got["total_tokens"], "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 7},
        }
        assert got["output_tokens"] == 7 + len(item["choice"]["message"]["content"].split())
    report = bp.status(db)[0]
    assert report.prompt_tokens == sum(u["input_tokens"] for u in recorded.values())
    assert report.completion_tokens == sum(u["output_tokens"] for u in recorded.values())
    # the answer is kept as the server sent it
    with sqlite3.connect(db) as conn:
        stored = [json.loads(r) for (r,) in conn.execute("SELECT response FROM prompts")]
    assert {r["object"] for r in stored} == {"response"} and all("choices" not in r for r in stored)
    assert [r["type"] for r in stored[0]["output"]] == ["reasoning", "message"]


def test_max_output_tokens_below_the_answer_gives_finish_reason_length(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(reasoning_tokens=5)
    db = tmp_path / "jobs.db"
    bp.create(db, api="responses", model="gpt-4o-mini", templates=["REPLY:{answer}"],
              keywords={"answer": [" " + WORDS, " short one"]}, model_args={"max_output_tokens": 20})
    assert run(db, fake, tmp_path).exit_code == 0
    items = bp.export(db)
    assert isinstance(items, list)
    cut, whole = (item["choice"] for item in items)
    assert cut["finish_reason"] == "length" and whole["finish_reason"] == "stop"
    assert cut["message"]["content"] == " " + " ".join(WORDS.split()[:15])  # 20 tokens, 5 of them reasoning
    assert whole["message"]["content"] == " short one"
    assert [item["completion"]["usage"]["completion_tokens"] for item in items] == [20, 7]


BAD = [
    ("responses", {"max_tokens": 50}, "model_args `max_tokens`: not a responses parameter; use max_output_tokens"),
    ("responses", {"n": 2}, "model_args `n`: not a responses parameter; use repeats"),
    ("responses", {"messages": []}, "model_args `messages`: not a responses parameter"),
    ("responses", {"response_format": {"type": "json_object"}}, "model_args `response_format`: not a responses"),
    ("responses", {"logprobs": True}, "model_args `logprobs`: not a responses parameter"),
    ("responses", {"seed": 1}, "model_args `seed`: not a responses parameter"),
    ("responses", {"max_output_tokens": 8}, "model_args `max_output_tokens` must be an integer >= 16"),
    ("responses", {"reasoning": {"effort": "loud"}}, "model_args `reasoning` must be"),
    ("chat", {"max_output_tokens": 50}, "model_args `max_output_tokens`: not a chat completions parameter; use max_"),
    ("chat", {"reasoning": {"effort": "low"}}, "model_args `reasoning`: not a chat completions parameter"),
    ("chat", {"text": {"format": {"type": "text"}}}, "model_args `text`: not a chat completions parameter"),
    ("chat", {"input": "hi"}, "model_args `input`: not a chat completions parameter"),
    ("respones", {}, "unknown api 'respones': use 'chat', 'completions' or 'responses'"),
]


@pytest.mark.parametrize(("api", "args", "message"), BAD)
def test_an_argument_of_the_other_api_is_one_line_and_writes_nothing(fake: FakeServer, tmp_path: Path, api: str,
                                                                      args: dict[str, Any], message: str) -> None:
    data = {"api": api, "model": "gpt-4o-mini", "templates": ["q {w}"], "keywords": {"w": ["a"]}, "model_args": args}
    path = write_spec(tmp_path, data)
    db = tmp_path / "jobs.db"
    out = run_cli("run", str(path), "--db", str(db), "--yes", "--quiet", env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    assert not db.exists() and fake.record == []


def test_valid_responses_arguments_are_accepted_and_sent() -> None:
    args = {"max_output_tokens": 300, "reasoning": {"effort": "low"}, "store": False, "metadata": {"run": "a"},
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
            "temperature": 0.5, "top_p": 0.9, "service_tier": "flex", "instructions": "Be brief."}
    parsed = bp.Spec.from_dict({"api": "responses", "model": "m", "templates": ["hi"], "model_args": args})
    assert parsed.model_args == args


def test_estimate_prices_max_output_tokens_as_the_worst_case(tmp_path: Path) -> None:
    data = {**spec("responses", 10), "model_args": {"max_output_tokens": 400}}
    got = bp.estimate(data, prices=price_file(tmp_path))
    assert (got.prompts, got.requests, got.max_output_tokens) == (10, 10, 4000)
    chat = bp.estimate({**spec("chat", 10), "model_args": {"max_tokens": 400}}, prices=price_file(tmp_path))
    assert got.input_tokens == chat.input_tokens  # the input counted as chat messages are
    assert got.max_cost_live == pytest.approx((got.input_tokens + 4000) * PRICE / 1e6)
    assert got.max_cost_batch == pytest.approx(got.max_cost_live / 2)  # type: ignore[operator]


def server_cost(fake: FakeServer) -> float:
    """What the fake answered, at PRICE, from the usage it answered with."""
    return sum(e["usage"]["input_tokens"] + e["usage"]["output_tokens"] for e in fake.record
               if e["outcome"] == "ok") * PRICE / 1e6


def test_a_budget_stops_a_responses_job_and_a_resume_sends_only_the_rest(fake: FakeServer, tmp_path: Path) -> None:
    fake.configure(latency=0.02, reasoning_tokens=3)
    db = tmp_path / "jobs.db"
    bp.create(db, **{**spec("responses", 60), "model_args": {"max_output_tokens": 16}})
    summary = run(db, fake, tmp_path, max_cost=0.4, concurrency=8, prices=str(price_file(tmp_path)))
    spent = server_cost(fake)
    assert 0.2 < spent <= 0.4 and summary.exit_code == 1 and summary.budget_reached
    counts = statuses(db)
    assert counts["done"] == len(fake.answered()) and counts["pending"] == 60 - counts["done"]
    assert bp.status(db, prices=price_file(tmp_path))[0].cost == pytest.approx(spent)
    first = len(fake.record)
    summary = run(db, fake, tmp_path, max_cost=10.0, prices=str(price_file(tmp_path)))
    assert summary.exit_code == 0 and statuses(db) == Counter({"done": 60})
    assert len(fake.record) - first == 60 - counts["done"]  # only the rest was sent
    assert set(fake.answered().values()) == {1} and len(fake.answered()) == 60


def test_instructions_are_input_the_budget_and_estimate_count(fake: FakeServer, tmp_path: Path) -> None:
    """`instructions` are billed as input tokens (the fake counts them as a system message): a budget's worst
    case holds them, so a budget that cannot pay for one request sends none (it once sent 3 of them, $0.82
    spent of a $0.40 budget)."""
    instructions = "Answer with care. " * 60  # ~270 input tokens a request
    data = {**spec("responses", 20), "model_args": {"max_output_tokens": 16, "instructions": instructions}}
    plain = bp.estimate({**data, "model_args": {"max_output_tokens": 16}}, prices=price_file(tmp_path))
    got = bp.estimate(data, prices=price_file(tmp_path))
    assert got.input_tokens - plain.input_tokens >= 20 * len(instructions) // 4
    db = tmp_path / "jobs.db"
    bp.create(db, **data)
    summary = run(db, fake, tmp_path, max_cost=0.4, concurrency=2, prices=str(price_file(tmp_path)))
    assert summary.budget_reached and summary.exit_code == 1
    assert fake.record == [] and statuses(db) == Counter({"pending": 20})
    summary = run(db, fake, tmp_path, max_cost=2.0, concurrency=2, prices=str(price_file(tmp_path)))
    assert 0 < len(fake.answered()) < 20 and server_cost(fake) <= 2.0  # ~$0.27 a prompt: some, within it


def test_cached_input_tokens_of_a_responses_batch_are_priced_at_the_cached_batch_rate(
        fake: FakeServer, tmp_path: Path) -> None:
    """`usage.input_tokens_details.cached_tokens` (the fake's `cached_tokens`, as for chat) are priced at the
    cached rate, scaled to the batch price; reasoning tokens reach status."""
    fake.configure(**FAST, reasoning_tokens=5, cached_tokens=2)
    prices = tmp_path / "cached.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 1000.0, "output": 2000.0, "cached_input": 100.0,
                                                  "batch_input": 500.0, "batch_output": 1000.0}}))
    db = tmp_path / "jobs.db"
    bp.create(db, **{**spec("responses", 6), "templates": ["a longer question about {w} and more"]})
    assert run(db, fake, tmp_path, mode="batch").exit_code == 0
    usages = [item["completion"]["usage"] for item in bp.export(db)]  # type: ignore[union-attr]
    assert [u["prompt_tokens_details"] for u in usages] == [{"cached_tokens": 2}] * 6
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    report = bp.status(db, prices=prices)[0]
    assert (report.cached_tokens, report.reasoning_tokens) == (12, 30)
    assert report.cost == pytest.approx(((prompt - 12) * 500 + 12 * 50 + completion * 1000) / 1e6)


def test_the_fake_answers_and_refuses_as_the_responses_api_documents(fake: FakeServer) -> None:
    client = openai.OpenAI(base_url=fake.url, api_key="sk-test", max_retries=0)
    got = client.responses.create(model="gpt-4o-mini", input="hello there", max_output_tokens=16)
    assert isinstance(got, openai.types.responses.Response)  # the SDK's own type reads it
    assert (got.status, got.output_text) == ("completed", "echo 0: hello there")
    assert got.usage is not None and (got.usage.input_tokens, got.usage.output_tokens) == (len("hello there") // 4, 4)
    low = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 8}
    refused = [
        ({"model": "gpt-4o-mini"}, "input", "missing_required_parameter"),
        ({"input": "hi"}, "model", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "input": "hi", "max_tokens": 5}, "max_tokens", "unknown_parameter"),
        ({"model": "gpt-4o-mini", "input": "hi", "n": 2}, "n", "unknown_parameter"),
        (low, "max_output_tokens", "integer_below_min_value"),
        ({"model": "gpt-4o-mini", "input": [{"content": "hi"}]}, "input[0]", "invalid_value"),
        ({"model": "gpt-4o-mini", "input": "hi FAIL400"}, "messages", "invalid_prompt"),
    ]
    for body, param, code in refused:
        with pytest.raises(openai.BadRequestError) as caught:
            client.post("/responses", body=body, cast_to=object)
        assert (caught.value.body["param"], caught.value.body["code"]) == (param, code), body  # type: ignore[index]
    assert [e["outcome"] for e in fake.record] == ["ok"] + ["invalid"] * 6 + ["error_400"]
    assert {e["path"] for e in fake.record} == {"/v1/responses"}


def test_the_mapping_reads_every_status() -> None:
    base = {"object": "response", "id": "resp_1", "created_at": 1.5, "model": "m", "service_tier": "flex",
            "output": [{"type": "reasoning", "summary": []},
                       {"type": "message", "role": "assistant", "content": [
                           {"type": "output_text", "text": "a"}, {"type": "output_text", "text": "b"}]}]}
    chat = as_chat({**base, "status": "completed"})
    assert chat == {"id": "resp_1", "created": 1, "model": "m", "service_tier": "flex", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ab"}, "finish_reason": "stop", "logprobs": None}]}
    filtered = as_chat({**base, "status": "incomplete", "incomplete_details": {"reason": "content_filter"}})
    assert filtered["choices"][0]["finish_reason"] == "content_filter"
    assert as_chat({**base, "status": "failed"})["choices"] == []  # no answer: asked again
    refusal = {**base, "status": "completed", "output": [{"type": "message", "content": [
        {"type": "refusal", "refusal": "I can't"}]}]}
    assert as_chat(refusal)["choices"][0]["message"] == {"role": "assistant", "content": "", "refusal": "I can't"}
    chat_answer = {"id": "chatcmpl-1", "choices": []}
    assert as_chat(chat_answer) is chat_answer


def test_a_budget_s_reservations_released_leave_nothing_held() -> None:
    """Float costs added and taken away again leave ~1e-17 behind; a budget that counted it as a request in
    flight would wait for it to settle for ever (a responses job with a budget hung so)."""
    from batch_prompt.reports.prices import Prices
    from batch_prompt.run.budget import Budget

    budget = Budget(None, 1.0, Prices({}), 0.0, lambda: 0.0)  # type: ignore[arg-type]
    budget.reserved = 0.1 + 0.2
    budget.release(0.1)
    budget.release(0.2)
    assert budget.reserved == 0.0
