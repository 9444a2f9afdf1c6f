"""Export formats (pickle, JSONL, CSV, Parquet, SQLite), `--job`, `load_results` and `to_dataframe`."""

from __future__ import annotations

import csv
import json
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch_prompt as bp
from batch_prompt.results.table import INDEX_COLUMNS
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.store.database import Outcome, Store
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, run_cli

TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
HEADER = ["job", "prompt_hash", "model", "template_index", "keywords_index", "model_index", "sample_index",
          "choice_index", "count", "food", "kw_text", "template", "prompt", "last_user_message", "text",
          "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens", "reasoning_tokens", "response_id",
          "request_prompt_tokens", "request_completion_tokens", "request_total_tokens", "prompt_tokens_share",
          "completion_tokens_share", "total_tokens_share", "system_fingerprint", "response_model", "created",
          "service_tier"]


@pytest.fixture(scope="module")
def done_db(tmp_path_factory: pytest.TempPathFactory, fake_session: FakeServer) -> Path:
    """Three jobs: `food` (chat, 8 of 12 done, 4 rejected), `legacy` (completions, a keyword named like a
    column), `later` (recorded, not run: 3 pending)."""
    tmp = tmp_path_factory.mktemp("formats")
    db = tmp / "jobs.db"
    options = dict(base_url=fake_session.url, api_key=API_KEY, cache_dir=str(tmp / "cache"), quiet=True,
                   retry=RetryPolicy.no_wait(3))
    bp.create(db, name="food", api="chat", model="gpt-4o-mini", templates=["I like {food}", "I hate {food}"],
              keywords={"food": ["pizza", "apples", "FAIL400"], "count": [1, 2]},
              model_args={"n": 2, "max_tokens": 5}).run(**options)
    bp.create(db, name="legacy", api="completions", model="davinci-002", templates=["Say {text}"],
              keywords=[{"text": "x"}, {"text": "y"}]).run(**options)
    bp.create(db, name="later", model="gpt-4o-mini", templates=["{w}"], keywords={"w": ["a", "b", "c"]})
    return db


def expected_rows(db: Path) -> list[dict[str, Any]]:
    """The flat rows, built here from the result items and the job table's own index columns."""
    conn = sqlite3.connect(db)
    done = iter(conn.execute("SELECT hash, template_index, keywords_index, model_index, sample_index FROM prompts"
                             " WHERE status = 'done' ORDER BY job_id, id").fetchall())
    rows = []
    for item in bp.export(db):  # type: ignore[union-attr]
        chat = "messages" in item
        args = item["messages_args"] if chat else item["prompt_args"]
        usage = item["completion"]["usage"]
        if item["choice"]["index"] == 0:  # a prompt's first choice: the next done row
            hash_, t, k, m, s = next(done)
            assert hash_ == item["prompt_hash"]
        rows.append({
            "job": item["job"], "prompt_hash": item["prompt_hash"], "model": item["model"], "template_index": t,
            "keywords_index": k, "model_index": m, "sample_index": s, "choice_index": item["choice"]["index"],
            "food": args.get("food"), "count": args.get("count"), "kw_text": args.get("text"),
            "template": "user: " + item["messages_raw"][0]["content"] if chat else item["prompt_raw"],
            "prompt": "user: " + item["messages"][0]["content"] if chat else item["prompt"],
            "last_user_message": item["messages"][-1]["content"] if chat else None,
            "text": item["choice"]["message"]["content"] if chat else item["choice"]["text"],
            "finish_reason": "stop", "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"], "total_tokens": usage["total_tokens"],
            "reasoning_tokens": None, "response_id": item["completion"]["id"],
            **{f"request_{k}": usage[k] if item["choice"]["index"] == 0 else None for k in TOKENS},
            **{f"{k}_share": usage[k] / (2 if chat else 1) for k in TOKENS},
            "system_fingerprint": "fp_fake", "response_model": item["model"],
            "created": item["completion"]["created"], "service_tier": "default" if chat else None,
        })
        assert (t, k, m, s) == tuple(item[name] for name in INDEX_COLUMNS)  # the items hold the row indexes
    return rows


