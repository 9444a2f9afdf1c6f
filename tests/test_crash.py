"""Crashes, through real processes: SIGKILL at random points of `run`, during `create` and during `export`, then
recovery; several processes working on one job database at once. What was paid for is asserted from the fake
server's own record: no prompt missing, none answered twice except those in flight at a kill.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

import batch_prompt as bp
from batch_prompt.testing import FakeServer

from . import helpers_trials as trials
from .conftest import run_cli
from .helpers_procs import (
    Proc,
    Procs,
    chat_spec,
    check_export,
    fill_done,
    integrity,
    ok_times,
    prompts_of,
    resume_args,
    run_args,
    statuses,
    write_spec,
)

# A prompt answered by the server before a kill and again after it must have been in flight at the kill:
# its first answer arrived at most this long before the kill (the latency is 20-50 ms; the rest is slack for
# a loaded machine). Answers that arrived earlier than that were paid for and must have been kept.
IN_FLIGHT_WINDOW = 1.0


# --- kill anywhere ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Trial:
    number: int
    prompts: list[str] = dataclasses.field(repr=False)
    n: int
    concurrency: int
    kills: list[float] = dataclasses.field(default_factory=list)
    phases: list[str] = dataclasses.field(default_factory=list)


def phase_of(db: Path) -> str:
    """Where a killed process was, read from what it left: no database, no job, creating, or how far it ran."""
    if not db.exists():
        return "no-db"
    conn = sqlite3.connect(db)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "jobs" not in tables:
            return "no-schema"
        job = conn.execute("SELECT state, n_prompts FROM jobs").fetchone()
        if job is None:
            return "no-job"
        if job[0] != "ready":
            return str(job[0])
        done = conn.execute("SELECT count(*) FROM prompts WHERE status = 'done'").fetchone()[0]
    finally:
        conn.close()
    return "ready-0" if done == 0 else "complete" if done == job[1] else "running"


def check_paid_once(fake: FakeServer, trial: Trial) -> int:
    """Every prompt answered; any answered again was in flight at one of the kills. Returns how many were."""
    times = ok_times(fake, trial.prompts)
    missing = [p for p in trial.prompts if p not in times]
    assert missing == [], f"trial {trial.number}: never answered: {missing[:5]}"
    twice = {p: sorted(ts) for p, ts in times.items() if len(ts) > 1}
    assert len(twice) <= trial.concurrency * len(trial.kills), f"{len(twice)} prompts answered again: {trial}"
    for prompt, ts in twice.items():
        assert len(ts) <= 1 + len(trial.kills), (trial.number, prompt, ts)
        for before, after in itertools.pairwise(ts):
            # some kill fell between the two answers, and the first was still in flight then
            assert any(before - IN_FLIGHT_WINDOW < kill and after > kill for kill in trial.kills), (
                f"trial {trial.number}: {prompt!r} answered at {[t - trial.kills[0] for t in ts]} s "
                f"relative to the first kill; kills at {[k - trial.kills[0] for k in trial.kills]}"
            )
    return len(twice)


RUN_TRIALS, RUN_TRIALS_PICKED = 24, 4  # scripts/kill_trials makes all 24


def early(number: int) -> bool:
    """A third of the trials kill around start-up (opening, migrating, creating, first claims), the rest
    while requests are in flight (or just after the end)."""
    return number % 3 == 0


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_loses_nothing_and_pays_once(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    numbers = trials.pick("sigkill-run", RUN_TRIALS, RUN_TRIALS_PICKED)
    if not any(early(number) for number in numbers):  # each kind in every run
        numbers[0] = next(number for number in range(RUN_TRIALS) if early(number) and number not in numbers)
    if all(early(number) for number in numbers):
        numbers[0] = next(number for number in range(RUN_TRIALS) if not early(number) and number not in numbers)
    print(f"{trials.header()}: sigkill-run trials {sorted(numbers)}")
    fake.configure(latency=0.02, latency_jitter=0.03, seed=5)

    # Calibrate on this machine: when does a run send its first request, and when its last?
    spec = chat_spec(300, "calibrate")
    folder = tmp_path / "calibrate"
    folder.mkdir()
    started = time.monotonic()
    proc = procs.run(*run_args(write_spec(folder, spec), folder / "jobs.db", folder / "cache", 16))
    assert proc.popen.returncode == 0, proc.stderr
    ts = sorted(entry["t"] - started for entry in fake.record)
    first, last = ts[0], ts[-1]

    done_trials, resent = [], 0
    for number in sorted(numbers):
        rng = trials.rng("sigkill-run", number)
        which = trials.replay("sigkill-run", number)
        fake.reset()
        folder = tmp_path / f"trial{number}"
        folder.mkdir()
        db, cache = folder / "jobs.db", folder / "cache"
        count, n, concurrency = rng.randint(200, 400), rng.choice([1, 2, 3]), rng.choice([8, 16, 32])
        spec = chat_spec(count, f"t{number}", n=n)
        trial = Trial(number, prompts_of(spec), n, concurrency)
        done_trials.append(trial)
        spec_path = write_spec(folder, spec)
        delay = rng.uniform(0.7, 1.05) * first if early(number) else rng.uniform(first, last + 0.2)
        proc = procs.start(*run_args(spec_path, db, cache, concurrency))
        time.sleep(delay)  # (the instant of the kill is the trial's variable: a fixed delay, on purpose)
        trial.kills.append(proc.kill())
        trial.phases.append(phase_of(db))

        if trial.phases[-1] in ("ready-0", "running") and rng.random() < 1 / 3:
            # Kill the resume too, somewhere.
            proc = procs.resume(*resume_args(db, cache, concurrency))
            time.sleep(rng.uniform(0.8 * first, first + 0.5))
            trial.kills.append(proc.kill())
            trial.phases.append(phase_of(db))

        # The recovery need not be a process of its own (it runs in this one): the killed ones are dead.
        if trial.phases[-1] in ("ready-0", "running", "complete"):
            out = run_cli(*resume_args(db, cache, concurrency), module="batch_prompt.resume", env=procs.env)
        else:  # killed before the job was recorded: the same command again (see test_sigkill_during_create)
            out = run_cli(*run_args(spec_path, db, cache, concurrency), env=procs.env)
        assert out.returncode == 0, f"{which} ({trial.phases}): {out.stderr}"

        assert integrity(db) == "ok", which
        assert statuses(db) == Counter({"done": count}), (which, trial)
        check_export(db, trial.prompts, n)
        resent += check_paid_once(fake, trial)

    phases = Counter(phase for trial in done_trials for phase in trial.phases)
    print(f"kill phases: {dict(phases)}; prompts answered again after a kill (in flight): {resent}")
    # The delays are calibrated, so most kills after start-up hit a run with requests in flight (all 24
    # trials: 8 of the 16).
    late = sum(1 for number in numbers if not early(number))
    assert phases["running"] >= max(1, late // 2), (phases, trials.header(), sorted(numbers))


def hashes_of(db: Path) -> list[str]:
    """The job database's prompt hashes in export order."""
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT hash FROM prompts ORDER BY id")]
    finally:
        conn.close()


