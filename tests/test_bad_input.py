"""Bad input through the command line: exit 2, one line naming the problem, nothing written."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.spec.spec import Spec
from batch_prompt.spec.tokens import DEFAULT_MAX_TOKENS, estimate_parts

from .conftest import cli_env, run_cli, run_process
from .helpers_procs import fill_done
from .test_store_export import SPEC, file_digest

OK = '{"model": "m", "templates": ["hi {x}"], "keywords": {"x": [1, 2]}'  # a spec without its closing brace
BIG = "1" + "0" * 5000  # past Python's 4300-digit limit for int <-> str


def assert_one_line_error(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.startswith("batch-prompt: error:") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr, out.stderr


BAD_SPECS = [
    # rate limits: finite and positive
    ("rpm_inf.json", OK + ', "rpm": 1e999}', "'rpm' must be a positive number (finite), not Infinity"),
    ("rpm_inf.toml", 'model = "m"\ntemplates = ["hi"]\nrpm = inf\n', "'rpm' must be a positive number (finite)"),
    ("tpm_nan.toml", 'model = "m"\ntemplates = ["hi"]\ntpm = nan\n', "'tpm' must be a positive number (finite)"),
    ("rpm_400_digits.json", OK + ', "rpm": 1' + "0" * 400 + "}", "'rpm' must be a positive number (finite)"),
    # text that is not Unicode (JSON can spell a lone surrogate)
    ("surrogate_template.json", OK.replace("hi {x}", "hi \\ud800 {x}") + "}",
     "spec field 'templates' holds text that is not valid Unicode: '\\ud800'"),
    ("surrogate_keyword.json", OK.replace("[1, 2]", '[1, "\\udfff"]') + "}", "spec field 'keywords' holds text"),
    ("surrogate_model_arg.json", OK + ', "model_args": {"user": "a\\ud83d"}}', "spec field 'model_args' holds text"),
    ("surrogate_model.json", OK.replace('"m"', '"m\\ud800"') + "}", "spec field 'model' holds text"),
    ("surrogate_name.json", OK + ', "name": "\\ud800"}', "spec field 'name' holds text"),
    # upper bounds
    ("repeats_huge.json", OK + ', "repeats": 100000000000000000000}', "'repeats' is 100000000000000000000: at most"),
    ("repeats_over.json", OK + ', "repeats": 100001}', "'repeats' is 100001: at most 100,000"),
    ("ppr_huge.json", OK + ', "api": "completions", "prompts_per_request": 100000000000000000000}',
     "'prompts_per_request' is 100000000000000000000: at most 2,048"),
    ("ppr_over.json", OK + ', "api": "completions", "prompts_per_request": 2049}', "at most 2,048"),
    ("count_over.json",
     json.dumps({"model": ["a", "b"], "templates": ["{x}{y}"], "keywords": {"x": list(range(10_001)),
                 "y": list(range(5_000))}}),
     "the spec makes 100010000 prompts (templates x keyword dicts x models x repeats): at most 100,000,000"),
    # integers past Python's digit limit in the file itself
    ("big.json", OK + ', "model_args": {"seed": ' + BIG + "}}", "big.json is not valid JSON: Exceeds the limit"),
    ("big.toml", f'model = "m"\ntemplates = ["hi"]\n[model_args]\nseed = {BIG}\n',
     "big.toml is not valid TOML: Exceeds the limit"),
    ("big_no_suffix", OK + ', "repeats": ' + BIG + "}", "is not valid JSON: Exceeds the limit"),
    ("deep.json", "[" * 100_000, "deep.json is not valid JSON: nested too deeply"),
    # token limits the estimate reads
    ("max_tokens_lots.json", OK + ', "model_args": {"max_tokens": "lots"}}',
     "model_args `max_tokens` must be a positive integer or null, not 'lots'"),
    ("max_tokens_negative.json", OK + ', "model_args": {"max_tokens": -5}}',
     "model_args `max_tokens` must be a positive integer or null, not -5"),
    ("max_tokens_zero.json", OK + ', "model_args": {"max_completion_tokens": 0}}',
     "model_args `max_completion_tokens` must be a positive integer or null, not 0"),
    ("max_tokens_float.json", OK + ', "model_args": {"max_tokens": 1e300}}',
     "model_args `max_tokens` must be a positive integer or null, not 1e+300"),
    ("max_tokens_bool.json", OK + ', "model_args": {"max_completion_tokens": true}}',
     "model_args `max_completion_tokens` must be a positive integer or null, not true"),
    # a grid with an empty list makes no prompts
    ("empty_grid.json", OK.replace("[1, 2]", "[]") + "}", "keywords['x'] is empty"),
    # model args: names and types of the SDK's request parameters, obvious ranges
    ("typo_model_arg.json", OK + ', "model_args": {"temprature": 0.5}}',
     "model_args `temprature`: not a chat completions parameter; did you mean `temperature`?"),
    ("vllm_arg_at_top.json", OK + ', "model_args": {"min_p": 0.1}}',
     "(a server-specific parameter goes under model_args.extra_body, which is sent as given)"),
    ("n_string.json", OK + ', "model_args": {"n": "2"}}', "model_args `n` must be a positive integer or null, not '2'"),
    ("temperature_hot.json", OK + ', "model_args": {"temperature": "hot"}}',
     "model_args `temperature` must be a number from 0 to 2 or null, not 'hot'"),
    ("logprobs_chat.json", OK + ', "model_args": {"logprobs": 5}}',
     "model_args `logprobs` must be true, false or null for chat completions, not 5"),
    ("stop_number.json", OK + ', "model_args": {"stop": 5}}',
     "model_args `stop` must be a string, a list of strings or null for chat completions, not 5"),
    ("extra_headers.json", OK + ', "model_args": {"extra_headers": {"X-Trace": "1"}}}',
     "model_args `extra_headers` is an SDK request option, not a request parameter"),
    ("extra_body_prompt.json", OK + ', "api": "completions", "model_args": {"extra_body": {"prompt": "x"}}}',
     "model_args.extra_body may not set `prompt`: it is part of the spec itself"),
    # accepted today, but meaning nothing or something else
    ("ppr_chat.json", OK + ', "prompts_per_request": 5}', "spec field 'prompts_per_request' is for api 'completions'"),
    ("base_url_ftp.json", OK + ', "base_url": "ftp://example.com/v1"}',
     "spec field 'base_url' must start with http:// or https://, not 'ftp://example.com/v1'"),
    ("base_url_port.json", OK + ', "base_url": "http://127.0.0.1:8089chat"}', "spec field 'base_url' has a bad port"),
    ("base_url_key.json", OK + ', "base_url": "https://me:sk-SECRET-123@api.example.com/v1"}',
     "spec field 'base_url' holds credentials (https://...@api.example.com): a key is never written down"),
    ("duplicate_key.json", OK + ', "model_args": {"n": 1, "max_tokens": 5, "n": 2}}',
     "duplicate_key.json: key 'n' appears twice in one JSON object (the last would silently win)"),
    ("attribute_field.json", OK.replace("hi {x}", "hi {x.upper}") + "}",
     "template 'hi {x.upper}' field {x.upper} uses attribute access, which is not filled in"),
    ("index_field.json", OK.replace("hi {x}", "hi {x[0]}") + "}", "template 'hi {x[0]}' field {x[0]} uses indexing"),
    ("single_brace.json", OK.replace("hi {x}", "a {x} } b") + "}",
     "is not a valid format string: Single '}' encountered in format string (a literal brace is written {{ or }})"),
    ("render_error.json", OK.replace("hi {x}", "{x:d}").replace("[1, 2]", '[1, 2, "three"]') + "}",
     "cannot fill template '{x:d}' with keyword dict {\"x\": \"three\"}: ValueError: Unknown format code 'd' for "
     "object of type 'str'"),
    # run fields
    ("endpoint_key.json", OK + ', "endpoints": {"m": {"base_url": "http://h:8000", "api_key_env": "sk-SECRET-123"}}}',
     "endpoints['m'].api_key_env looks like an API key: a key is never written in a spec"),
    ("endpoint_model.json", OK + ', "endpoints": {"other": {"base_url": "http://h:8000", "api_key_env": "K"}}}',
     "spec field 'endpoints' names model 'other', which is not one of the spec's models ('m')"),
    ("rpm_model.json", OK + ', "rpm": {"m": 60, "other": 5}}', "spec field 'rpm' names model 'other'"),
    ("max_cost_zero.json", OK + ', "max_cost": 0}', "spec field 'max_cost' must be a positive number (finite), not 0"),
    ("dedupe_string.json", OK + ', "dedupe": "true"}', "spec field 'dedupe' must be true or false, not 'true'"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_SPECS, ids=[case[0] for case in BAD_SPECS])
def test_bad_spec_is_one_line_and_creates_nothing(tmp_path: Path, name: str, text: str, message: str) -> None:
    spec = tmp_path / name
    spec.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = run_cli("create", str(spec), "--db", str(tmp_path / "jobs.db"), cwd=tmp_path)
    assert_one_line_error(out, message)
    assert "SECRET" not in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no database, no journal, no private file
    # estimate reads the same spec: it used to crash on max_tokens and loop for ever on huge repeats
    assert_one_line_error(run_cli("estimate", str(spec), cwd=tmp_path, timeout=30), message)


@pytest.mark.parametrize("name", ["max_tokens_lots.json", "surrogate_template.json", "rpm_inf.json"])
def test_bad_spec_leaves_an_existing_database_unchanged(tmp_path: Path, name: str) -> None:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    before = file_digest(db)
    spec = tmp_path / name
    _, text, message = next(case for case in BAD_SPECS if case[0] == name)
    spec.write_text(text, encoding="utf-8", errors="surrogatepass")
    for command in ("create", "run"):
        out = run_cli(command, str(spec), "--db", str(db), env=cli_env(tmp_path=tmp_path), cwd=tmp_path)
        assert_one_line_error(out, message)
    assert file_digest(db) == before


def test_a_render_error_quotes_a_long_value_shortened(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": "m", "templates": ["{x:d}"], "keywords": [{"x": 1}, {"x": "y" * 200_000}]}))
    out = run_cli("create", str(spec), "--db", str(tmp_path / "jobs.db"), cwd=tmp_path)
    assert_one_line_error(out, "cannot fill template '{x:d}' with keyword dict {\"x\": \"yyyyyyyy")
    assert len(out.stderr) < 300, len(out.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


BAD_OPTIONS = [
    (["--timeout", "inf"], "argument --timeout: timeout must be positive and finite, not 'inf'"),
    (["--timeout", "nan"], "argument --timeout: timeout must be positive and finite, not 'nan'"),
    (["--timeout", "0"], "argument --timeout: timeout must be positive and finite, not '0'"),
    (["--timeout", "1e999"], "argument --timeout: timeout must be positive and finite, not '1e999'"),
    (["--timeout", "soon"], "argument --timeout: invalid number: 'soon'"),
    (["--concurrency", "0"], "argument --concurrency: concurrency must be a positive integer, not '0'"),
    (["--concurrency", "1.5"], "argument --concurrency: invalid int value: '1.5'"),
    (["--rpm", "-1"], "argument --rpm: rpm must be positive and finite, not '-1'"),
    (["--tpm", "inf"], "argument --tpm: tpm must be positive and finite, not 'inf'"),
    (["--max-attempts", "0"], "argument --max-attempts: max attempts must be a positive integer, not '0'"),
    (["--base-url", "http://127.0.0.1:8089chat"], "argument --base-url: base URL has a bad port (1-65535)"),
    (["--base-url", "https://u:sk-SECRET-1@h/v1"], "argument --base-url: base URL holds credentials"),
]


@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS, ids=[" ".join(case[0]) for case in BAD_OPTIONS])
def test_bad_numeric_options_are_refused_before_anything_runs(tmp_path: Path, args: list[str], message: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = run_cli("run", str(spec), "--db", str(tmp_path / "new.db"), *args, env=cli_env(tmp_path=tmp_path),
                  cwd=tmp_path)
    assert_one_line_error(out, message)
    assert "SECRET" not in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    before = file_digest(db)
    assert_one_line_error(run_cli("resume", str(db), *args, env=cli_env(tmp_path=tmp_path), cwd=tmp_path), message)
    assert file_digest(db) == before


def test_a_failed_create_into_a_new_path_leaves_no_file(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bad = {**SPEC, "templates": ["{food:d}"], "keywords": {"food": [1] * 30_000 + ["pizza"]}}
    with pytest.raises(bp.SpecError, match="cannot fill template"):
        bp.create(db, **bad)
    assert list(tmp_path.iterdir()) == []
    # a private file of a create killed before its link (its process gone) is cleared; a live one is not
    stale = tmp_path / ".jobs.db.999999999.abcd.creating"
    live = tmp_path / f".jobs.db.{os.getpid()}.efgh.creating"
    for path in (stale, Path(f"{stale}-wal"), live):
        path.write_bytes(b"half a job")
    job = bp.create(db, **SPEC)
    assert (job.created, job.n_prompts) == (True, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "jobs.db"]
    assert bp.create(db, **SPEC).created is False


def test_limits_themselves_are_accepted() -> None:
    base: dict[str, Any] = {"model": "m", "templates": ["hi"]}
    assert Spec.from_dict({**base, "repeats": 100_000}).count_prompts() == 100_000
    assert Spec.from_dict({**base, "api": "completions", "prompts_per_request": 2048}).prompts_per_request == 2048
    assert Spec.from_dict({**base, "rpm": 10**300, "tpm": 0.5}).rpm == 1e300
    args = {"max_tokens": 1, "max_completion_tokens": None, "temperature": 2, "top_p": 0, "n": 128}
    assert Spec.from_dict({**base, "model_args": args}).model_args == args
    scoring = {"max_tokens": 0, "echo": True, "logprobs": 5}  # legacy: a prompt's own logprobs, no new tokens
    assert Spec.from_dict({**base, "api": "completions", "model_args": scoring}).model_args == scoring
    grid = {"x": list(range(10_000)), "y": list(range(10_000))}
    assert Spec.from_dict({**base, "templates": ["{x}{y}"], "keywords": grid}).count_prompts() == 100_000_000


def test_token_estimate_never_raises_on_odd_values() -> None:
    odd: list[Any] = ["lots", None, -3, 0, 1.5, True, [], {}, float("inf")]
    for value in odd:
        body = {"model": "m", "messages": [{"role": "user", "content": "abcd"}], "max_tokens": value, "n": value}
        assert estimate_parts(body) == (1 + 4, DEFAULT_MAX_TOKENS)
    assert estimate_parts({"model": "m", "prompt": ["ab", "cd"], "max_completion_tokens": 7, "n": 2}) == (2, 28)
    assert estimate_parts({"model": "m", "messages": ["hi", {"content": None}]})[1] == DEFAULT_MAX_TOKENS
    assert estimate_parts({"model": "m"}) == (0, DEFAULT_MAX_TOKENS)


# ---- export destinations


@pytest.fixture
def done_db(tmp_path: Path) -> Path:
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    fill_done(db)
    return db


@pytest.mark.parametrize("kind", ["itself", "symlink", "hard link", "wal", "relative"])
def test_export_refuses_to_overwrite_the_job_database(done_db: Path, tmp_path: Path, kind: str) -> None:
    before = file_digest(done_db)
    output = {
        "itself": str(done_db), "wal": f"{done_db}-wal", "relative": "./sub/../jobs.db",
        "symlink": str(tmp_path / "link.pkl"), "hard link": str(tmp_path / "hard.pkl"),
    }[kind]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pkl").symlink_to(done_db)
    os.link(done_db, tmp_path / "hard.pkl")
    out = run_cli("export", str(done_db), "-o", output, cwd=tmp_path)
    assert_one_line_error(out, "is the job database being exported (or its journal); refusing to overwrite")
    assert file_digest(done_db) == before
    results = bp.export(done_db)
    assert (tmp_path / "link.pkl").is_symlink() and isinstance(results, list) and len(results) == 8


def test_export_refuses_to_overwrite_another_sqlite_file(done_db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    bp.create(other, **{**SPEC, "name": "other"})
    before = file_digest(other)
    (tmp_path / "other_link.pkl").symlink_to(other)
    for output in (other, tmp_path / "other_link.pkl"):
        out = run_cli("export", str(done_db), "-o", str(output), cwd=tmp_path)
        assert_one_line_error(out, "is an SQLite database; refusing to overwrite a database")
    assert file_digest(other) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_writes_through_a_symlink_and_keeps_it(done_db: Path, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "target.pkl"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "out_link.pkl"
    link.symlink_to(Path("shared") / "target.pkl")  # relative, as `ln -s` makes it
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "shared" / "new.jsonl")
    for output in (link, tmp_path / "dangling.jsonl"):
        out = run_cli("export", str(done_db), "-o", str(output), cwd=tmp_path)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert output.is_symlink()
    assert len(bp.load_results(target)) == len(bp.load_results(tmp_path / "shared" / "new.jsonl")) == 8
    umask = os.umask(0o022)
    os.umask(umask)
    for written in (target, tmp_path / "shared" / "new.jsonl"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["new.jsonl", "target.pkl"]  # no temp files


def test_export_to_a_device_or_fifo_writes_directly(done_db: Path, tmp_path: Path) -> None:
    (tmp_path / "devnull.jsonl").symlink_to("/dev/null")
    out = run_cli("export", str(done_db), "-o", str(tmp_path / "devnull.jsonl"), cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "devnull.jsonl").is_symlink(), out.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # standard output (a pipe here); /proc/self/fd/1 rather than /dev/stdout: as root, a regression that
    # renamed a temp file onto /dev/stdout would replace the device for the whole machine
    out = run_process("export", str(done_db), "-o", "/proc/self/fd/1", "--format", "jsonl", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [json.loads(line)["job"] for line in lines[:8]] == ["likes"] * 8
    assert lines[8:] == ["8 results written to /proc/self/fd/1"]
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        out = run_cli("export", str(done_db), "-o", str(fifo), cwd=tmp_path, timeout=30)
        assert out.returncode == 0, out.stderr
        received, _ = reader.communicate(timeout=30)
    finally:
        reader.kill()
        reader.wait()
    assert len(received.decode().splitlines()) == 8 and stat.S_ISFIFO(fifo.lstat().st_mode)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_bug_of_ours_is_one_line_naming_the_saved_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal error (here: a command made to fail as a bug would) prints one line, never a traceback;
    the traceback is saved to a file (with keys masked), and --debug prints it too."""
    import tempfile

    from batch_prompt.cli import commands as cli

    def broken(args: Any) -> int:
        raise RuntimeError("boom " + "sk-test-SECRET-a1b2c3d4e5f6")

    monkeypatch.setitem(cli.COMMANDS, "status", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (what TMPDIR sets in a new process)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-SECRET-a1b2c3d4e5f6"}
    for debug in ([], ["--debug"]):
        out = run_cli("status", str(tmp_path / "x.db"), *debug, env=env, cwd=tmp_path)
        assert out.returncode == 1
        last = out.stderr.splitlines()[-1]
        assert last.startswith("batch-prompt: internal error") and "RuntimeError: boom ***" in last, out.stderr
        assert ("Traceback" in out.stderr) == bool(debug) and "SECRET" not in out.stderr
        saved = Path(last.rsplit("its traceback is in ", 1)[1])
        assert saved.parent == tmp_path and "Traceback" in saved.read_text() and "SECRET" not in saved.read_text()


# A run's inputs that are only checked when it runs (price files, rates by model, budgets, keys'
# variables): `run SPEC` refuses them before it records the job, `resume` before it records its choices.
BAD_RUNS = [
    ("bad price file with a budget", {}, ["--max-cost", "1", "--prices", "bad.json"], "price file bad.json is not"),
    ("missing price file", {}, ["--prices", "none.json"], "price file not found: none.json"),
    ("rpm for a model the run lacks", {}, ["--rpm", "nosuchmodel=5"], "rpm names model 'nosuchmodel'"),
    ("tpm for a model the run lacks", {}, ["--tpm", "nosuchmodel=5"], "tpm names model 'nosuchmodel'"),
    ("the spec's price file is bad", {"prices": "bad.json"}, [], "is not valid JSON"),
    ("a budget over an unpriced model", {"model": "no-such-model-xyz", "max_cost": 1}, [],
     "'no-such-model-xyz' has no known price"),
    ("api_key_env names an unset variable",
     {"endpoints": {"gpt-4o-mini": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "TYPO_KEY"}}}, [],
     "set the environment variable TYPO_KEY"),
]


@pytest.mark.parametrize(("spec_fields", "args", "message"), [case[1:] for case in BAD_RUNS],
                         ids=[case[0] for case in BAD_RUNS])
def test_a_bad_run_leaves_the_database_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], spec_fields: dict[str, Any],
                                                 args: list[str], message: str) -> None:
    from batch_prompt import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-a1b2c3d4e5f6")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never reached: refused before
    (tmp_path / "bad.json").write_text("{not json")
    db = tmp_path / "jobs.db"
    bp.create(db, **SPEC)
    fill_done(db)
    spec = tmp_path / "second.json"
    spec.write_text(json.dumps({**SPEC, "name": "second", "templates": ["I want {food}"], **spec_fields}))
    before = file_digest(db)
    assert cli.main(["run", str(spec), "--db", str(db), "--yes", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("batch-prompt: error:") and err.count("\n") == 1 and message in err, err
    assert file_digest(db) == before  # no job 'second', no rows
    # the same options given to a resume of the first job: its run choices are not recorded either
    if not spec_fields:
        assert cli.main(["resume", str(db), "--mode", "batch", "--no-cache", *args]) == 2
        assert message in capsys.readouterr().err
        assert file_digest(db) == before