def test_csv_one_row_per_choice_with_keyword_columns(done_db: Path, tmp_path: Path) -> None:
    out = run_cli("export", str(done_db), "-o", str(tmp_path / "r.csv"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"18 results written to {tmp_path / 'r.csv'}; 4 failed and 3 pending prompts not exported\n"
    with open(tmp_path / "r.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        rows = list(reader)
    expected = [{k: "" if v is None else str(v) for k, v in row.items()} for row in expected_rows(done_db)]
    assert rows == expected and len(rows) == 18
    assert rows[0] == {**rows[0], "job": "food", "food": "pizza", "count": "1", "template_index": "0",
                       "keywords_index": "0", "choice_index": "0", "prompt": "user: I like pizza",
                       "last_user_message": "I like pizza", "text": "echo 0: I like pizza"}
    legacy = [r for r in rows if r["job"] == "legacy"]
    assert [(r["kw_text"], r["prompt"], r["text"], r["keywords_index"]) for r in legacy] == [
        ("x", "Say x", "echo 0: Say x", "0"), ("y", "Say y", "echo 0: Say y", "1")]


def test_parquet_and_sqlite_round_trip(done_db: Path, tmp_path: Path) -> None:
    expected = expected_rows(done_db)
    summary = bp.export(done_db, tmp_path / "r.parquet")
    assert summary == bp.ExportSummary(str(tmp_path / "r.parquet"), "parquet", 18, 4, 3, 0)
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column_names == HEADER
    assert table.schema.field("count").type == pa.int64() and table.schema.field("food").type == pa.string()
    assert table.to_pylist() == bp.load_results(tmp_path / "r.parquet") == expected

    assert bp.export(done_db, tmp_path / "r.db").results == 18  # type: ignore[union-attr]
    conn = sqlite3.connect(tmp_path / "r.db")
    assert [c[1] for c in conn.execute("PRAGMA table_info(results)")] == HEADER
    assert dict((c[1], c[2]) for c in conn.execute("PRAGMA table_info(results)"))["count"] == "INTEGER"
    assert conn.execute("SELECT food, count(*) FROM results WHERE job = 'food' GROUP BY food").fetchall() == [
        ("apples", 8), ("pizza", 8)]
    conn.close()
    assert bp.load_results(tmp_path / "r.db") == expected
    # a results database is an export: exported again, it is replaced; the job database never is
    assert bp.export(done_db, tmp_path / "r.db", job="legacy").results == 2  # type: ignore[union-attr]
    assert len(bp.load_results(tmp_path / "r.db")) == 2
    refused = run_cli("export", str(done_db), "-o", str(done_db), "--format", "sqlite", cwd=tmp_path)
    assert refused.returncode == 2 and "refusing to overwrite a database" in refused.stderr


def test_format_from_suffix_and_job_filter(done_db: Path, tmp_path: Path) -> None:
    for name, fmt in [("a.pickle", "pickle"), ("a.txt", "pickle"), ("a.jsonl", "jsonl"), ("a.sqlite", "sqlite"),
                      ("a.CSV", "csv")]:
        assert bp.export(done_db, tmp_path / name).format == fmt  # type: ignore[union-attr]
    assert pickle.loads((tmp_path / "a.txt").read_bytes()) == bp.export(done_db)
    assert (tmp_path / "a.CSV").read_text().startswith("job,prompt_hash,")
    assert bp.export(done_db, tmp_path / "b.jsonl", format="csv").format == "csv"  # type: ignore[union-attr]
    out = run_cli("export", str(done_db), "-o", str(tmp_path / "l.jsonl"), "--job", "legacy", cwd=tmp_path)
    assert out.stdout == f"2 results written to {tmp_path / 'l.jsonl'}\n"
    items = bp.load_results(tmp_path / "l.jsonl")
    assert [i["prompt"] for i in items] == ["Say x", "Say y"] and {i["job"] for i in items} == {"legacy"}
    assert bp.export(done_db, job="food") == [i for i in bp.export(done_db) if i["job"] == "food"]  # type: ignore
    missing = run_cli("export", str(done_db), "-o", str(tmp_path / "n.csv"), "--job", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no job named 'nope'" in missing.stderr
    assert not (tmp_path / "n.csv").exists()


def test_to_dataframe_groups_by_keyword(done_db: Path, tmp_path: Path) -> None:
    results = bp.export(done_db, job="food")
    assert isinstance(results, list)
    df = bp.to_dataframe(results)
    assert df.groupby("food").size().to_dict() == {"apples": 8, "pizza": 8}
    assert df.groupby(["food", "count"])["text"].count().to_dict() == {
        ("apples", 1): 4, ("apples", 2): 4, ("pizza", 1): 4, ("pizza", 2): 4}
    assert df.groupby("template_index").size().to_dict() == {0: 8, 1: 8}  # the items hold the row indexes
    full = bp.to_dataframe(done_db)  # the job database: every column
    assert list(full.columns) == HEADER and len(full) == 18
    assert full.groupby("template_index").size().to_dict() == {0: 10, 1: 8}
    bp.export(done_db, tmp_path / "r.parquet")
    assert bp.to_dataframe(tmp_path / "r.parquet").equals(bp.to_dataframe(bp.load_results(tmp_path / "r.parquet")))


def test_first_token_and_its_top_logprobs(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, name="lp", model="gpt-4o-mini", templates=["{w}"], keywords={"w": ["yes?", "no?"]},
              model_args={"logprobs": True, "top_logprobs": 2, "max_tokens": 1})
    bp.create(db, name="lpc", api="completions", model="davinci-002", templates=["{w}"], keywords={"w": ["q"]},
              model_args={"logprobs": 2, "max_tokens": 1})
    with Store(db) as store:
        for job in store.jobs():
            rows = store.claim(job, job.spec["models"][0], "test:1:x", 10, 60)
            outcomes = []
            for row in rows:
                if job.api == "chat":
                    choice = {"index": 0, "message": {"role": "assistant", "content": "Yes"}, "finish_reason": "length",
                              "logprobs": {"content": [{"token": "Yes", "logprob": -0.1, "bytes": [89, 101, 115],
                                                        "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                                         {"token": "No", "logprob": -2.4}]}]}}
                else:
                    choice = {"index": 0, "text": " A", "finish_reason": "length",
                              "logprobs": {"tokens": [" A"], "token_logprobs": [-0.5],
                                           "top_logprobs": [{" A": -0.5, " B": -1.5}], "text_offset": [1]}}
                response = {"id": f"r{row.id}", "model": row.model, "choices": [choice],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                outcomes.append(Outcome(row.id, row.job_id, "done", json.dumps(response), False, 1, 1, 1))
            store.record(outcomes, "test:1:x")
    df = bp.to_dataframe(bp.export(db))  # type: ignore[arg-type]
    assert df[["first_token", "first_token_logprob"]].values.tolist() == [["Yes", -0.1], ["Yes", -0.1], [" A", -0.5]]
    assert df["first_token_top_logprobs"].tolist() == [{"Yes": -0.1, "No": -2.4}] * 2 + [{" A": -0.5, " B": -1.5}]
    bp.export(db, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["first_token"], r["first_token_logprob"], json.loads(r["first_token_top_logprobs"])) for r in rows] == [
        ("Yes", "-0.1", {"Yes": -0.1, "No": -2.4}), ("Yes", "-0.1", {"Yes": -0.1, "No": -2.4}),
        (" A", "-0.5", {" A": -0.5, " B": -1.5})]


def test_parquet_without_pyarrow_names_the_extra(done_db: Path, tmp_path: Path) -> None:
    code = """
import sys
class NoPyarrow:
    def find_spec(self, name, path=None, target=None):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, NoPyarrow())
from batch_prompt.cli import main
sys.exit(main(sys.argv[1:]))
"""
    out = subprocess.run([sys.executable, "-c", code, "export", str(done_db), "-o", str(tmp_path / "r.parquet")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr == ("batch-prompt: error: export --format parquet needs pyarrow: pip install "
                          "'batch-prompt[parquet]' (in a checkout: pip install '.[parquet]')\n")
    assert list(tmp_path.iterdir()) == []
