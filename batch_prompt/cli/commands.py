"""The command line: parse, call one library function, render, map errors to exit codes.

This is the only module that prints or exits. Exit codes: 0 all done; 1 finished with prompts failed
(or left unfinished); 2 bad input or configuration (a one-line `batch-prompt: error: ...`); 130
interrupted (resume to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import shlex
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .. import job as jobs
from ..errors import BatchPromptError
from ..options import RunOptions, RunSummary
from ..reports.status import show, status, usage_doubts
from ..reports.text import estimate_lines, group_lines, plural, short, status_lines, summary_head, summary_notes
from ..results.export import ExportSummary, export
from .arguments import PROG, build_parser
from .render import money, view_lines

if TYPE_CHECKING:  # the estimate (and its expansion) loads only for the commands that estimate
    pass



class _Stderr:
    """stderr that goes quiet once its reader is gone (`run ... 2>&1 | head -1`): a broken pipe silences
    what a person would read, never the run (committing, renewing, exiting as it should)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return int(self.stream.write(text))
            except (OSError, ValueError):  # EPIPE, EIO (a terminal hung up); ValueError: closed under us
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None, prog: str = PROG, *, last: bool | None = None) -> int:
    """Run one command; its exit code. `last` (by default: when `argv` is None, the process's own command
    line, as `python -m batch_prompt` and the `batch-prompt` script call it): nothing runs after it but
    the process's exit, so the objects left are frozen out of the garbage collector first (its final
    passes over them took 0.1-0.3 s of the exit, after a run's last answer)."""
    last = argv is None if last is None else last
    stderr = sys.stderr
    sys.stderr = _Stderr(stderr)
    try:
        return _main(argv, prog)
    finally:
        sys.stderr = stderr
        if last:
            gc.freeze()


