"""`--mode auto --deadline`: planning each job (`plan.py` decides; this gathers what it decides on) and keeping
to the plan while the run goes (`Watch`).

A job in auto mode has live lanes held behind a gate (`Lane.gate`) while its batches work. `Watch` looks at
its open batches every poll: once the prompts they have not answered can only just be finished live by the
deadline (`plan.take_back_at`, from the counts the provider reports), it takes them back: no new batch is
submitted, the open ones are cancelled (`BatchEngine.take_back`), and only when each has ended and been
collected does the gate open. So a line the provider completes after the decision (while cancelling) is in
the cancelled batch's output file and is recorded from it, and only the lines it never ran come back to
pending and go live: each prompt is paid for once. The gate also opens when the batches finish first (then
nothing is left to send) and when the run stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import BatchPromptError, ConfigError
from ..options import RunOptions
from ..spec import tokens
from ..spec.endpoints import Endpoint
from ..spec.spec import rate_for
from ..store.asyncstore import AsyncStore
from ..store.database import JobRow, Store
from .batch import BatchEngine
from .lanes import Lane
from .ledger import Ledger
from .plan import ASSUMED_SECONDS, Inputs, Plan, Rate, make_plan, take_back_at

LOOK_EVERY = 1.0  # seconds: the most the watch waits between two looks at a job's batches (its own counts)
LEARN_FROM = 20  # live requests a run must have made before its rate is kept as the job's learned rate


def is_auto(job: JobRow, opts: RunOptions) -> bool:
    """This run sends the job in auto mode: asked for, or the job keeps a deadline and no mode is given."""
    return opts.auto or (opts.mode is None and job.deadline_at is not None)


async def plan_job(store: AsyncStore, job: JobRow, endpoints: dict[str, Endpoint], opts: RunOptions,
                   now: float) -> tuple[Plan, Inputs]:
    """The job's plan now: at the deadline given (else the one it keeps). `ConfigError` when there is
    none, when it has passed, or when it cannot be met even live at a known rate."""
    deadline_at = opts.deadline_at(now) or job.deadline_at
    if deadline_at is None:
        raise ConfigError(f"--mode auto needs a --deadline (job {job.name!r} has none): e.g. --deadline 24h")
    found = await store.run(functools.partial(Store.unfinished_by_model, job=job))
    todo: dict[str, int] = {}
    for (model, status), count in found.items():
        if status in ("pending", "running"):
            todo[model] = todo.get(model, 0) + count
    in_batches = await store.in_batches(job)
    rates, worst = {}, None
    for model in job.spec["models"]:
        rates[model] = await _rate(store, job, model, opts)
        seen = await store.run(functools.partial(Store.worst_batch_seconds, endpoint=endpoints[model].identity,
                                                 model=model))
        worst = seen if worst is None or (seen is not None and seen > worst) else worst
    inputs = Inputs(now=now, deadline_at=deadline_at, todo=todo, in_batches=in_batches, rates=rates,
                    batch_window=opts.batch_window, batch_worst=worst, poll=opts.poll)
    return make_plan(inputs), inputs


async def _rate(store: AsyncStore, job: JobRow, model: str, opts: RunOptions) -> Rate:
    """A model's live rate: its rpm (and tpm, at a request's worst case), else what an earlier live run of
    the job reached, else an assumption from --concurrency."""
    rpm = rate_for(opts.rpm, model) or rate_for(job.spec.get("rpm"), model)
    tpm = rate_for(opts.tpm, model) or rate_for(job.spec.get("tpm"), model)
    rates: list[Rate] = []
    if rpm:
        rates.append(Rate(rpm / 60, f"rpm {rpm:g}"))
    if tpm:
        request = await store.run(lambda s: s.query(
            "SELECT request FROM prompts WHERE job_id = ? AND model = ? AND status != 'done' LIMIT 1",
            (job.id, model)))
        if request:
            most = sum(tokens.budget_parts(json.loads(request[0][0])))
            rates.append(Rate(tpm / 60 / max(1, most), f"tpm {tpm:g}"))
    if rates:
        return min(rates, key=lambda rate: rate.per_second)
    learned = (job.plan or {}).get("learned", {}).get(model)
    if learned:
        return Rate(float(learned), "learned")
    assumed = f"assumed: {opts.concurrency} in flight, {ASSUMED_SECONDS:g} s each"
    return Rate(opts.concurrency / ASSUMED_SECONDS, assumed, known=False)


@dataclass(eq=False)
class AutoJob:
    """A job run in auto mode: its plan, and the lanes that keep to it."""

    job: JobRow
    plan: Plan
    inputs: Inputs
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    batch_lanes: list[Lane] = field(default_factory=list)
    opened: float | None = None  # when the gate opened (time.monotonic())
    calls_then: dict[str, int] = field(default_factory=dict)  # per model: calls the run had made by then


class Watch:
    """Keeps the auto jobs of a run to their plans (see the module docstring)."""

    def __init__(self, jobs: list[AutoJob], engine: BatchEngine | None, ledger: Ledger, opts: RunOptions,
                 note: Callable[[str], None], stopping: Callable[[], bool]) -> None:
        self.jobs, self.engine, self.ledger, self.opts = jobs, engine, ledger, opts
        self.note, self.stopping = note, stopping
        self.taken_back = 0  # batches asked to cancel

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for auto in self.jobs:
                group.create_task(self._keep(auto), name=f"auto-{auto.job.name}")

    def _halted(self) -> bool:
        """The run stops, or its batch engine has ended (done, or its endpoint refused it)."""
        return self.stopping() or self.engine is None or self.engine.stopping

    async def _keep(self, auto: AutoJob) -> None:
        try:
            while not self._halted() and auto.batch_lanes:
                lanes = auto.batch_lanes
                if any(lane.no_batch_api for lane in lanes) and not any(lane.open for lane in lanes):
                    return  # a server without the Batch API: its prompts go live now
                left = await self._left(auto)
                if not sum(left.values()):
                    return  # every prompt answered (or failed): nothing to take back
                back = take_back_at(auto.inputs, left)
                if time.time() >= back or auto.plan.mode == "live":
                    await self._take_back(auto, left)
                    return
                await asyncio.sleep(min(self.opts.poll, LOOK_EVERY, max(0.0, back - time.time())))
        finally:
            refused = [lane.no_batch_api for lane in auto.batch_lanes if lane.no_batch_api]
            if refused:
                self.note(f"{refused[0]}: {auto.job.name} goes live")
                await self._went_live(auto)
            auto.opened = time.monotonic()
            auto.calls_then = {m: self.ledger.tally(auto.job.id, m).requests for m in auto.job.spec["models"]}
            auto.gate.set()

    async def _went_live(self, auto: AutoJob) -> None:
        """The job's plan and mode say live (status shows how it went): its endpoint has no Batch API."""
        if self.engine is None:
            return
        plan = {**(auto.job.plan or {}), **auto.plan.to_dict(), "mode": "live", "take_back_at": None,
                "take_back": None}
        auto.plan = Plan.from_dict(plan)
        with contextlib.suppress(BatchPromptError):  # (the run's own store failure is reported as such)
            await self.engine.store.run(functools.partial(
                Store.set_run_choices, job=auto.job, mode="live", fresh=bool(auto.job.fresh),
                deadline_at=auto.plan.deadline_at, plan=plan))

    async def remember_rates(self, store: AsyncStore) -> None:
        """Keep with each job's plan the live rate its prompts reached after the gate opened (when it sent
        at least `LEARN_FROM` requests): a later plan of the job with no rpm or tpm assumes it."""
        for auto in self.jobs:
            if auto.opened is None:
                continue
            seconds = time.monotonic() - auto.opened
            learned = {}
            for model, before in auto.calls_then.items():
                calls = self.ledger.tally(auto.job.id, model).requests - before
                if calls >= LEARN_FROM and seconds > 0:
                    learned[model] = calls / seconds
            if learned:
                plan = {**auto.plan.to_dict(), "learned": {**(auto.job.plan or {}).get("learned", {}), **learned}}
                await store.run(functools.partial(Store.set_plan, job=auto.job, plan=plan))

    async def _left(self, auto: AutoJob) -> dict[str, int]:
        """Per model, the prompts not answered yet: pending, or running (being submitted, or in a batch)
        less the lines of open batches that the provider has reported done."""
        assert self.engine is not None
        found = await self.engine.store.run(functools.partial(Store.unfinished_by_model, job=auto.job))
        left: dict[str, int] = {}
        for (model, status), count in found.items():
            if status in ("pending", "running"):
                left[model] = left.get(model, 0) + count
        for lane in auto.batch_lanes:
            for batch in lane.open.values():
                left[lane.model] = max(0, left.get(lane.model, 0) - batch.completed - batch.failed)
        return left

    async def _take_back(self, auto: AutoJob, left: dict[str, int]) -> None:
        """No new batch; cancel the open ones and wait until each has been collected."""
        assert self.engine is not None
        if any(lane.open for lane in auto.batch_lanes):
            self.note(f"taking back {sum(left.values()):,} prompts of {auto.job.name} from the Batch API to finish "
                      "them live by the deadline")
        asked: set[str] = set()
        for lane in auto.batch_lanes:
            lane.submit = False
        while not self._halted() and any(lane.open for lane in auto.batch_lanes):
            for lane in auto.batch_lanes:
                self.taken_back += await self.engine.take_back(lane, asked)
            await asyncio.sleep(self.opts.poll)


POLLS_TO_DEADLINE = 40  # in auto mode batches are looked at at least this often before the deadline
MIN_POLL = 0.2  # seconds


async def plan_jobs(store: AsyncStore, jobs: list[JobRow], endpoints: dict[tuple[int, str], Endpoint],
                    opts: RunOptions) -> tuple[dict[int, AutoJob], float]:
    """The auto jobs of a run (by job id), each with its plan, and the poll interval the run keeps to (the
    one asked for, shortened so that a near deadline is watched often enough: `POLLS_TO_DEADLINE` looks
    before it); a `ConfigError` for any job before any is kept."""
    now, autos = time.time(), {}
    chosen = [job for job in jobs if is_auto(job, opts)]
    deadlines = [d for d in (opts.deadline_at(now) or job.deadline_at for job in chosen) if d is not None]
    poll = opts.poll
    if deadlines:
        poll = min(opts.poll, max(MIN_POLL, (min(deadlines) - now) / POLLS_TO_DEADLINE))
    for job in chosen:
        mine = {model: endpoints[job.id, model] for model in job.spec["models"]}
        plan, inputs = await plan_job(store, job, mine, replace(opts, poll=poll), now)
        autos[job.id] = AutoJob(job, plan, inputs)
    return autos, poll
