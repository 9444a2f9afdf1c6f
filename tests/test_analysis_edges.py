"""Answers as data at the edges: every format read back gives the DataFrame the job database gives (the
same columns in the same order, the same values, the same dtypes), whatever the answers and fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

import batch_prompt as bp
from batch_prompt.store.database import Outcome, Store
from batch_prompt.testing import FakeServer

from .test_analysis import frames, options, values


def differences(db: Path, tmp: Path, **kw: Any) -> list[tuple[Any, ...]]:
    """Where a format's frame differs from the job database's (or, with `include`, from the pickle's)."""
    found = frames(db, tmp, **kw)
    reference = found["pickle"] if kw else bp.to_dataframe(db)
    out: list[tuple[Any, ...]] = []
    for fmt, df in found.items():
        if list(df.columns) != list(reference.columns):
            out.append((fmt, list(df.columns), list(reference.columns)))
            continue
        for column in df.columns:
            if values(df, column) != values(reference, column) or df[column].dtype != reference[column].dtype:
                out.append((fmt, column, values(df, column), str(df[column].dtype), values(reference, column),
                            str(reference[column].dtype)))
    return out


def run(db: Path, fake: FakeServer, tmp: Path, keywords: Any, parse: Any, **spec: Any) -> pd.DataFrame:
    bp.create(db, name=spec.pop("name", "e"), model="gpt-4o-mini", templates=[spec.pop("template", "REPLY:{p}")],
              keywords=keywords, parse=parse, **spec).run(**options(fake, tmp))
    return bp.to_dataframe(db)


def test_a_group_that_matches_nothing_is_none_and_the_column_keeps_its_type(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    df = run(db, fake, tmp_path, {"p": ["3 apples", "none", "12 pears"]}, {"regex": r"(?P<count>\d*)"})
    assert values(df, "parsed_count") == [3, None, 12] and str(df["parsed_count"].dtype) == "Int64"
    assert df["parse_ok"].tolist() == [True, True, True]
    assert differences(db, tmp_path) == []


def test_an_integer_beyond_64_bits_is_a_number_in_every_format(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    df = run(db, fake, tmp_path, {"p": ["n=123456789012345678901234567890", "n=5"]}, {"regex": r"(?P<d>\d+)"})
    assert values(df, "parsed_d") == [1.2345678901234568e29, 5.0]
    assert differences(db, tmp_path) == []


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": ["integer", "null"]}}}


def test_a_schemas_properties_are_the_fields_in_its_order(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}
    df = run(db, fake, tmp_path, {"p": ['{"n": 2, "answer": "H", "extra": {"a": 1}}', '{"answer": "T", "n": null}',
                                        "nope"]}, {"json": True}, model_args={"response_format": fmt})
    items = bp.export(db)
    assert isinstance(items, list)
    assert [i["parsed"] for i in items] == [{"answer": "H", "n": 2}, {"answer": "T", "n": None}, None]
    assert [c for c in df.columns if c.startswith("parse")] == ["parsed_answer", "parsed_n", "parse_ok", "parse_error"]
    assert differences(db, tmp_path) == []


def test_json_keys_are_columns_in_the_order_they_first_appear(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    df = run(db, fake, tmp_path, {"p": ['{"b": null, "a": {"x": [1, null]}}', '{"a": null, "b": 1, "c": true}',
                                        '```\n{"c": false}\n```']}, {"json": True})
    assert [c for c in df.columns if c.startswith("parsed_")] == ["parsed_b", "parsed_a", "parsed_c"]
    assert differences(db, tmp_path) == []


def test_a_keyword_field_of_numbers_and_text_reads_back_from_csv(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    df = run(db, fake, tmp_path, {"p": ["7", "x"], "q": [1, "s", [2]]}, {"regex": r"(\d)"}, template="REPLY:{p} {q}")
    assert values(df, "q") == [1, "s", [2]] * 2
    assert differences(db, tmp_path) == []


def test_a_parse_job_whose_prompts_all_failed_has_its_parsed_columns_in_every_format(
        fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    run(db, fake, tmp_path, {"p": ["FAIL400"]}, {"regex": r"(\d)"})
    items = bp.export(db, include="failed")
    assert isinstance(items, list) and [(i["status"], i["parsed"], i["parse_error"]) for i in items] == [
        ("failed", None, None)]
    for fmt, df in frames(db, tmp_path, include="failed").items():
        # a results list names the fields its answers have: none here
        assert values(df, "parse_ok") == [None] and values(df, "status") == ["failed"], fmt
        if fmt not in ("pickle", "jsonl"):
            assert values(df, "parsed_answer") == [None], fmt


def test_jobs_with_and_without_parse_and_every_prompt(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    run(db, fake, tmp_path, {"p": ["7", "x"]}, {"regex": r"(\d)"}, name="a", model_args={"n": 2})
    run(db, fake, tmp_path, {"p": ["7", "FAIL400"]}, {"regex": r"(?P<answer>\w)(?P<z>q)?"}, name="b")
    run(db, fake, tmp_path, {"p": ["x"]}, None, name="c")
    bp.create(db, name="d", model="gpt-4o-mini", templates=["REPLY:{p}"], keywords={"p": ["x", "y"]})
    assert differences(db, tmp_path) == []
    assert differences(db, tmp_path, include="failed,pending") == []
    df = frames(db, tmp_path, include="failed,pending")["csv"]
    assert list(zip(df["job"], values(df, "parse_ok"), df["status"], strict=True)) == [
        ("a", True, "done"), ("a", True, "done"), ("a", False, "done"), ("a", False, "done"),
        ("b", True, "done"), ("b", None, "failed"), ("c", None, "done"), ("d", None, "pending"), ("d", None, "pending")]


def test_a_keyword_field_named_like_a_parsed_column_keeps_its_values(fake: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    df = run(db, fake, tmp_path, {"parsed_answer": ["a7", "b8"]}, {"regex": r"(x)"}, template="REPLY:{parsed_answer} x")
    assert values(df, "kw_parsed_answer") == ["a7", "b8"] and values(df, "parsed_answer") == ["x", "x"]
    assert differences(db, tmp_path) == []


ODD_CHOICES = [  # as a provider may answer: out of order, a tool call (no content), text not a string
    [{"index": 1, "message": {"role": "assistant", "content": "n=12"}},
     {"index": 0, "message": {"role": "assistant", "content": "n=3"}}],
    [{"index": 0, "message": {"role": "assistant", "content": None,
                              "tool_calls": [{"id": "t", "type": "function",
                                             "function": {"name": "f", "arguments": "n=2.5"}}]}}],
    [{"index": 0, "message": {"role": "assistant", "content": "\u00e9 \"q\" n=7\nn=1.5"}}],
]


def test_the_type_scan_reads_each_answer_as_the_export_does(tmp_path: Path) -> None:
    """The parsed types come from a scan of the stored answers before the export writes: its texts are
    the items' (chat content, a tool call's JSON), so every format agrees on the columns."""
    db = tmp_path / "j.db"
    bp.create(db, name="odd", model="gpt-4o-mini", templates=["{p}"], keywords={"p": ["a", "b", "c"]},
              parse={"regex": r"n=(?P<n>[\d.]*)"})
    with Store(db) as store:
        [job] = store.jobs()
        rows = store.claim(job, "gpt-4o-mini", "test:1:x", 10, 60)
        store.record([Outcome(row.id, row.job_id, "done", json.dumps(
            {"id": f"r{row.id}", "choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                               "total_tokens": 2}}))
                      for row, choices in zip(rows, ODD_CHOICES, strict=True)], "test:1:x")
    items = bp.export(db)
    assert isinstance(items, list)
    assert [i["parsed"] for i in items] == [{"n": 3.0}, {"n": 12.0}, {"n": 2.5}, {"n": 7.0}]
    df = bp.to_dataframe(db)
    assert values(df, "parsed_n") == [3.0, 12.0, 2.5, 7.0] and str(df["parsed_n"].dtype) == "float64"
    assert differences(db, tmp_path) == []


def test_an_exports_cells_are_each_values_cell() -> None:
    """The writers' fast path (`row_cells`) gives what `cell` gives, value by value."""
    from batch_prompt.results.table import cell, row_cells

    types = {"s": "str", "f": "float", "i": "int", "b": "bool", "j": "json"}
    rows = [{"s": "x", "f": 1.5, "i": 3, "b": True, "j": {"a": [1]}},
            {"s": 7, "f": 2, "i": None, "b": False, "j": "text"},
            {"s": True, "f": None, "i": 2**70, "b": None, "j": None},
            {"s": ["l", 1], "f": 2**70, "i": -1, "b": True, "j": 1.5}]
    for row in rows:
        got = row_cells(types)(row)
        assert got == [cell(row[name], kind) for name, kind in types.items()], row
        assert [type(v) for v in got] == [type(cell(row[name], kind)) for name, kind in types.items()], row