def _main(argv: Sequence[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except BatchPromptError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `status ... | head`: the reader is gone; nothing more to say, and nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except Exception as exc:  # a bug of ours: one line, and where its traceback went
        text = redact_secrets(traceback.format_exc())
        if args.debug:
            print(text, file=sys.stderr, end="")
        saved = _save_traceback(text)
        where = f"its traceback is in {saved}" if saved else "its traceback could not be saved"
        message = " ".join(redact_secrets(str(exc)).split())[:200]
        print(f"{PROG}: internal error (a bug in batch-prompt, please report it): {type(exc).__name__}: "
              f"{message}; {where}", file=sys.stderr)
        return 1


def redact_secrets(text: str) -> str:
    """`text` with the value of every environment variable that names a key masked (and key-like text)."""
    from ..run.failures import redact  # (it imports the openai SDK, which most commands never need)

    for name, value in os.environ.items():
        if any(word in name for word in ("KEY", "TOKEN", "SECRET")) and len(value) >= 8:
            text = redact(text, value)
    return redact(text)


def _save_traceback(text: str) -> str | None:
    """Write an internal error's traceback to a private file in the temporary folder; its path."""
    try:
        fd, path = tempfile.mkstemp(prefix="batch-prompt-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _say(text: str, stream: TextIO | None = None) -> None:
    """A line for a person (stderr by default). On a terminal narrower than the line it is wrapped between
    words, the rest indented, and a command in it goes on a line of its own, whole, to be copied; anywhere
    else (a log, a pipe) it stays one line."""
    stream = stream or sys.stderr
    try:
        columns = os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (OSError, ValueError, AttributeError):
        columns = 0
    if not columns or len(text) <= columns:
        print(text, file=stream)
        return
    at = text.find("python -m batch_prompt")
    head, command = (text[:at].rstrip(), text[at:]) if at > 0 else (text, "")
    lines = textwrap.wrap(head, columns, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    print("\n".join([*lines, *(["  " + command] if command else [])]), file=stream)


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm, timeout=args.timeout, grace=args.grace,
        max_attempts=args.max_attempts, cache=args.cache, cache_dir=args.cache_dir, mode=args.mode,
        deadline=args.deadline,
        max_cost=args.max_cost, prices=args.prices, lease_seconds=args.lease_seconds,
        service_tier=args.service_tier, flex_fallback=args.flex_fallback,
        batch_size=args.batch_size, batch_bytes=args.batch_bytes, poll=args.poll, wait=args.wait,
        base_url=args.base_url, quiet=args.quiet, handle_signals=True, raise_open_files=True, tune_gc=True,
    )


# Run options a resume needs again to do what the run did (--no-cache is kept with the job itself).
_RESUMED = ("concurrency", "rpm", "tpm", "timeout", "grace", "max_attempts", "cache_dir", "base_url", "batch_size",
            "batch_bytes", "poll", "max_cost", "prices", "lease_seconds", "quiet", "service_tier", "flex_fallback")


def resume_command(db: str, args: argparse.Namespace) -> str:
    """The command that continues this run as it was given."""
    return _command(["python", "-m", "batch_prompt.resume", db], args)


def _command(words: list[str], args: argparse.Namespace) -> str:
    """`words`, then the run options of `args` that are not their defaults."""
    defaults = vars(build_parser().parse_args(["resume", "DB"]))
    for name in _RESUMED:
        value = getattr(args, name, None)
        if value == defaults.get(name):
            continue
        option = "--" + name.replace("_", "-")
        if isinstance(value, dict):
            value = ",".join(f"{model}={rate:g}" for model, rate in value.items())
        words += [option] if value is True else [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _cmd_create(args: argparse.Namespace) -> int:
    job = jobs.create(args.db, args.spec)
    verb = "created" if job.created else "already recorded"
    print(f"job {job.name!r}: {job.n_prompts} prompts {verb} in {args.db}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..run.preflight import check_run
    from ..spec.spec import load_spec

    spec = load_spec(args.spec)
    if args.base_url:  # the endpoint chosen is the job's from now on
        spec = dataclasses.replace(spec, base_url=args.base_url)
    check_run([{**spec.identity(), **spec.run_fields()}], _options(args))  # bad input: nothing recorded
    fresh = None if args.cache is None else not args.cache
    job = jobs.create(args.db, spec, mode=args.mode, fresh=fresh, deadline=args.deadline)  # the run's choices, at once
    if not args.yes and not _confirmed(job, args):
        later = _command(["python", "-m", "batch_prompt", "run", args.spec, "--db", args.db], args) + " --yes"
        print(f"nothing sent; job {job.name!r} is recorded in {args.db}: to send it later, {later}", file=sys.stderr)
        return 0
    return _report(job.run(**vars(_options(args))), args.db, args, [job.name])


def _confirmed(job: jobs.Job, args: argparse.Namespace) -> bool:
    """On a terminal: show the estimate, and ask when the most it can cost is above --confirm-above (or
    unknown). With no terminal on stdin nothing can be asked: say so once, and go on."""
    counts = job.status()
    unsent = counts["pending"] + counts["running"]
    if not unsent:
        return True
    if not sys.stdin.isatty():
        print(f"{PROG}: not asking before sending: stdin is not a terminal (--yes: never ask)", file=sys.stderr)
        return True
    from ..reports.estimate import estimate

    result = estimate(args.spec, cache_dir=args.cache_dir, base_url=args.base_url, prices=args.prices)
    for line in estimate_lines(result):
        _say(line)
    batch = job.mode() == "batch"  # priced as it will be sent (recorded with the job by now)
    most = result.max_cost_batch if batch else result.max_cost_live
    if most is not None and most <= args.confirm_above:
        return True
    what = plural(unsent, "prompt")
    if unsent < result.prompts:
        what += f" ({result.prompts - unsent:,} of {result.prompts:,} are finished)"
    names = ", ".join(f"`{m}`" for m in result.unpriced)
    price = "the batch price" if batch else "list price"
    cost = f"at most {money(most)} at {price}" if most is not None else f"cost unknown (no known price for {names})"
    print(f"Send {what}, {cost}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print(file=sys.stderr)  # end of input: the question's line ends, and the answer is no
    return answer.strip().lower() in ("y", "yes")


def _cmd_resume(args: argparse.Namespace) -> int:
    return _report(jobs.resume(args.db, **vars(_options(args))), args.db, args)


def _report(summary: RunSummary, db: str, args: argparse.Namespace, names: list[str] | None = None) -> int:
    _say(summary_head(summary))
    doubts: dict[str, str] = {}
    if summary.paid:
        with contextlib.suppress(BatchPromptError):  # the file gone or locked: the run's own outcome stands
            doubts = usage_doubts(db, names)
        for name, text in doubts.items():
            _say(short(f"  {text}" if names and len(names) == 1 else f"  job {name!r}: {text}"))
    for line in summary_notes(summary):  # (then what is left, with the commands that do it)
        _say(line)
    if summary.in_batches and not summary.interrupted:
        _say(f"{summary.in_batches} prompts are in open batches at the provider: collect them with "
             f"{resume_command(db, args)}")
    if summary.larger_budget is not None and not summary.interrupted:  # the same budget would stop at once
        larger = argparse.Namespace(**{**vars(args), "max_cost": summary.larger_budget})
        _say(f"{plural(summary.unfinished, 'prompt')} pending: resume with a larger budget: "
             f"{resume_command(db, larger)}")
    elif (summary.interrupted and summary.left) or summary.unfinished:
        said = "interrupted" if summary.interrupted else f"{plural(summary.unfinished, 'prompt')} pending"
        _say(f"{said}: resume with: {resume_command(db, args)}")
    elif summary.failed_total:
        _say(f"{summary.failed_total} prompts failed: python -m batch_prompt retry-failed {db}, then resume")
    return summary.exit_code


def _cmd_cancel(args: argparse.Namespace) -> int:
    result = jobs.cancel(args.db, job=args.job, **vars(_options(args)))
    already = f" ({result.already} being cancelled already)" if result.already else ""
    print(f"{result.asked} open batches asked to cancel{already}; {result.summary.done} prompts answered by what "
          f"they completed, {result.summary.unfinished} pending again", file=sys.stderr)
    if result.summary.in_batches:
        print(f"{result.summary.in_batches} prompts are still in batches being cancelled: "
              f"{resume_command(args.db, args)} collects them", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    report = status(args.db, prices=args.prices, by=args.by)
    if args.json:
        print(json.dumps([job.to_dict() for job in report], indent=2))
        return 0
    for job in report:
        print("\n".join(status_lines(job) if args.by is None else group_lines(job)))
    if not report:
        print(f"no jobs in {args.db}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    summary = export(args.db, args.output, args.format, job=args.job, include=args.include)
    assert isinstance(summary, ExportSummary)
    shown = {"failed": summary.failed, "pending": summary.pending, "running": summary.running}
    kept = {"failed": "failed" in summary.included, "pending": "pending" in summary.included}
    kept["running"] = kept["pending"]
    left = [f"{count:,} {what}" for what, count in shown.items() if count and not kept[what]]
    rows = [f"{count:,} {what}" for what, count in shown.items() if count and kept[what]]
    print(f"{plural(summary.results, 'result')} written to {summary.path}"
          + (f" (with {' and '.join(rows)} prompts)" if rows else "")
          + (f"; {' and '.join(left)} prompts not exported" if left else ""))
    return 0


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    count = jobs.retry_failed(args.db, job=args.job, error_kind=args.error_type)
    kind = f" ({args.error_type})" if args.error_type else ""
    print(f"{count} failed prompts{kind} are pending again; run: python -m batch_prompt.resume {args.db}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from ..reports.estimate import estimate

    result = estimate(args.spec, prices=args.prices, cache_dir=args.cache_dir, base_url=args.base_url)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for line in estimate_lines(result):
        _say(line, sys.stdout)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    views = show(args.db, job=args.job, status=args.status, limit=args.limit, unparsed=args.unparsed)
    if args.json:
        print(json.dumps([view.to_dict() for view in views], indent=2, ensure_ascii=False))
        return 0
    for view in views:
        print("\n".join(view_lines(view)))
    if not views:
        what = "unparsed answers" if args.unparsed else f"{args.status + ' ' if args.status else ''}prompts"
        print(f"no {what} in {args.db}")
    return 0


COMMANDS = {
    "run": _cmd_run, "create": _cmd_create, "resume": _cmd_resume, "status": _cmd_status,
    "export": _cmd_export, "retry-failed": _cmd_retry_failed, "estimate": _cmd_estimate, "show": _cmd_show,
    "cancel": _cmd_cancel,
}


if __name__ == "__main__":
    sys.exit(main())
