"""Many models over many endpoints, side by side: against several fake servers at once, each with its own
key, limits and latency, asserting on what each server recorded."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import batch_prompt as bp
from batch_prompt.run.retry import RetryPolicy
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, cli_env, run_cli
from .helpers_procs import statuses_by_model

Start = Callable[..., FakeServer]


@pytest.fixture
def servers() -> Iterator[Start]:
    """Start fake servers (`servers(**FakeConfig fields)`); all are stopped at the end of the test."""
    started: list[FakeServer] = []

    def start(**config: Any) -> FakeServer:
        server = FakeServer(**config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def spec(name: str, count: int, models: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "api": "chat", "model": models, "templates": ["Q{i}"], "keywords": {"i": list(range(count))},
            "model_args": {"max_tokens": 5}, **extra}


def served(fakes: dict[str, tuple[FakeServer, str]]) -> dict[str, dict[str, str]]:
    """The spec's `endpoints` for model -> (server, the variable holding its key)."""
    return {model: {"base_url": fake.url, "api_key_env": variable} for model, (fake, variable) in fakes.items()}


def run(db: Path, name: str, tmp_path: Path, **options: Any) -> bp.RunSummary:
    options.setdefault("retry", RetryPolicy.no_wait())
    options.setdefault("quiet", True)
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    return bp.Job(str(db), name, 0).run(**options)


def outcomes(fake: FakeServer) -> Counter[str]:
    return Counter(entry["outcome"] for entry in fake.record)


def oks(fake: FakeServer, model: str | None = None) -> list[float]:
    return sorted(e["t"] for e in fake.record if e["outcome"] == "ok" and model in (None, e["model"]))


def waves(times: list[float], gap: float) -> list[int]:
    """Arrivals grouped by the quiet gaps between them: how many went out in each round trip."""
    sizes = [1] if times else []
    for before, after in itertools.pairwise(times):
        if after - before >= gap:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


def in_flight(spans: list[tuple[float, float, str]], at: float) -> Counter[str]:
    """Requests being served at `at`, by label, from (arrival, arrival + latency, label) spans."""
    return Counter(label for start, end, label in spans if start <= at < end)


def keyed(monkeypatch: pytest.MonkeyPatch, servers: Start, models: list[str], **configs: Any) -> dict[
        str, tuple[FakeServer, str]]:
    """One server per model, each with its own key in its own environment variable."""
    fakes = {}
    for i, model in enumerate(models):
        variable, key = f"BP_TEST_KEY_{i}", f"sk-endpoint-{i}-{'x' * 8}"
        monkeypatch.setenv(variable, key)
        config = {name: value[i] if isinstance(value, tuple) else value for name, value in configs.items()}
        fakes[model] = (servers(api_key=key, **config), variable)
    return fakes


