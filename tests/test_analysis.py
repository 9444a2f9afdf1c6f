"""Answers as data: `parse` (typed `parsed_<field>` columns in every format), `--include failed,pending`,
the columns that say what answered, tokens that add up, the export's manifest, and one type per column
whatever the format an export is read back from."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.store.database import Store
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, run_cli

FORMATS = {"pickle": "r.pkl", "jsonl": "r.jsonl", "csv": "r.csv", "parquet": "r.parquet", "sqlite": "r.db"}
COIN = r"Answer: (?P<coin>[HT]), count (?P<count>\d+)"


def options(fake: FakeServer, tmp: Path) -> dict[str, Any]:
    return dict(base_url=fake.url, api_key=API_KEY, cache_dir=str(tmp / "cache"), quiet=True,
                retry=RetryPolicy.no_wait(2))


def frames(db: Path, tmp: Path, **kw: Any) -> dict[str, pd.DataFrame]:
    """Every format exported, read back with `load_results` and made a DataFrame."""
    out = {}
    for fmt, name in FORMATS.items():
        bp.export(db, tmp / name, **kw)
        out[fmt] = bp.to_dataframe(bp.load_results(tmp / name))
    return out


def values(df: pd.DataFrame, column: str) -> list[Any]:
    """A column's values as Python values, NaN and None as None."""
    return [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
            for v in df[column].tolist()]


@pytest.fixture
def coin_db(fake: FakeServer, tmp_path: Path) -> Path:
    """A chat job whose answers are `Answer: H, count 3` ... and `Answer: ?, count 12` (no match), n=2."""
    db = tmp_path / "jobs.db"
    bp.create(db, name="coin", model="gpt-4o-mini", templates=["Flip. REPLY:Answer: {coin}, count {count}"],
              keywords={"coin": ["H", "T", "?"], "count": [3, 12]}, model_args={"n": 2},
              parse={"regex": COIN}).run(**options(fake, tmp_path))
    return db


def test_a_regex_parse_gives_typed_columns_and_parse_ok_in_every_format(coin_db: Path, tmp_path: Path) -> None:
    items = bp.export(coin_db)
    assert isinstance(items, list) and len(items) == 12
    assert items[0]["parsed"] == {"coin": "H", "count": 3} and items[0]["parse_error"] is None
    assert items[-1]["parsed"] is None
    assert items[-1]["parse_error"] == f"no match for regex {COIN!r}"
    expected_coin = [c for c in ("H", "T", None) for _ in range(4)]
    expected_count = [None if c is None else n for c in ("H", "T", None) for n in (3, 3, 12, 12)]
    for fmt, df in frames(coin_db, tmp_path).items():
        assert values(df, "parsed_coin") == expected_coin, fmt
        assert values(df, "parsed_count") == expected_count, fmt
        assert df["parse_ok"].tolist() == [True] * 8 + [False] * 4, fmt
        assert values(df, "parse_error") == [None] * 8 + [f"no match for regex {COIN!r}"] * 4, fmt
    assert {type(v) for v in bp.load_results(tmp_path / "r.csv")[0].values() if v is not None} <= {
        str, int, float, bool}
    rows = bp.load_results(tmp_path / "r.parquet")
    assert [(r["parsed_count"], r["parse_ok"]) for r in rows[::4]] == [(3, True), (3, True), (None, False)]
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert (str(schema.field("parsed_count").type), str(schema.field("parse_ok").type)) == ("int64", "bool")
    conn = sqlite3.connect(tmp_path / "r.db")
    types = {c[1]: c[2] for c in conn.execute("PRAGMA table_info(results)")}
    assert (types["parsed_count"], types["parsed_coin"]) == ("INTEGER", "TEXT")
    conn.close()


SCHEMA = {"type": "object", "required": ["answer"], "properties": {
    "answer": {"type": "string"}, "confidence": {"type": "number"}, "n": {"type": "integer"}}}
PAYLOADS = ['{"answer": "H", "confidence": 1, "n": 2}', '```json\n{"answer": "T", "confidence": 0.25, "n": 5}\n```',
            "not json at all", '{"confidence": 0.5}', '["H"]', '{"answer": "H", "n": "two"}']