def private_files(db: Path) -> list[Path]:
    """The private files a create of a new database writes before linking it at `db` (see `job._record`)."""
    return sorted(db.parent.glob(f".{db.name}.*.creating*"))


def wait_for_private_file(db: Path, proc: Proc, timeout: float = 30) -> float:
    """The `time.monotonic()` at which a create's private file for `db` appeared (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not private_files(db):
        assert proc.popen.poll() is None and time.monotonic() < deadline, f"no private file for {db} appeared"
        time.sleep(0.002)
    return time.monotonic()


def test_sigkill_during_create_then_resume(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    """A create of a new database killed half-way leaves no database at all (only its private file, which
    the next create clears); `resume` and `status` find nothing there; the same spec again records every
    prompt, exactly as a clean create does."""
    count = 45_000
    spec = chat_spec(count, "big", n=1)
    spec_path = write_spec(tmp_path, spec)
    # A clean create first: the reference, and how long creating takes once the database is being written.
    clean = tmp_path / "clean.db"
    proc = procs.start("create", str(spec_path), "--db", str(clean))
    appeared = wait_for_private_file(clean, proc)
    assert proc.wait() == 0, proc.stderr
    creating = time.monotonic() - appeared
    assert clean.exists() and private_files(clean) == []

    db = tmp_path / "jobs.db"
    proc = procs.start("create", str(spec_path), "--db", str(db))
    time.sleep(max(0.0, wait_for_private_file(db, proc) + creating / 2 - time.monotonic()))
    assert proc.popen.poll() is None, "the create ended before the kill"
    proc.kill()
    print(f"killed after {creating / 2:.2f} s of a {creating:.2f} s create")

    assert not db.exists(), "a killed create of a new database left a file at its path"
    assert private_files(db) != []
    resumed = run_cli(*resume_args(db, tmp_path / "cache"), module="batch_prompt.resume", env=procs.env)
    for out in (resumed, run_cli("status", str(db))):
        assert out.returncode == 2 and f"no job database at {db}" in out.stderr, out.stderr
    assert fake.record == []

    again = run_cli("create", str(spec_path), "--db", str(db))
    assert again.returncode == 0, again.stderr
    assert len(hashes_of(db)) == count and hashes_of(db) == hashes_of(clean)
    assert private_files(db) == []  # the killed create's file is gone with its process


# --- kill during export ----------------------------------------------------------------------------


EXPORT_TRIALS, EXPORT_TRIALS_PICKED = 10, 4  # scripts/kill_trials makes all 10


def test_sigkill_during_export_never_leaves_a_half_written_file(procs: Procs, tmp_path: Path) -> None:
    numbers = trials.pick("sigkill-export", EXPORT_TRIALS, EXPORT_TRIALS_PICKED)
    print(f"{trials.header()}: sigkill-export trials {numbers}")
    db = tmp_path / "jobs.db"
    spec = chat_spec(30_000, "export " + "padding " * 20, n=2)
    bp.create(db, **spec)
    fill_done(db, 15_000)
    out = tmp_path / "results.pkl"
    assert run_cli("export", str(db), "-o", str(out), cwd=tmp_path).returncode == 0
    old = out.read_bytes()
    fill_done(db, 30_000)
    reference = tmp_path / "reference.pkl"
    started = time.monotonic()  # (a process, as the killed ones are: the kill instants are scaled by it)
    assert procs.run("export", str(db), "-o", str(reference)).popen.returncode == 0
    duration = time.monotonic() - started
    new = reference.read_bytes()
    assert new != old and len(bp.load_results(reference)) == 60_000

    seen: Counter[str] = Counter()
    for trial in numbers:
        which = trials.replay("sigkill-export", trial)
        had_old = trial % 3 != 2
        if had_old:
            out.write_bytes(old)
        else:
            out.unlink(missing_ok=True)
        proc = procs.start("export", str(db), "-o", str(out))
        time.sleep(trials.rng("sigkill-export", trial).uniform(0.3, 1.1) * duration)  # the trial's instant
        proc.kill()
        if not out.exists():
            assert not had_old, f"{which}: the old export was removed"
            seen["absent"] += 1
            continue
        content = out.read_bytes()
        kind = "old" if content == old else "new" if content == new else "torn"
        assert kind in (("old", "new") if had_old else ("new",)), (
            f"{which}: {out.name} holds {len(content)} bytes, neither the old nor the new export"
        )
        seen[kind] += 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".results.pkl.")]
    print(f"after the kill the export was: {dict(seen)}; temporary files left behind: {len(leftovers)}")
    assert seen["old"] + seen["absent"] > 0, (seen, trials.header(), numbers)  # some kills landed before the rename

    again = run_cli("export", str(db), "-o", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == new


# --- several processes on one database -------------------------------------------------------------


def summaries(processes: list[Proc]) -> list[str]:
    return [proc.stderr.strip() for proc in processes]


def test_three_resumers_share_the_work_and_send_each_prompt_once(
    fake: FakeServer, procs: Procs, tmp_path: Path
) -> None:
    fake.configure(latency=0.05, latency_jitter=0.05, seed=3)
    spec = chat_spec(600, "shared")
    db, cache = tmp_path / "jobs.db", tmp_path / "cache"
    created = run_cli("create", str(write_spec(tmp_path, spec)), "--db", str(db))
    assert created.returncode == 0, created.stderr
    resumers = [procs.resume(*resume_args(db, cache, 8)) for _ in range(3)]
    codes = [proc.wait() for proc in resumers]
    errors = summaries(resumers)
    assert not any("locked" in text for text in errors), errors
    assert statuses(db) == Counter({"done": 600})
    assert fake.answered() == Counter({p: 1 for p in prompts_of(spec)})
    check_export(db, prompts_of(spec), 2)
    done = [int(text.split()[1]) for text in errors]
    assert sum(done) == 600 and sum(1 for d in done if d > 0) >= 2, errors  # they really did share it
    assert codes == [0, 0, 0], errors


def test_two_creates_of_one_spec_at_once_record_it_once(procs: Procs, tmp_path: Path) -> None:
    """The same `create` started twice at once (two terminals): a big spec, so the second arrives while the
    first is still inserting. Both succeed and the job holds each prompt once, as a clean create does."""
    spec = chat_spec(100_000, "twice", n=1)
    spec_path, db = write_spec(tmp_path, spec), tmp_path / "jobs.db"
    creators = [procs.start("create", str(spec_path), "--db", str(db)) for _ in range(2)]
    codes = [proc.wait() for proc in creators]
    assert codes == [0, 0], summaries(creators)
    clean = tmp_path / "clean.db"
    bp.create(clean, **spec)
    hashes = hashes_of(db)
    assert (len(hashes), len(set(hashes))) == (100_000, 100_000)
    assert hashes == hashes_of(clean)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT name, state, n_prompts FROM jobs").fetchall() == [("chat", "ready", 100_000)]
    conn.close()


def test_three_runs_of_one_spec_at_once_on_a_new_database(fake: FakeServer, procs: Procs, tmp_path: Path) -> None:
    """Three terminals (or a cluster array job) start the same `run` on a database that does not exist yet:
    one job, each prompt recorded once and sent once, and each process exits 0 (the job is done)."""
    fake.configure(latency=0.01, latency_jitter=0.01, seed=4)
    spec = chat_spec(1500, "race", n=1)
    db, cache, spec_path = tmp_path / "jobs.db", tmp_path / "cache", write_spec(tmp_path, spec)
    runners = [procs.start(*run_args(spec_path, db, cache, 16)) for _ in range(3)]
    codes = [proc.wait() for proc in runners]
    errors = summaries(runners)
    assert not any("locked" in text for text in errors), errors
    conn = sqlite3.connect(db)
    jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    rows, distinct = conn.execute("SELECT count(*), count(DISTINCT hash) FROM prompts").fetchone()
    conn.close()
    assert (jobs, rows, distinct) == (1, 1500, 1500), "jobs, prompt rows, distinct prompts"
    answered = fake.answered()
    assert answered == Counter({p: 1 for p in prompts_of(spec)}), (
        f"{sum(1 for c in answered.values() if c > 1)} prompts answered twice"
    )
    assert statuses(db) == Counter({"done": 1500})
    check_export(db, prompts_of(spec), 1)
    assert codes == [0, 0, 0], errors
