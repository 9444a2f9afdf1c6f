"""The job database (schema, migrations, create, claims) and the results export."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.store import schema
from batch_prompt.store.database import Outcome, Store

from .conftest import run_cli
from .helpers_procs import fill_done

SPEC = {
    "name": "likes", "api": "chat", "model": "gpt-4o-mini",
    "templates": ["I like {food}", "I hate {food}"],
    "keywords": [{"food": "pizza"}, {"food": "apples"}],
    "model_args": {"n": 2, "max_tokens": 5, "temperature": 1.0},
}

# The whole schema a blank database has after every migration, by (type, name, table): each table's and
# index's SQL as SQLite keeps it in sqlite_master (comments dropped, spaces evened out; the columns of an
# ALTER TABLE appended as it wrote them), and the autoindexes of UNIQUE and PRIMARY KEY constraints (no SQL).
INTENDED_SCHEMA = {
    ("table", "batch_prompt_migrations", "batch_prompt_migrations"):
        "CREATE TABLE batch_prompt_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL "
        "NOT NULL)",
    ("table", "jobs", "jobs"):
        "CREATE TABLE \"jobs\" (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec_hash TEXT NOT NULL, spec "
        "TEXT NOT NULL, api TEXT NOT NULL CHECK (api IN ('chat', 'completions', 'responses')), prompts_per_request "
        "INTEGER NOT NULL, base_url TEXT, state TEXT NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', "
        "'ready')), n_prompts INTEGER NOT NULL, created_at TEXT NOT NULL, mode TEXT NOT NULL DEFAULT 'live' CHECK "
        "(mode IN ('live', 'batch')), fresh INTEGER NOT NULL DEFAULT 0, creator TEXT, deadline_at REAL, plan TEXT)",
    ("table", "prompts", "prompts"):
        "CREATE TABLE prompts (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id), hash TEXT NOT "
        "NULL, template_index INTEGER NOT NULL, keywords_index INTEGER NOT NULL, model_index INTEGER NOT NULL, "
        "sample_index INTEGER NOT NULL, model TEXT NOT NULL, template TEXT NOT NULL, keywords TEXT NOT NULL, "
        "request TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', "
        "'done', 'failed')), attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, response TEXT, cached INTEGER "
        "NOT NULL DEFAULT 0, prompt_tokens INTEGER, completion_tokens INTEGER, lease_owner TEXT, lease_expires "
        "REAL, created_at REAL NOT NULL, finished_at REAL, error_kind TEXT, batch INTEGER REFERENCES batches(id))",
    ("table", "spend", "spend"):
        "CREATE TABLE \"spend\" (job_id INTEGER NOT NULL REFERENCES jobs(id), model TEXT NOT NULL, mode TEXT NOT NULL "
        "CHECK (mode IN ('live', 'batch', 'flex')), requests INTEGER NOT NULL DEFAULT 0, answers INTEGER NOT NULL "
        "DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, "
        "cached_tokens INTEGER NOT NULL DEFAULT 0, reasoning_tokens INTEGER NOT NULL DEFAULT 0, PRIMARY KEY "
        "(job_id, model, mode)) WITHOUT ROWID",
    ("table", "batches", "batches"):
        "CREATE TABLE batches (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id), model TEXT NOT "
        "NULL, endpoint TEXT NOT NULL, token TEXT NOT NULL UNIQUE, state TEXT NOT NULL CHECK (state IN "
        "('preparing', 'uploaded', 'submitted', 'collected', 'returned')), status TEXT, input_file_id TEXT, "
        "batch_id TEXT, output_file_id TEXT, error_file_id TEXT, requests INTEGER NOT NULL, completed INTEGER NOT "
        "NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, error TEXT, files_left INTEGER NOT NULL DEFAULT 1, "
        "created_at REAL NOT NULL, submitted_at REAL, finished_at REAL, base_url TEXT, api_key_env TEXT)",
    ("table", "budget_holds", "budget_holds"):
        "CREATE TABLE budget_holds (job_id INTEGER NOT NULL REFERENCES jobs(id), owner TEXT NOT NULL, reserved "
        "REAL NOT NULL, expires REAL NOT NULL, PRIMARY KEY (job_id, owner))",
    ("index", "prompts_unfinished", "prompts"):
        "CREATE INDEX prompts_unfinished ON prompts (job_id, model, status, id) WHERE status != 'done'",
    ("index", "prompts_job_order", "prompts"): "CREATE INDEX prompts_job_order ON prompts (job_id, id)",
    ("index", "prompts_running_hash", "prompts"):
        "CREATE INDEX prompts_running_hash ON prompts (hash) WHERE status = 'running'",
    ("index", "prompts_cached", "prompts"): "CREATE INDEX prompts_cached ON prompts (job_id, model) WHERE cached = 1",
    ("index", "prompts_batch", "prompts"): "CREATE INDEX prompts_batch ON prompts (batch, id) WHERE batch IS NOT NULL",
    ("index", "batches_open", "batches"):
        "CREATE INDEX batches_open ON batches (job_id) WHERE state NOT IN ('collected', 'returned')",
    ("index", "sqlite_autoindex_jobs_1", "jobs"): None,
    ("index", "sqlite_autoindex_batches_1", "batches"): None,
    ("index", "sqlite_autoindex_budget_holds_1", "budget_holds"): None,
}


def schema_of(db: Path) -> dict[tuple[str, str, str], str | None]:
    """A database's sqlite_master (tables, indexes, views, triggers) by (type, name, table): each one's SQL
    with its comments dropped and its spaces evened out."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    finally:
        conn.close()
    found: dict[tuple[str, str, str], str | None] = {}
    for kind, name, table, sql in rows:
        if sql is not None:
            sql = " ".join(re.sub(r"--[^\n]*", "", sql).split())
            sql = sql.replace("( ", "(").replace(" )", ")").replace(" ,", ",")
        found[(kind, name, table)] = sql
    return found


