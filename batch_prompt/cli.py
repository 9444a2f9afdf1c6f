"""The command line: parse, call one library function, render, map errors to exit codes.

This is the only module that prints or exits. Exit codes: 0 all done; 1 finished with prompts failed
(or left unfinished); 2 bad input or configuration (a one-line `batch-prompt: error: ...`); 130
interrupted (resume to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import job as jobs
from .endpoints import normalize_base_url
from .errors import BatchPromptError, ConfigError
from .failures import redact
from .options import RunOptions, RunSummary
from .pricing import unknown_price_message
from .progress import usd
from .report import STATUSES, JobStatus, ModelStatus, PromptView, show, status, usage_doubts
from .results import ExportSummary, export
from .table import messages_text
from .writer import FORMATS

if TYPE_CHECKING:  # the estimate (and its expansion) loads only for the commands that estimate
    from .preview import Estimate

PROG = "batch-prompt"
CONFIRM_ABOVE = 1.0  # USD: `run` asks on a terminal before it may spend more than this


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _positive_int(name: str) -> Callable[[str], int]:
    """An argparse type: a positive integer; the error names the option's value, as `RunOptions` does."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, not {text!r}")
        return value

    return parse


def _positive_float(name: str) -> Callable[[str], float]:
    """An argparse type: a finite positive number (`inf`, `nan`, `1e999`, 0 and below are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{name} must be positive and finite, not {text!r}")
        return value

    return parse


def _rate(name: str) -> Callable[[str], float | dict[str, float]]:
    """An argparse type: one rate for every model (`500`), or one per model (`gpt-4o-mini=500,llama=2000`)."""
    number = _positive_float(name)

    def parse(text: str) -> float | dict[str, float]:
        if "=" not in text:
            return number(text)
        rates: dict[str, float] = {}
        for item in text.split(","):
            model, _, value = item.rpartition("=")
            if not model.strip() or model.strip() in rates:
                raise argparse.ArgumentTypeError(
                    f"{name} must be a number, or MODEL=N for each model once, separated by commas, not {text!r}")
            rates[model.strip()] = number(value.strip())
        return rates

    return parse


def _usd(text: str) -> float:
    """An argparse type: an amount in USD, zero or more and finite."""
    try:
        value = float(text.removeprefix("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid amount: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be zero or more (USD), not {text!r}")
    return value


def _base_url(text: str) -> str:
    try:
        return normalize_base_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=_positive_int("concurrency"), default=100,
                        help="requests in flight (default 100)")
    learned = "for every model, or MODEL=N,MODEL=N per model (default: the spec's, else learned from the server)"
    parser.add_argument("--rpm", type=_rate("rpm"), metavar="N", help=f"requests per minute {learned}")
    parser.add_argument("--tpm", type=_rate("tpm"), metavar="N", help=f"tokens per minute {learned}")
    parser.add_argument("--timeout", type=_positive_float("timeout"), default=120.0,
                        help="seconds per request (default 120)")
    parser.add_argument("--max-attempts", type=_positive_int("max attempts"), default=8,
                        help="calls per prompt before it fails (default 8)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                       help="fresh samples: do not answer from the cache; the job remembers it for every resume")
    cache.add_argument("--cache", dest="cache", action="store_true",
                       help="answer from the cache again (a job run with --no-cache)")
    parser.add_argument("--grace", type=_positive_float("grace"),
                        help="seconds requests in flight get to arrive after Ctrl-C (default: --timeout)")
    parser.add_argument("--cache-dir", help="response cache folder (default ~/.cache/batch-prompt)")
    parser.add_argument("--base-url", type=_base_url, help="API endpoint (default $OPENAI_BASE_URL or OpenAI)")
    # How long a claim holds a row for this process before another may take it (tests shorten it).
    parser.add_argument("--lease-seconds", type=_positive_float("lease seconds"), default=300.0,
                        help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("live", "batch"),
                        help="live calls, or the provider's Batch API (default: the mode the job last ran in)")
    parser.add_argument("--batch-size", type=_positive_int("batch size"), default=50_000,
                        help="batch mode: most requests per batch (default 50,000)")
    parser.add_argument("--batch-bytes", type=_positive_int("batch bytes"), default=200_000_000,
                        help="batch mode: most bytes per batch file (default 200 MB)")
    parser.add_argument("--poll", type=_positive_float("poll"), default=10.0,
                        help="batch mode: seconds between first polls (backs off to under a minute; default 10)")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="batch mode: submit the batches, record them and exit; a later resume collects")
    parser.add_argument("--max-cost", type=_positive_float("max cost"), metavar="USD",
                        help="a budget: no request starts that could take the job's spend past it")
    parser.add_argument("--prices", metavar="FILE", help="price overrides (JSON or TOML, USD per million tokens)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--yes", action="store_true",
                        help="never ask before sending, and show no estimate (run asks on a terminal; resume never)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Query LLMs with large batches of prompts, resumably.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="create the job if needed, then send every unfinished prompt")
    p.add_argument("spec", help="spec file (JSON or TOML)")
    p.add_argument("--db", required=True, help="job database (created if missing)")
    _run_options(p)
    p.add_argument("--confirm-above", type=_usd, default=CONFIRM_ABOVE, metavar="USD",
                   help=f"on a terminal, ask before sending when the most it can cost is above this "
                        f"(default {CONFIRM_ABOVE:g}; a model with no known price always asks)")

    p = sub.add_parser("create", help="expand a spec and record its prompts; no API calls")
    p.add_argument("spec")
    p.add_argument("--db", required=True)

    p = sub.add_parser("resume", help="finish every unfinished prompt of every job in the file")
    p.add_argument("db")
    _run_options(p)

    p = sub.add_parser("cancel", help="cancel the open batches (batch mode); what they completed is kept")
    p.add_argument("db")
    p.add_argument("--job", metavar="NAME", help="only this job's batches")
    _run_options(p)

    p = sub.add_parser("status", help="per job: prompts by status, cached, tokens, cost so far, errors")
    p.add_argument("db")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--prices", metavar="FILE", help="price overrides (JSON or TOML, USD per million tokens)")

    p = sub.add_parser("export", help="write the results of done prompts (no API calls)")
    p.add_argument("db")
    p.add_argument("-o", "--output", required=True, help="results file")
    p.add_argument("--format", choices=FORMATS,
                   help="default: from the suffix (.jsonl .csv .parquet .db/.sqlite), else pickle")
    p.add_argument("--job", metavar="NAME", help="only this job")

    p = sub.add_parser("retry-failed", help="move failed prompts back to pending")
    p.add_argument("db")
    p.add_argument("--job", metavar="NAME", help="only this job")
    p.add_argument("--error-type", metavar="KIND", help="only this error kind, as status shows it")

    p = sub.add_parser("estimate", help="prompts, requests, tokens and cost of a spec; no database, no calls")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--prices", metavar="FILE", help="price overrides (JSON or TOML, USD per million tokens)")
    p.add_argument("--cache-dir", help="response cache folder (default ~/.cache/batch-prompt)")
    p.add_argument("--base-url", help="API endpoint whose cached answers count (default $OPENAI_BASE_URL or OpenAI)")

    p = sub.add_parser("show", help="list prompts with their answer or error")
    p.add_argument("db")
    p.add_argument("--job", metavar="NAME", help="only this job")
    p.add_argument("--status", choices=STATUSES, help="only prompts in this status")
    p.add_argument("--limit", type=_positive, default=20, help="at most this many per job (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output, answers in full")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="on an internal error, print its traceback (it is saved to a file anyway)")
    return parser


class _Stderr:
    """stderr that goes quiet once its reader is gone (`run ... 2>&1 | head -1`): a broken pipe silences
    what a person would read, never the run (committing, renewing, exiting as it should)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return int(self.stream.write(text))
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed under us
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    stderr = sys.stderr
    sys.stderr = _Stderr(stderr)
    try:
        return _main(argv, prog)
    finally:
        sys.stderr = stderr


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
    for name, value in os.environ.items():
        if name.endswith("_KEY") and len(value) >= 8:
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


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm, timeout=args.timeout, grace=args.grace,
        max_attempts=args.max_attempts, cache=args.cache, cache_dir=args.cache_dir, mode=args.mode,
        max_cost=args.max_cost, prices=args.prices, lease_seconds=args.lease_seconds,
        batch_size=args.batch_size, batch_bytes=args.batch_bytes, poll=args.poll, wait=args.wait,
        base_url=args.base_url, quiet=args.quiet, handle_signals=True, raise_open_files=True, tune_gc=True,
    )