def test_a_json_schema_parse_takes_its_fields_and_types_from_the_schema(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, name="js", model="gpt-4o-mini", templates=["REPLY:{payload}"], keywords={"payload": PAYLOADS},
              model_args={"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}},
              parse={"json": True}).run(**options(fake, tmp_path))
    errors = [None, None, "not JSON: Expecting value: line 1 column 1 (char 0)",
              "field 'answer' is required by the schema, missing", "not a JSON object: list",
              "field 'n' is not int: \"two\""]
    for fmt, df in frames(db, tmp_path).items():
        assert list(df.columns[-5:]) == ["parsed_answer", "parsed_confidence", "parsed_n", "parse_ok", "parse_error"]
        assert values(df, "parsed_answer") == ["H", "T", None, None, None, None], fmt
        assert values(df, "parsed_confidence") == [1.0, 0.25, None, None, None, None], fmt
        assert values(df, "parsed_n") == [2, 5, None, None, None, None], fmt
        assert values(df, "parse_error") == errors, fmt
        assert df["parse_ok"].tolist() == [True, True, False, False, False, False], fmt
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert [str(schema.field(f"parsed_{f}").type) for f in ("answer", "confidence", "n")] == [
        "string", "double", "int64"]
    items = bp.export(db)
    assert isinstance(items, list)
    assert [i["parsed"] for i in items[:2]] == [{"answer": "H", "confidence": 1.0, "n": 2},
                                                {"answer": "T", "confidence": 0.25, "n": 5}]


def test_a_json_parse_without_a_schema_takes_the_keys_it_finds(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, name="j", api="completions", model="davinci-002", templates=["REPLY:{p}"],
              keywords={"p": ['{"a": 1}', '{"a": 2.5, "b": "x"}', '{"b": [1, 2]}']},
              parse={"json": True}).run(**options(fake, tmp_path))
    for fmt, df in frames(db, tmp_path).items():
        assert values(df, "parsed_a") == [1.0, 2.5, None], fmt
        assert values(df, "parsed_b") == [None, "x", [1, 2]], fmt  # text and a list: a `json` column
        assert df["parse_ok"].tolist() == [True, True, True], fmt


def test_a_new_parse_reparses_at_export_without_a_call(fake: FakeServer, tmp_path: Path) -> None:
    spec = {"name": "coin", "model": "gpt-4o-mini", "templates": ["REPLY:Answer: {coin}, count {count}"],
            "keywords": {"coin": ["H", "T"], "count": [7]}, "parse": {"regex": COIN}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": fake.url}
    assert run_cli("run", "spec.json", "--db", "jobs.db", env=env, cwd=tmp_path).returncode == 0
    asked = len(fake.record)
    assert asked == 2
    bp.export(tmp_path / "jobs.db", tmp_path / "a.csv")
    assert values(bp.to_dataframe(tmp_path / "a.csv"), "parsed_count") == [7, 7]
    spec["parse"] = {"regex": r"count (\d+)"}  # one unnamed group: the field `answer`
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    again = run_cli("run", "spec.json", "--db", "jobs.db", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    bp.export(tmp_path / "jobs.db", tmp_path / "b.csv")
    df = bp.to_dataframe(tmp_path / "b.csv")
    assert "parsed_coin" not in df.columns and values(df, "parsed_answer") == [7, 7]
    bp.create(tmp_path / "jobs.db", **{**spec, "parse": {"regex": "(?P<letter>[HT]),"}})  # no conflict: not identity
    assert values(bp.to_dataframe(tmp_path / "jobs.db"), "parsed_letter") == ["H", "T"]
    assert len(fake.record) == asked  # not one call more


@pytest.mark.parametrize(("parse", "message"), [
    ({"regex": "("}, "spec field 'parse': regex '(' is not valid: missing ), unterminated subpattern at position 0"),
    ({"regex": "(a)(b)"}, "spec field 'parse': regex '(a)(b)' has 2 groups and no names"),
    ({"xml": True}, 'spec field \'parse\' must be {"regex": "PATTERN"} or {"json": true}'),
    ({"json": False}, 'spec field \'parse\': {"json": true} is the only JSON form'),
])
def test_a_bad_parse_is_exit_2_and_records_nothing(tmp_path: Path, parse: Any, message: str) -> None:
    spec = {"model": "m", "templates": ["hi"], "parse": parse}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = run_cli("create", "spec.json", "--db", "jobs.db", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "jobs.db").exists()


def test_status_counts_unparsed_answers_and_show_lists_them(coin_db: Path, tmp_path: Path) -> None:
    [job] = bp.status(coin_db)
    assert job.unparsed == 4 and job.to_dict()["unparsed"] == 4
    out = run_cli("status", str(coin_db), cwd=tmp_path)
    assert "  4 answers of done prompts do not parse (show --unparsed lists them)\n" in out.stdout
    views = bp.show(coin_db, unparsed=True)
    assert [v.keywords["coin"] for v in views] == ["?", "?"]
    assert [v.parse_errors for v in views] == [(f"no match for regex {COIN!r}",) * 2] * 2
    shown = run_cli("show", str(coin_db), "--unparsed", cwd=tmp_path)
    assert shown.stdout.count("does not parse (choice 0): no match for regex") == 2
    assert shown.stdout.count(" (+1 more)") == 2
    assert run_cli("show", str(coin_db), "--unparsed", "--limit", "1", cwd=tmp_path).stdout.count("coin #") == 1
    assert bp.show(coin_db, status="done", limit=1)[0].parse_errors == (None, None)
    bp.create(coin_db, name="plain", model="gpt-4o-mini", templates=["hi"])
    assert [(s.job, s.unparsed, "unparsed" in s.to_dict()) for s in bp.status(coin_db)] == [
        ("coin", 4, True), ("plain", None, False)]


@pytest.fixture
def mixed_db(fake: FakeServer, tmp_path: Path) -> Path:
    """`food`: 6 prompts, 2 rejected (FAIL400), n=2; `later`: 3 prompts, never run."""
    db = tmp_path / "jobs.db"
    bp.create(db, name="food", model="gpt-4o-mini", templates=["I like {food}", "I hate {food}"],
              keywords={"food": ["pizza", "FAIL400", "apples"]}, model_args={"n": 2}).run(**options(fake, tmp_path))
    bp.create(db, name="later", model="gpt-4o-mini", templates=["{w}"], keywords={"w": ["a", "b", "c"]})
    return db


def test_include_failed_and_pending_gives_every_prompt_a_row(mixed_db: Path, tmp_path: Path) -> None:
    out = run_cli("export", str(mixed_db), "-o", str(tmp_path / "all.csv"), "--include", "failed,pending",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"13 results written to {tmp_path / 'all.csv'} (with 2 failed and 3 pending prompts)\n"
    df = bp.to_dataframe(tmp_path / "all.csv")
    assert list(df.columns[-3:]) == ["status", "error_kind", "error"]
    assert df["status"].tolist() == ["done"] * 2 + ["failed"] + ["done"] * 4 + ["failed"] + ["done"] * 2 + [
        "pending"] * 3
    failed = df[df.status == "failed"]
    assert failed["food"].tolist() == ["FAIL400", "FAIL400"]
    assert set(failed["error_kind"]) == {"BadRequestError 400"}
    assert all("Invalid prompt: contains FAIL400" in e for e in failed["error"])
    assert values(failed, "text") == [None, None] and values(failed, "choice_index") == [None, None]
    pending = df[df.status == "pending"]
    assert pending["job"].tolist() == ["later"] * 3 and pending["prompt"].tolist() == ["user: a", "user: b", "user: c"]
    assert values(df[df.status == "done"], "error") == [None] * 8
    only_failed = bp.export(mixed_db, tmp_path / "f.parquet", include="failed")
    assert only_failed == bp.ExportSummary(str(tmp_path / "f.parquet"), "parquet", 10, 2, 3, 0, ("failed",))
    items = bp.export(mixed_db, include=["failed", "pending"])
    assert isinstance(items, list) and len(items) == 13
    bare = [i for i in items if i["status"] != "done"]
    assert [(i["status"], "choice" in i, "completion" in i) for i in bare] == [("failed", False, False)] * 2 + [
        ("pending", False, False)] * 3
    assert bare[0]["messages_args"] == {"food": "FAIL400"} and "FAIL400" in bare[0]["error"]
    assert [i["status"] for i in items if "choice" in i] == ["done"] * 8
    default = bp.export(mixed_db)
    assert isinstance(default, list) and len(default) == 8 and all("status" not in i for i in default)
    bad = run_cli("export", str(mixed_db), "-o", str(tmp_path / "x.csv"), "--include", "failed,done", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown include 'done'" in bad.stderr
    assert not (tmp_path / "x.csv").exists()


def test_what_answered_and_tokens_that_add_up(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    start = int(datetime.now(UTC).timestamp())
    bp.create(db, name="t", model="gpt-4o-mini", templates=["Tell me about {x}"], keywords={"x": ["a", "bb", "ccc"]},
              model_args={"n": 3}, repeats=2).run(**options(fake, tmp_path))
    usage = [e["usage"] for e in fake.record if e.get("usage")]
    assert len(usage) == 6
    df = bp.to_dataframe(db)
    for kind in ("prompt_tokens", "completion_tokens", "total_tokens"):
        paid = sum(u[kind] for u in usage)
        assert df[f"request_{kind}"].sum() == paid
        assert df[f"{kind}_share"].sum() == pytest.approx(paid)
        assert df[kind].sum() == 3 * paid  # the response's usage, on each of its three choices
    assert df["request_prompt_tokens"].notna().tolist() == [True, False, False] * 6
    assert set(df["system_fingerprint"]) == {"fp_fake"} and set(df["response_model"]) == {"gpt-4o-mini"}
    assert set(df["service_tier"]) == {"default"}
    assert all(start - 1 <= c <= start + 60 for c in df["created"])


def test_parquet_and_sqlite_exports_carry_a_manifest(coin_db: Path, tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    bp.export(coin_db, tmp_path / "r.parquet")
    bp.export(coin_db, tmp_path / "r.db")
    with Store(coin_db, create=False) as store:
        specs = [{"name": job.name, "spec": job.spec} for job in store.jobs()]
    manifest = json.loads(pq.read_schema(tmp_path / "r.parquet").metadata[b"batch_prompt"])
    conn = sqlite3.connect(tmp_path / "r.db")
    table = {key: json.loads(value) for key, value in conn.execute("SELECT key, value FROM manifest")}
    conn.close()
    for found in (manifest, table):
        assert set(found) == {"package_version", "exported_at", "jobs", "columns"}
        assert found["package_version"] == bp.__version__ and found["jobs"] == specs
        assert found["jobs"][0]["spec"]["parse"] == {"regex": COIN}
        assert before <= datetime.fromisoformat(found["exported_at"]) <= datetime.now(UTC)
        assert found["columns"]["parsed_count"] == "int" and found["columns"]["parse_ok"] == "bool"


def test_every_format_reads_back_with_one_type_per_column(fake: FakeServer, tmp_path: Path) -> None:
    """The column-type table: each column's Python types, from the job database and from each format."""
    db = tmp_path / "jobs.db"
    fake.configure(top_logprobs={"H": -0.3, "T": -1.5})
    bp.create(db, name="lp", model="gpt-4o-mini", templates=["{w} REPLY:Answer: H, count 2"],
              keywords=[{"w": "a", "tags": [1, 2]}, {"w": "b", "tags": {"k": 1}}],
              model_args={"logprobs": True, "top_logprobs": 2, "n": 2, "seed": 5},
              parse={"regex": COIN}).run(**options(fake, tmp_path))
    bp.create(db, name="c", api="completions", model="davinci-002", templates=["Say {w}"],
              keywords=[{"w": "x", "tags": [3]}], model_args={"logprobs": 1}).run(**options(fake, tmp_path))

    def table(df: pd.DataFrame) -> dict[str, set[str]]:
        return {c: {type(v).__name__ for v in values(df, c) if v is not None} for c in df.columns}

    reference = bp.to_dataframe(db)
    expected = table(reference)
    assert expected["first_token_top_logprobs"] == {"dict"} and expected["tags"] == {"list", "dict"}
    for name in ("template_index", "keywords_index", "model_index", "sample_index", "seed", "parsed_count"):
        assert expected[name] == {"int"}, name
    assert reference["first_token_top_logprobs"].tolist()[0] == {"H": -0.3, "T": -1.5}
    for fmt, df in frames(db, tmp_path).items():
        assert list(df.columns) == list(reference.columns), fmt
        assert table(df) == expected, fmt
        for column in df.columns:
            assert values(df, column) == values(reference, column), (fmt, column)


def test_a_prompt_a_dead_run_left_running_is_exported_as_pending(mixed_db: Path, tmp_path: Path) -> None:
    with Store(mixed_db) as store:
        later = store.job("later")
        assert later is not None
        assert len(store.claim(later, "gpt-4o-mini", "host:999999:gone", 2, 60)) == 2  # a run that died holding 2
    items = bp.export(mixed_db, job="later", include="pending")
    assert isinstance(items, list) and [i["status"] for i in items] == ["pending"] * 3
    assert bp.export(mixed_db, job="later") == []