def write_spec(tmp_path: Path, spec: dict[str, Any] | str, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def file_digest(path: Path) -> str:
    """Content of a database as SQL text (stable across WAL checkpoints), or the bytes of any other file."""
    try:
        conn = sqlite3.connect(path)
        dump = "\n".join(conn.iterdump())
        conn.close()
        return hashlib.sha256(dump.encode()).hexdigest()
    except sqlite3.DatabaseError:
        return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blank_database_migrates_to_intended_schema(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    Store(db).close()
    assert schema_of(db) == INTENDED_SCHEMA
    conn = sqlite3.connect(db)
    versions = [row[0] for row in conn.execute("SELECT version FROM batch_prompt_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in schema.available()] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_claims_and_counts_use_the_unfinished_index(tmp_path: Path) -> None:
    """The statements the store runs on unfinished rows, as it runs them (traced), all go through the
    partial indexes: none scans the done rows."""
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    statements: list[str] = []
    with Store(db) as store:
        job = store.jobs()[0]
        store.conn.set_trace_callback(statements.append)
        rows = store.claim(job, "gpt-4o-mini", "test:1:x", 2, 60)
        store.counts(job)
        store.pending(job, "gpt-4o-mini")
        store.reclaim(job)
        store.renew("test:1:x", 60)
        store.release([row.id for row in rows], "test:1:x")
    conn = sqlite3.connect(db)
    checked = 0
    for sql in statements:
        if "prompts" not in sql or sql.startswith(("BEGIN", "COMMIT")) or "FROM spend" in sql:
            continue
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
        if "WHERE id = " in sql:  # by primary key
            assert "INTEGER PRIMARY KEY" in plan, (sql, plan)
        else:
            assert "INDEX prompts_unfinished" in plan and "prompts_job_order" not in plan, (sql, plan)
        if "q.hash" in sql:  # the in-flight elsewhere check
            assert "prompts_running_hash" in plan, plan
        checked += 1
    assert checked >= 5


def test_create_records_every_prompt_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    job = bp.create(db, **SPEC)
    assert (job.name, job.n_prompts, job.created) == ("likes", 4, True)
    again = bp.create(db, **SPEC)
    assert again.created is False
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*), count(DISTINCT hash) FROM prompts").fetchone() == (4, 4)
    assert conn.execute("SELECT status, attempts FROM prompts").fetchall() == [("pending", 0)] * 4
    assert job.status()["pending"] == 4


def test_name_is_derived_from_spec_when_absent(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    spec = {k: v for k, v in SPEC.items() if k != "name"}
    first = bp.create(db, **spec)
    assert first.name.startswith("job-") and bp.create(db, **spec).name == first.name
    other = bp.create(db, **{**spec, "model": "other"})
    assert other.name != first.name


def test_cli_create_and_status(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    db = tmp_path / "jobs.db"
    out = run_cli("create", str(spec), "--db", str(db), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 prompts created" in out.stdout
    assert run_cli("create", str(spec), "--db", str(db), cwd=tmp_path).returncode == 0
    status = run_cli("status", str(db), "--json", cwd=tmp_path)
    report = json.loads(status.stdout)
    assert [(r["job"], r["total"], r["pending"], r["done"]) for r in report] == [("likes", 4, 4, 0)]


def test_toml_spec(tmp_path: Path) -> None:
    toml = """name = "t"\napi = "completions"\nmodel = ["a", "b"]\ntemplates = ["Say {x}"]\n
[keywords]\nx = ["1", "2", "3"]\n"""
    spec = write_spec(tmp_path, toml, "spec.toml")
    out = run_cli("create", str(spec), "--db", str(tmp_path / "jobs.db"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "6 prompts created" in out.stdout


BAD_SPECS = [
    ({**SPEC, "templates": ["I like {drink}"]}, "needs field 'drink'"),
    ({**SPEC, "templates": []}, "'templates' is empty"),
    ({**SPEC, "api": "embeddings"}, "unknown api"),
    ({**SPEC, "temprature": 1}, "unknown spec field 'temprature'"),
    ("{not json", "is not valid JSON"),
    ({**SPEC, "templates": ["ok {food}", "bad {food.nope}"]},
     "template 'bad {food.nope}' field {food.nope} uses attribute access, which is not filled in"),
    ({**SPEC, "templates": ["ok {food}", "bad {food:d}"]},
     "cannot fill template 'bad {food:d}' with keyword dict {\"food\": \"pizza\"}: ValueError: Unknown format code"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
def test_bad_spec_exits_2_and_writes_nothing(tmp_path: Path, spec: dict[str, Any] | str, message: str) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **{**SPEC, "name": "existing"})
    before = file_digest(db)
    out = run_cli("create", str(write_spec(tmp_path, spec)), "--db", str(db), cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("batch-prompt: error:")
    assert file_digest(db) == before


def test_bad_toml(tmp_path: Path) -> None:
    out = run_cli("create", str(write_spec(tmp_path, "a = [", "s.toml")), "--db", str(tmp_path / "j.db"))
    assert out.returncode == 2 and "is not valid TOML" in out.stderr
    assert not (tmp_path / "j.db").exists() or file_digest(tmp_path / "j.db")


def test_conflicting_spec_names_the_difference(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    before = file_digest(db)
    changed = {**SPEC, "model_args": {"n": 1, "max_tokens": 5}, "templates": ["x {food}", "I hate {food}"]}
    out = run_cli("create", str(write_spec(tmp_path, changed)), "--db", str(db), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == (
        "batch-prompt: error: job 'likes' already exists in this database with a different spec: "
        "templates[0] differs: 'I like {food}' recorded, 'x {food}' in this spec; "
        "model_args.n differs: 2 recorded, 1 in this spec; "
        "model_args.temperature differs: 1.0 recorded, not set in this spec; give the new spec another name\n"
    )
    assert file_digest(db) == before
    hotter = {**SPEC, "model_args": {**SPEC["model_args"], "temperature": 0.5}, "dedupe": True}  # type: ignore[dict-item]
    out = run_cli("create", str(write_spec(tmp_path, hotter)), "--db", str(db), cwd=tmp_path)
    assert out.returncode == 2 and (
        "model_args.temperature differs: 1.0 recorded, 0.5 in this spec; dedupe differs: not set recorded, "
        "true in this spec; give the new spec another name"
    ) in out.stderr, out.stderr
    assert file_digest(db) == before


def test_run_fields_given_anew_update_the_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = bp.create(db, **SPEC, rpm=60)
    conn = sqlite3.connect(db)
    hashes = conn.execute("SELECT hash FROM prompts ORDER BY id").fetchall()
    (spec_hash,) = conn.execute("SELECT spec_hash FROM jobs").fetchone()
    run = {"base_url": "http://gpu:8000", "rpm": {"gpt-4o-mini": 30}, "tpm": 1000, "max_cost": 2.5,
           "prices": str(tmp_path / "prices.toml"),
           "endpoints": {"gpt-4o-mini": {"base_url": "http://gpu:8001/v1/", "api_key_env": "GPU_KEY"}}}
    again = bp.create(db, **SPEC, **run)
    assert (first.created, again.created, again.base_url) == (True, False, "http://gpu:8000/v1")
    stored = json.loads(conn.execute("SELECT spec FROM jobs").fetchone()[0])
    assert {key: stored[key] for key in run} == {
        **run, "base_url": "http://gpu:8000/v1", "rpm": {"gpt-4o-mini": 30.0}, "tpm": 1000.0,
        "endpoints": {"gpt-4o-mini": {"base_url": "http://gpu:8001/v1", "api_key_env": "GPU_KEY"}},
    }
    assert conn.execute("SELECT base_url FROM jobs").fetchone() == ("http://gpu:8000/v1",)
    assert conn.execute("SELECT spec_hash FROM jobs").fetchone() == (spec_hash,)
    assert conn.execute("SELECT hash FROM prompts ORDER BY id").fetchall() == hashes
    # dedupe is identity: the same name with it set is another spec
    with pytest.raises(bp.JobConflictError, match="dedupe differs: not set recorded, true in this spec"):
        bp.create(db, **SPEC, dedupe=True)


@pytest.mark.parametrize("kind", ["text", "other-sqlite", "newer-schema", "directory", "missing"])
def test_bad_database_paths(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "jobs.db"
    expected = {
        "text": "not a batch-prompt job database", "other-sqlite": "not a batch-prompt job database",
        "newer-schema": "newer than this batch-prompt knows", "directory": "is a directory",
        "missing": "no job database at",
    }[kind]
    if kind == "text":
        db.write_text("hello, I am not a database\n" * 100)
    elif kind == "other-sqlite":
        sqlite3.connect(db).execute("CREATE TABLE users (id INTEGER)")
    elif kind == "newer-schema":
        bp.create(db, **SPEC)
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO batch_prompt_migrations VALUES (999, '0999_future.sql', 0)")
        conn.commit()
        conn.close()
    elif kind == "directory":
        db.mkdir()
    before = file_digest(db) if db.is_file() else None
    for args in (["status", str(db)], ["export", str(db), "-o", str(tmp_path / "r.pkl")]):
        out = run_cli(*args, cwd=tmp_path)
        assert out.returncode == 2, out
        assert expected in out.stderr and out.stderr.count("\n") == 1
    if before is not None:
        assert file_digest(db) == before
    assert not (tmp_path / "r.pkl").exists()


def test_failed_create_mid_stream_leaves_no_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    before = file_digest(db)
    # a rendering error only found while expanding (a format spec for numbers, and a string at the end)
    bad = {**SPEC, "name": "bad", "keywords": [{"food": 1}] * 50_000 + [{"food": "pizza"}],
           "templates": ["{food:03d}"]}
    message = "cannot fill template '{food:03d}' with keyword dict {\"food\": \"pizza\"}: ValueError: Unknown format"
    with pytest.raises(bp.SpecError, match=re.escape(message)):
        bp.create(db, **bad)
    assert file_digest(db) == before
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT name FROM jobs").fetchall() == [("likes",)]
    assert conn.execute("SELECT count(*) FROM prompts").fetchone() == (4,)


def test_export_round_trips_in_a_bare_python(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    bp.create(db, name="legacy", api="completions", model="davinci", templates=["Say {x}"],
              keywords={"x": ["a", "b", "c"]}, model_args={"n": 3})
    fill_done(db)
    out = run_cli("export", str(db), "-o", str(tmp_path / "results.pkl"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "17 results" in out.stdout  # 4 chat prompts x n=2 + 3 completions prompts x n=3
    code = "import pickle,sys,json; r=pickle.load(open(sys.argv[1],'rb')); print(json.dumps(r))"
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path / "results.pkl")],
                          capture_output=True, text=True, check=True)
    results = json.loads(bare.stdout)
    assert results == bp.export(db)
    assert len(results) == 17
    first = results[0]
    assert set(first) == {"messages", "messages_raw", "messages_args", "choice", "completion", "model_args",
                          "model", "prompt_hash", "job", "template_index", "keywords_index", "model_index",
                          "sample_index"}
    assert first["messages"] == [{"role": "user", "content": "I like pizza"}]
    assert first["messages_raw"] == [{"role": "user", "content": "I like {food}"}]
    assert first["messages_args"] == {"food": "pizza"}
    assert first["choice"] == {"index": 0, "message": {"role": "assistant", "content": "echo 0: I like pizza"},
                               "finish_reason": "stop", "logprobs": None}
    assert "choices" not in first["completion"] and first["completion"]["usage"]["total_tokens"] == 7
    assert first["model_args"] == {"n": 2, "max_tokens": 5, "temperature": 1.0}
    assert (first["model"], first["job"]) == ("gpt-4o-mini", "likes")
    order = [(r["job"], r["messages"][0]["content"] if "messages" in r else r["prompt"], r["choice"]["index"])
             for r in results]
    assert order[:4] == [("likes", "I like pizza", 0), ("likes", "I like pizza", 1),
                         ("likes", "I like apples", 0), ("likes", "I like apples", 1)]
    legacy = [r for r in results if r["job"] == "legacy"]
    assert [(r["prompt"], r["prompt_raw"], r["prompt_args"], r["choice"]["index"]) for r in legacy[:4]] == [
        ("Say a", "Say {x}", {"x": "a"}, 0), ("Say a", "Say {x}", {"x": "a"}, 1), ("Say a", "Say {x}", {"x": "a"}, 2),
        ("Say b", "Say {x}", {"x": "b"}, 0)]
    assert all(r["choice"]["text"] == f"echo {r['choice']['index']}: {r['prompt']}" for r in legacy)


def test_export_jsonl_and_load_results(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    fill_done(db)
    assert bp.export(db, tmp_path / "r.jsonl") == bp.ExportSummary(str(tmp_path / "r.jsonl"), "jsonl", 8, 0, 0, 0)
    assert bp.export(db, tmp_path / "r.pkl") == bp.ExportSummary(str(tmp_path / "r.pkl"), "pickle", 8, 0, 0, 0)
    assert bp.load_results(tmp_path / "r.jsonl") == bp.load_results(tmp_path / "r.pkl") == bp.export(db)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["prompt_hash"]
    assert type(pickle.loads((tmp_path / "r.pkl").read_bytes())) is list


def test_export_only_done_rows_and_bad_destination(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    assert bp.export(db) == []
    out = run_cli("export", str(db), "-o", str(tmp_path / "nope" / "r.pkl"), cwd=tmp_path)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_truncated_database_is_refused_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **{**SPEC, "keywords": {"food": [f"f{i}" for i in range(3000)]}})
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    for wal in tmp_path.glob("jobs.db-*"):
        wal.unlink()
    for args in (["status", str(db)], ["export", str(db), "-o", str(tmp_path / "r.pkl")]):
        out = run_cli(*args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("batch-prompt: error:") and out.stderr.count("\n") == 1, out.stderr


def test_full_disk_during_create_keeps_earlier_jobs(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    before = bp.export(db), sqlite3.connect(db).execute("SELECT count(*) FROM prompts").fetchone()
    with Store(db) as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 20}")  # a disk that fills up mid-create
        big = bp.Spec.from_dict({**SPEC, "name": "big", "keywords": {"food": [f"f{i}" * 20 for i in range(50_000)]}})
        with pytest.raises(bp.StoreError, match="full"):
            store.create_job(big)
    conn = sqlite3.connect(db)
    assert (bp.export(db), conn.execute("SELECT count(*) FROM prompts").fetchone()) == before
    assert [r[0] for r in conn.execute("SELECT name FROM jobs WHERE state = 'ready'")] == ["likes"]
    # with room again, the same create finishes
    assert bp.create(db, **{**SPEC, "name": "big", "keywords": {"food": [f"f{i}" * 20 for i in range(50_000)]}}).created


def test_export_to_unwritable_place(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    fill_done(db)
    (tmp_path / "results.pkl").write_bytes(b"old export")
    for target in ("/proc/version", str(tmp_path / "missing" / "r.pkl"), str(tmp_path)):
        out = run_cli("export", str(db), "-o", target, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (target, out.stderr)
    assert (tmp_path / "results.pkl").read_bytes() == b"old export"


def test_estimate_writes_nothing_and_counts(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {**SPEC, "model": ["gpt-4o-mini", "unknown-model"]})
    out = run_cli("estimate", str(spec), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["prompts"], report["requests"]) == (8, 8)
    assert report["max_output_tokens"] == 8 * 5 * 2  # max_tokens x n per prompt
    # heuristic: ceil(chars / 4) per message ("I like pizza" 3, "I like apples" 4) + 4 per message, 2 models
    assert report["input_tokens"] == 2 * (3 + 3 + 4 + 4 + 4 * 4)
    assert report["max_cost_live"] is None and report["unpriced"] == ["unknown-model"]  # no known price
    assert [m["model"] for m in report["models"]] == ["gpt-4o-mini", "unknown-model"]
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "xdg-cache").exists()  # nor a cache folder
    packed = write_spec(tmp_path, {**SPEC, "api": "completions", "prompts_per_request": 3}, "p.json")
    assert json.loads(run_cli("estimate", str(packed), "--json", cwd=tmp_path).stdout)["requests"] == 2


def test_lease_owner_liveness() -> None:
    import signal as sig

    from batch_prompt.store.leases import _scope, _start_time, lease_owner, owner_is_dead

    assert not owner_is_dead(lease_owner())  # ourselves
    assert not owner_is_dead("another-host/b00t/4026531836:1:1:x")  # elsewhere: only its lease can expire
    proc = subprocess.Popen(["sleep", "30"])
    owner = f"{_scope()}:{proc.pid}:{_start_time(proc.pid)}:tok"
    try:
        assert not owner_is_dead(owner)
        assert owner_is_dead(f"{_scope()}:{proc.pid}:12345:tok")  # same pid, another process
        other_namespace = _scope().rsplit("/", 1)[0] + "/1"  # the same pid in another container means nothing
        assert not owner_is_dead(f"{other_namespace}:{proc.pid}:12345:tok")
        proc.send_signal(sig.SIGKILL)
        proc.wait()
        assert owner_is_dead(owner)
    finally:
        proc.kill()


def test_export_removes_temp_files_of_killed_exports(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    fill_done(db)
    stale = tmp_path / ".r.pkl.999999999.abcd.tmp"  # no such pid
    stale.write_bytes(b"half an export")
    live = tmp_path / f".r.pkl.{__import__('os').getpid()}.efgh.tmp"  # a live export's file is left alone
    live.write_bytes(b"in progress")
    assert bp.export(db, tmp_path / "r.pkl").results == 8  # type: ignore[union-attr]
    assert not stale.exists() and live.exists()


def test_read_only_database(tmp_path: Path, immutable: Any) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    fill_done(db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = file_digest(db)
    immutable(db)
    assert run_cli("status", str(db), cwd=tmp_path).returncode == 0  # reading needs no write access
    out = run_cli("export", str(db), "-o", str(tmp_path / "r.pkl"), cwd=tmp_path)
    assert out.returncode == 0 and len(bp.load_results(tmp_path / "r.pkl")) == 8
    other = write_spec(tmp_path, {**SPEC, "name": "second"})
    for args in (["create", str(other), "--db", str(db)], ["retry-failed", str(db)]):
        out = run_cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and "readonly database" in out.stderr and out.stderr.count("\n") == 1
    assert file_digest(db) == before


def test_empty_file_is_not_a_database_for_reading(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    db.write_bytes(b"")
    out = run_cli("status", str(db), cwd=tmp_path)
    assert out.returncode == 2 and "an empty file" in out.stderr
    assert db.read_bytes() == b""  # nothing written into it


def test_release_and_failure_only_under_our_lease(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    with Store(db) as a, Store(db) as b:
        job = a.jobs()[0]
        rows = a.claim(job, "gpt-4o-mini", "host/a/1:1:1:a", 10, lease_seconds=-1)  # claimed, lease already expired
        assert a.reclaim(job) == 4  # ...so it is reclaimed
        taken = b.claim(job, "gpt-4o-mini", "host/b/1:2:2:b", 10, 60)
        assert [r.id for r in taken] == [r.id for r in rows]
        a.release([r.id for r in rows], "host/a/1:1:1:a")  # A wakes up late: B's rows are not A's to hand back
        a.record([Outcome(rows[0].id, job.id, "failed", error="late", attempts=1)], "host/a/1:1:1:a")
        statuses = [r[0] for r in sqlite3.connect(db).execute("SELECT status FROM prompts ORDER BY id")]
        assert statuses == ["running"] * 4
        a.record([Outcome(rows[1].id, job.id, "done", '{"choices": []}', False, 1, 1, 1)], "host/a/1:1:1:a")
        assert sqlite3.connect(db).execute("SELECT status FROM prompts WHERE id = ?", (rows[1].id,)).fetchone() == (
            "done",)  # an answer is an answer, whoever holds the lease


def test_redaction_and_tolerant_usage() -> None:
    from batch_prompt.run.failures import redact
    from batch_prompt.run.ledger import count as _count

    key = "0123456789abcdef0123456789abcdef"  # an Azure-style key: no sk- prefix to recognize
    assert key not in redact(f"Access denied: invalid subscription key {key}.", key)
    assert "sk-proj-abc123" not in redact("Incorrect API key provided: sk-proj-abc123***xyz")
    assert [_count(v) for v in (5, "n/a", None, -1, True, 2.5)] == [5, 0, 0, 0, 0, 0]


def test_a_version_1_database_migrates_with_its_spend(tmp_path: Path) -> None:
    """A database written by schema 1 opens, and what it had recorded as paid for becomes its spend."""
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db, isolation_level=None)
    version, name, sql = schema.available()[0]
    for statement in schema.split_statements(sql):
        conn.execute(statement)
    conn.execute(f"CREATE TABLE {schema.MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    conn.execute(f"INSERT INTO {schema.MIGRATIONS_TABLE} VALUES (?, ?, 0)", (version, name))
    conn.execute("INSERT INTO jobs (name, spec_hash, spec, api, prompts_per_request, n_prompts, created_at, state,"
                 " prompt_tokens, completion_tokens) VALUES ('old', 'h', '{}', 'chat', 1, 3, 'x', 'ready', 30, 40)")
    for i, (status, cached) in enumerate([("done", 0), ("done", 1), ("pending", 0)]):
        conn.execute("INSERT INTO prompts (job_id, hash, template_index, keywords_index, model_index, sample_index,"
                     " model, template, keywords, request, status, cached, prompt_tokens, completion_tokens,"
                     " created_at) VALUES (1, ?, 0, ?, 0, 0, 'm', '\"t\"', '{}', '{}', ?, ?, 10, 20, 0)",
                     (f"h{i}", i, status, cached))
    conn.close()
    with Store(db) as store:
        job = store.jobs()[0]
        assert (job.mode, job.fresh) == ("live", False)
        assert [tuple(vars_of(s)) for s in store.spend(job)] == [("m", "live", 1, 1, 10, 20, 0, 0)]
        counts = store.counts(job)
        assert [counts[k] for k in ("done", "pending", "prompt_tokens", "completion_tokens")] == [2, 1, 10, 20]


def vars_of(obj: Any) -> list[Any]:
    return [getattr(obj, name) for name in obj.__slots__]