# Run options a resume needs again to do what the run did (--no-cache is kept with the job itself).
_RESUMED = ("concurrency", "rpm", "tpm", "timeout", "grace", "max_attempts", "cache_dir", "base_url", "batch_size",
            "batch_bytes", "poll", "max_cost", "prices", "lease_seconds", "quiet")


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
    job = jobs.create(args.db, args.spec)
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
    from .preview import estimate

    result = estimate(args.spec, cache_dir=args.cache_dir, base_url=args.base_url, prices=args.prices)
    for line in _estimate_lines(result):
        print(line, file=sys.stderr)
    most = result.max_cost_live
    if most is not None and most <= args.confirm_above:
        return True
    what = _n(unsent, "prompt")
    if unsent < result.prompts:
        what += f" ({result.prompts - unsent:,} of {result.prompts:,} are finished)"
    names = ", ".join(f"`{m}`" for m in result.unpriced)
    cost = f"at most {_money(most)} at list price" if most is not None else f"cost unknown (no known price for {names})"
    print(f"Send {what}, {cost}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print(file=sys.stderr)  # end of input: the question's line ends, and the answer is no
    return answer.strip().lower() in ("y", "yes")


def _cmd_resume(args: argparse.Namespace) -> int:
    return _report(jobs.resume(args.db, **vars(_options(args))), args.db, args)


def _report(summary: RunSummary, db: str, args: argparse.Namespace, names: list[str] | None = None) -> int:
    line = (
        f"done {summary.done} ({summary.cached} from cache), failed {summary.failed}, requests {summary.requests}, "
        f"tokens {summary.prompt_tokens}+{summary.completion_tokens}" + usd(summary.cost_usd)
    )
    print(line, file=sys.stderr)
    doubts: dict[str, str] = {}
    if summary.paid:
        with contextlib.suppress(BatchPromptError):  # the file gone or locked: the run's own outcome stands
            doubts = usage_doubts(db, names)
        for name, text in doubts.items():
            print(_short(f"  {text}" if names and len(names) == 1 else f"  job {name!r}: {text}"), file=sys.stderr)
    for kind, count in summary.errors.most_common():
        print(_short(f"  {count} x {kind}, e.g. {summary.error_examples.get(kind, '')}"), file=sys.stderr)
    if summary.abandoned:
        print(f"{summary.abandoned} requests in flight were abandoned: their answers are lost", file=sys.stderr)
    if summary.running_elsewhere:
        print(f"{summary.running_elsewhere} prompts are being answered by another process", file=sys.stderr)
    for line in summary.budget_reached:
        print(line, file=sys.stderr)
    if summary.batches_submitted:
        print(f"{summary.batches_submitted} batches submitted", file=sys.stderr)
    if summary.in_batches and not summary.interrupted:
        print(f"{summary.in_batches} prompts are in open batches at the provider: collect them with "
              f"{resume_command(db, args)}", file=sys.stderr)
    if summary.interrupted or summary.unfinished:
        print(f"interrupted: resume with: {resume_command(db, args)}", file=sys.stderr)
    elif summary.failed_total:
        print(f"{summary.failed_total} prompts failed: python -m batch_prompt retry-failed {db}, then resume",
              file=sys.stderr)
    return summary.exit_code


def _cmd_cancel(args: argparse.Namespace) -> int:
    result = jobs.cancel(args.db, job=args.job, **vars(_options(args)))
    print(f"{result.asked} open batches asked to cancel; {result.summary.done} prompts answered by what they "
          f"completed, {result.summary.unfinished} pending again", file=sys.stderr)
    if result.summary.in_batches:
        print(f"{result.summary.in_batches} prompts are still in batches being cancelled: "
              f"{resume_command(args.db, args)} collects them", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    report = status(args.db, prices=args.prices)
    if args.json:
        print(json.dumps([job.to_dict() for job in report], indent=2))
        return 0
    for job in report:
        print("\n".join(_status_lines(job)))
    if not report:
        print(f"no jobs in {args.db}")
    return 0


def _status_lines(job: JobStatus) -> list[str]:
    where = ", ".join([job.api, job.mode, *(["incomplete create"] if job.state != "ready" else [])])
    lines = [f"{job.job} ({where}): {job.done:,} of {_n(job.total, 'prompt')} done"
             + (f" ({job.cached:,} from the cache)" if job.cached else "") + _unfinished(job)]
    if job.requests:
        paid = f"  {_n(job.requests, 'request')} paid for: {job.prompt_tokens:,} prompt + " \
               f"{job.completion_tokens:,} completion tokens"
        if job.cost is None:
            lines += [paid, _short(f"  cost unknown: {unknown_price_message(job.unpriced)}")]
        else:
            lines.append(f"{paid}: ~{_money(job.cost)} at list price")
    else:
        lines.append("  nothing paid for yet")
    if job.usage_doubt:
        lines.append(f"  {job.usage_doubt}")
    if len(job.models) > 1:
        several = len({m.endpoint for m in job.models}) > 1  # then each model says where it is served
        for m in job.models:
            cost = "no known price" if m.cost is None else f"~{_money(m.cost)}"
            tokens = f"; {m.prompt_tokens:,} + {m.completion_tokens:,} tokens: {cost}"
            where = f" (at {m.endpoint or 'the default endpoint'})" if several else ""
            lines.append(_short(f"  {m.model}: {m.done:,} of {m.total:,} done"
                                + (f" ({m.cached:,} cached)" if m.cached else "") + _unfinished(m)
                                + (tokens if m.requests else "") + where))
    open_batches = [b for b in job.batches if b.state not in ("collected", "returned")]
    if job.batches:
        lines.append(f"  batches: {len(open_batches)} open, {len(job.batches) - len(open_batches)} settled")
        for b in open_batches:
            lines.append(_short(f"    {b.id or '(being submitted)'} {b.status or b.state}: {b.completed + b.failed:,} "
                                f"of {b.requests:,} requests done"))
    for group in job.errors:
        lines += [f"  {group.count:,} failed with {group.kind}, e.g.:", _short(f"    {group.example}")]
    return lines


def _unfinished(counts: JobStatus | ModelStatus) -> str:
    parts = [f"{getattr(counts, key):,} {key}" for key in ("pending", "running", "failed") if getattr(counts, key)]
    return ", " + ", ".join(parts) if parts else ""


def _cmd_export(args: argparse.Namespace) -> int:
    summary = export(args.db, args.output, args.format, job=args.job)
    assert isinstance(summary, ExportSummary)
    left = [f"{count:,} {what}" for what, count in
            (("failed", summary.failed), ("pending", summary.pending), ("running", summary.running)) if count]
    print(f"{_n(summary.results, 'result')} written to {summary.path}"
          + (f"; {' and '.join(left)} prompts not exported" if left else ""))
    return 0


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    count = jobs.retry_failed(args.db, job=args.job, error_kind=args.error_type)
    kind = f" ({args.error_type})" if args.error_type else ""
    print(f"{count} failed prompts{kind} are pending again; run: python -m batch_prompt.resume {args.db}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from .preview import estimate

    result = estimate(args.spec, prices=args.prices, cache_dir=args.cache_dir, base_url=args.base_url)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print("\n".join(_estimate_lines(result)))
    return 0


def _estimate_lines(result: Estimate) -> list[str]:
    lines = [_estimate_line(f"{_n(m.prompts, 'prompt')} in {_n(m.requests, 'request')} to {m.model}", m, (m.model,))
             for m in result.models]
    if len(result.models) > 1:
        lines.append(_estimate_line(f"in all: {_n(result.prompts, 'prompt')} in {_n(result.requests, 'request')}",
                                    result, result.unpriced))
    if result.cached:
        lines.append(f"{result.cached:,} of {_n(result.prompts, 'prompt')} are already answered in the cache: free;"
                     " --no-cache for fresh samples")
    return lines


def _estimate_line(head: str, figures: Any, unpriced: Sequence[str]) -> str:
    line = f"{head}: ~{figures.input_tokens:,} input tokens, at most {figures.max_output_tokens:,} output tokens: "
    live, batch = figures.max_cost_live, figures.max_cost_batch
    if live is None or batch is None:
        return line + unknown_price_message(list(unpriced))
    return line + f"at most {_money(live)} at list price ({_money(batch, live)} in batch mode)"


def _cmd_show(args: argparse.Namespace) -> int:
    views = show(args.db, job=args.job, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps([view.to_dict() for view in views], indent=2, ensure_ascii=False))
        return 0
    for view in views:
        print("\n".join(_view_lines(view)))
    if not views:
        print(f"no {args.status + ' ' if args.status else ''}prompts in {args.db}")
    return 0


def _view_lines(view: PromptView) -> list[str]:
    head = f"{view.job} #{view.id} {view.model} {view.status}"
    if view.status == "failed":
        head += f": {view.error_kind or 'error'} ({_n(view.attempts, 'attempt')})"
    elif view.cached:
        head += " (from the cache)"
    prompt = messages_text(view.prompt) if isinstance(view.prompt, list) else str(view.prompt)
    lines = [head, _short(f"  prompt: {prompt}"), _short(f"  keywords: {json.dumps(view.keywords)}")]
    if view.error:
        lines.append(_short(f"  error: {view.error}"))
    if view.answers:
        more = len(view.answers) - 1
        extra = f" (+{_n(more, 'more choice')})" if more else ""
        lines.append(_short(f"  answer: {view.answers[0]}", len(extra)) + extra)
    return lines


WIDTH = 100


def _short(text: str, reserve: int = 0) -> str:
    """One line of at most WIDTH columns (less `reserve`): newlines shown as spaces, the rest cut with '...'."""
    text = " ".join(text.split("\n"))
    limit = WIDTH - reserve
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _money(cost: float, scale: float | None = None) -> str:
    """$12.34; below $0.10 two significant digits ($0.00011), or as many decimals as `scale` gets."""
    ref = scale if scale is not None else cost
    decimals = 2 if ref >= 0.1 or ref <= 0 else 1 - math.floor(math.log10(ref))
    return f"${cost:,.{decimals}f}"


COMMANDS = {
    "run": _cmd_run, "create": _cmd_create, "resume": _cmd_resume, "status": _cmd_status,
    "export": _cmd_export, "retry-failed": _cmd_retry_failed, "estimate": _cmd_estimate, "show": _cmd_show,
    "cancel": _cmd_cancel,
}


if __name__ == "__main__":
    sys.exit(main())