def test_three_endpoints_run_side_by_side_each_with_its_own_key(
    servers: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, rpm = 60, 1200  # 20/s at each endpoint, enforced per second, told only by the headers
    models = ["near", "middle", "far"]
    fakes = keyed(monkeypatch, servers, models, rpm_limit=rpm, burst_seconds=1, headers_per_minute=True,
                  latency=(0.02, 0.1, 0.3))
    db = tmp_path / "jobs.db"
    bp.create(db, **spec("three", count, models, endpoints=served(fakes)))
    started = time.monotonic()
    summary = run(db, "three", tmp_path)
    wall = time.monotonic() - started
    ideal = count / (rpm / 60)  # one endpoint's: its limit alone decides (3 s; the three one after another: 9 s)
    assert (summary.done, summary.failed, summary.requests, summary.exit_code) == (180, 0, 180, 0)
    assert wall / ideal <= 1.25, f"wall {wall:.2f} s is {wall / ideal:.2f} x one endpoint's ideal {ideal:.2f} s"
    for model, (fake, _) in fakes.items():
        # its own model only, with its own key (another's would be a 401), never over its limit (no 429)
        assert {entry["model"] for entry in fake.record} == {model}
        assert outcomes(fake) == Counter(ok=count)
        assert fake.answered() == Counter({f"Q{i}": 1 for i in range(count)})
    results = bp.export(db)
    assert Counter(item["model"] for item in results) == Counter(dict.fromkeys(models, count))
    assert {item["completion"]["model"] for item in results if item["model"] == "far"} == {"far"}


def test_per_model_limits_at_one_endpoint_are_learned_separately(servers: Start, tmp_path: Path) -> None:
    # one server limiting each model on its own, as OpenAI does: 10/s and 25/s, enforced per second
    fake = servers(rpm_limits={"slow": 600, "quick": 1500}, burst_seconds=1, headers_per_minute=True)
    db = tmp_path / "jobs.db"
    bp.create(db, **spec("two", 40, ["slow", "quick"]))
    summary = run(db, "two", tmp_path, base_url=fake.url, api_key=API_KEY)
    assert (summary.done, summary.requests, summary.exit_code) == (80, 80, 0)
    # each model within its own limit: not one 429, though a limiter shared by both would have learned
    # the quick one's limit for the slow one too (or the slow one's for both: then the quick one waits)
    assert outcomes(fake) == Counter(ok=80)
    slow, quick = oks(fake, "slow"), oks(fake, "quick")
    start = min(slow[0], quick[0])
    # the slow one needs (40 - 10) / 10 = 3 s; the quick one (40 - 25) / 25 = 0.6 s, at its own pace
    assert quick[-1] - start < 0.5 * (slow[-1] - start)
    assert slow[-1] - start >= 2.9  # the server's own limit: faster would have been refused


def test_a_refused_key_at_one_endpoint_stops_only_its_models(
    servers: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ["a", "b", "c"]
    fakes = keyed(monkeypatch, servers, models, latency=0.02)
    refusing, _ = fakes["b"]
    refusing.configure(api_key="sk-not-the-key-in-the-environment")
    db = tmp_path / "jobs.db"
    bp.create(db, **spec("mixed", 30, models, endpoints=served(fakes)))
    with pytest.raises(bp.FatalAPIError) as info:
        run(db, "mixed", tmp_path)
    assert info.value.endpoint == refusing.url and refusing.url in str(info.value) and "401" in str(info.value)
    assert statuses_by_model(db) == Counter({("a", "done"): 30, ("c", "done"): 30, ("b", "pending"): 30})
    assert outcomes(fakes["a"][0]) == outcomes(fakes["c"][0]) == Counter(ok=30)
    assert outcomes(refusing) == Counter(error_401=1)  # the careful start: one request, refused, no retry

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("mixed", 30, models, endpoints=served(fakes))))
    out = run_cli("run", str(spec_file), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), "--quiet",
                  env=cli_env(None, tmp_path), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"the API refused the run at {refusing.url}" in out.stderr and "sk-endpoint" not in out.stderr
    assert statuses_by_model(db) == Counter({("a", "done"): 30, ("c", "done"): 30, ("b", "pending"): 30})
    assert outcomes(fakes["a"][0]) == Counter(ok=30)  # nothing more was asked of the others


def test_a_missing_key_variable_is_exit_2_before_anything_is_sent(
    servers: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ["a", "b"]
    fakes = keyed(monkeypatch, servers, models)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("keys", 5, models, endpoints=served(fakes))))
    env = cli_env(None, tmp_path)
    del env["BP_TEST_KEY_1"]
    out = run_cli("run", str(spec_file), "--db", str(tmp_path / "jobs.db"), "--quiet", env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert "no API key for model 'b': set the environment variable BP_TEST_KEY_1" in out.stderr
    assert fakes["a"][0].record == [] and fakes["b"][0].record == []  # not even the model with its key
    assert not (tmp_path / "jobs.db").exists()  # refused before the job was recorded: nothing to undo


def spans_of(fake: FakeServer, model: str) -> float:
    times = oks(fake, model)
    return times[-1] - times[0]


@pytest.mark.parametrize(
    ("spec_rates", "option", "paced"),
    [
        ({"rpm": 120}, None, {"a", "b"}),  # a number: every model, each at that rate on its own
        ({"rpm": {"a": 120}}, None, {"a"}),  # a mapping: only the model it names
        ({"tpm": {"b": 1200}}, None, {"b"}),  # tokens: 10 per request as estimated here, so 2 requests a second
        ({"rpm": {"a": 120}}, ["--rpm", "b=120"], {"a", "b"}),  # the option for b, the spec's for a
        ({"rpm": 120}, ["--rpm", "60000"], set()),  # the option for every model, over the spec's
        ({"rpm": 120}, ["--rpm", "a=60000,b=60000"], set()),
    ],
)
def test_rates_as_a_number_or_by_model_from_the_spec_or_the_command_line(
    fake: FakeServer, tmp_path: Path, spec_rates: dict[str, Any], option: list[str] | None, paced: set[str]
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("rates", 5, ["a", "b"], **spec_rates)))
    out = run_cli("run", str(spec_file), "--db", str(tmp_path / "jobs.db"), "--cache-dir", str(tmp_path / "c"),
                  "--quiet", *(option or []), env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert outcomes(fake) == Counter(ok=10)
    for model in ("a", "b"):
        span = spans_of(fake, model)
        if model in paced:  # 2 at once (a bucket of one second), then one every 0.5 s
            assert 1.4 <= span <= 2.1, (model, span)
        else:  # told a high rate, or not told and the server says nothing: no wait but the careful start's
            assert span < 0.5, (model, span)


def test_a_rate_for_a_model_no_job_has_is_refused(fake: FakeServer, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("rates", 5, ["a", "b"])))
    out = run_cli("run", str(spec_file), "--db", str(tmp_path / "jobs.db"), "--quiet", "--tpm", "a=100,gpt-4o=5",
                  env=cli_env(fake, tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "tpm names model 'gpt-4o', which no job of this run has" in out.stderr
    assert fake.record == []
    for bad in ("a=", "=5", "a=1,a=2", "a=0", "a=inf"):
        out = run_cli("run", str(spec_file), "--db", str(tmp_path / "jobs.db"), "--rpm", bad,
                      env=cli_env(fake, tmp_path), cwd=tmp_path)
        assert out.returncode == 2 and "--rpm" in out.stderr and "Traceback" not in out.stderr, bad
    assert fake.record == []


def test_concurrency_is_the_total_in_flight_shared_fairly_with_a_slow_endpoint(
    servers: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    latency = {"slow": 1.0, "quick": 0.05, "brisk": 0.05}
    fakes = keyed(monkeypatch, servers, list(latency), latency=tuple(latency.values()))
    db = tmp_path / "jobs.db"  # two jobs of one file, run side by side by one resume
    bp.create(db, **spec("slow", 20, ["slow"], endpoints=served({"slow": fakes["slow"]})))
    bp.create(db, **spec("quick", 120, ["quick", "brisk"], endpoints=served({m: fakes[m] for m in ("quick", "brisk")})))
    options = {"retry": RetryPolicy.no_wait(), "quiet": True, "cache_dir": str(tmp_path / "cache")}
    summary = bp.resume(db, concurrency=6, rpm=600_000, **options)  # told: no careful start to hide behind
    assert (summary.done, summary.exit_code) == (260, 0)
    spans = [(e["t"], e["t"] + latency[model], model) for model, (fake, _) in fakes.items() for e in fake.record]
    assert all(e["outcome"] == "ok" for fake, _ in fakes.values() for e in fake.record)
    arrivals = sorted(start for start, _, _ in spans)
    assert max(sum(in_flight(spans, t).values()) for t in arrivals) == 6  # the whole concurrency, never more
    # while the quick endpoints have work, each model holds its fair share, 2: the slow one's requests,
    # which last 20 times longer, do not take the slots a quick one frees (after the first round, in which
    # whichever model asked first may hold them all)
    quick_end = max(start for start, _, model in spans if model != "slow")
    first_round = min(arrivals) + latency["slow"] + 0.1
    busy = [in_flight(spans, t) for t in arrivals if first_round <= t <= quick_end - 0.1]
    assert len(busy) > 100 and all(counts["slow"] <= 2 for counts in busy)
    assert max(counts["quick"] for counts in busy) == max(counts["brisk"] for counts in busy) == 2
    # and once they are done, the slow one gets them all
    assert max(in_flight(spans, t)["slow"] for t in arrivals if t > quick_end) == 6


def test_the_careful_start_ramps_up_unless_told_the_limit(fake: FakeServer, servers: Start, tmp_path: Path) -> None:
    # a server that declares no limits (no x-ratelimit-* header in its first answer): one request, then all
    fake.configure(latency=0.25)
    db = tmp_path / "ramp.db"
    bp.create(db, **spec("ramp", 40, ["m"]))
    run(db, "ramp", tmp_path, base_url=fake.url, api_key=API_KEY)
    assert waves(oks(fake), gap=0.12) == [1, 39]

    # told the limit: no ramp, everything at once (as fast as without a careful start)
    fake.reset()
    db = tmp_path / "told.db"
    bp.create(db, **spec("told", 40, ["m"]))
    run(db, "told", tmp_path, base_url=fake.url, api_key=API_KEY, rpm=60_000, cache_dir=str(tmp_path / "told"))
    assert waves(oks(fake), gap=0.12) == [40]

    # a server whose headers say the limit (1,000 a second): the ramp goes on until its window holds that
    # many (a whole second's worth sent at once would reach the server over the time it takes to send)
    limited = servers(latency=0.25, rpm_limit=60_000, burst_seconds=1, headers_per_minute=True)
    db = tmp_path / "learnt.db"
    bp.create(db, **spec("learnt", 40, ["m"]))
    run(db, "learnt", tmp_path, base_url=limited.url, api_key=API_KEY, cache_dir=str(tmp_path / "learnt"))
    assert waves(oks(limited), gap=0.12) == [1, 2, 4, 8, 16, 9]


def test_status_and_progress_per_model_over_several_endpoints(
    servers: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ["a", "b", "c"]
    fakes = keyed(monkeypatch, servers, models, latency=(0.0, 3.0, 0.0))  # b is slow
    fakes["c"][0].configure(api_key="sk-not-the-key-in-the-environment")  # c refuses the run
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("per-model", 10, models, endpoints=served(fakes))))
    db = tmp_path / "jobs.db"
    env = cli_env(None, tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "batch_prompt", "run", str(spec_file), "--db", str(db), "--rpm", "60000",
         "--cache-dir", str(tmp_path / "cache")], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    ) as proc:
        deadline = time.monotonic() + 30
        while len(fakes["a"][0].record) < 10:  # a's answered (b's, sent with them, take 3 s more)
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        mid = run_cli("status", str(db), env=env, cwd=tmp_path)
        assert fakes["b"][0].record == []  # (its server records a request once it has answered it)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    urls = {model: fake.url for model, (fake, _) in fakes.items()}
    # while b's requests were in flight, its rows were running (c's too: held until the run ends)
    assert f"  b: 0 of 10 done, 10 running (at {urls['b']})" in mid.stdout.splitlines()
    # the run's last progress lines, one per model (stderr is not a terminal: plain lines)
    final = [line.split(" ", 2)[2] for line in stderr.splitlines() if line[:2] == "20" and ": " in line][-3:]
    assert [re.sub(r"\d+\.\d/s", "R/s", line) for line in final] == [  # the rates depend on the machine
        "  a: 10 done, 0 failed, 0 cached, 0 in flight, R/s, tokens 10+30",
        "  b: 10 done, 0 failed, 0 cached, 0 in flight, R/s, tokens 10+30",
        "  c: 0 done, 0 failed, 0 cached, 0 in flight, R/s, tokens 0+0",
    ]
    after = {m.model: m for m in bp.status(db)[0].models}
    assert {model: (m.done, m.pending, m.running, m.requests, m.endpoint) for model, m in after.items()} == {
        "a": (10, 0, 0, 10, urls["a"]), "b": (10, 0, 0, 10, urls["b"]), "c": (0, 10, 0, 0, urls["c"])}
    # told the rate, so no careful start: c's first ten went at once, each refused once, none retried
    assert [outcomes(fakes[model][0]) for model in models] == [Counter(ok=10), Counter(ok=10), Counter(error_401=10)]
    text = run_cli("status", str(db), env=env, cwd=tmp_path).stdout.splitlines()
    assert f"  c: 0 of 10 done, 10 pending (at {urls['c']})" in text
    assert f"  a: 10 of 10 done; 10 + 30 tokens: no known price (at {urls['a']})" in text
