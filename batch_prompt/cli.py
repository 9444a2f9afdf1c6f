"""The command line: parse, call one library function, render, map errors to exit codes.

This is the only module that prints or exits. Exit codes: 0 all done; 1 finished with prompts failed
(or left unfinished); 2 bad input or configuration (a one-line `batch-prompt: error: ...`); 130
interrupted (resume to continue).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import job as jobs
from .endpoints import normalize_base_url
from .errors import BatchPromptError, ConfigError
from .expand import expand
from .progress import usd
from .results import export
from .spec import load_spec
from .store import Store

if TYPE_CHECKING:
    from .runner import RunOptions, RunSummary

PROG = "batch-prompt"


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


def _base_url(text: str) -> str:
    try:
        return normalize_base_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=_positive_int("concurrency"), default=100,
                        help="requests in flight (default 100)")
    learned = "(default: learned from the server)"
    parser.add_argument("--rpm", type=_positive_float("rpm"), help=f"requests per minute {learned}")
    parser.add_argument("--tpm", type=_positive_float("tpm"), help=f"tokens per minute {learned}")
    parser.add_argument("--timeout", type=_positive_float("timeout"), default=120.0,
                        help="seconds per request (default 120)")
    parser.add_argument("--max-attempts", type=_positive_int("max attempts"), default=8,
                        help="calls per prompt before it fails (default 8)")
    parser.add_argument("--no-cache", action="store_true", help="do not answer from the cache (fresh samples)")
    parser.add_argument("--cache-dir", help="response cache folder (default ~/.cache/batch-prompt)")
    parser.add_argument("--base-url", type=_base_url, help="API endpoint (default $OPENAI_BASE_URL or OpenAI)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--yes", action="store_true", help="do not ask before sending (nothing asks today)")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Query LLMs with large batches of prompts, resumably.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="create the job if needed, then send every unfinished prompt")
    p.add_argument("spec", help="spec file (JSON or TOML)")
    p.add_argument("--db", required=True, help="job database (created if missing)")
    _run_options(p)

    p = sub.add_parser("create", help="expand a spec and record its prompts; no API calls")
    p.add_argument("spec")
    p.add_argument("--db", required=True)

    p = sub.add_parser("resume", help="finish every unfinished prompt of every job in the file")
    p.add_argument("db")
    _run_options(p)

    p = sub.add_parser("status", help="prompts by status and tokens used, per job")
    p.add_argument("db")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("export", help="write the results of done prompts (no API calls)")
    p.add_argument("db")
    p.add_argument("-o", "--output", required=True, help="results file")
    p.add_argument("--format", choices=("pickle", "jsonl"), help="default: from the suffix (.jsonl), else pickle")

    p = sub.add_parser("retry-failed", help="move failed prompts back to pending")
    p.add_argument("db")

    p = sub.add_parser("estimate", help="prompts, requests and tokens of a spec; no database, no calls")
    p.add_argument("spec")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except BatchPromptError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _options(args: argparse.Namespace) -> RunOptions:
    from .runner import RunOptions

    return RunOptions(
        concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm, timeout=args.timeout,
        max_attempts=args.max_attempts, cache=not args.no_cache, cache_dir=args.cache_dir,
        base_url=args.base_url, quiet=args.quiet, handle_signals=True,
    )


def _cmd_create(args: argparse.Namespace) -> int:
    job = jobs.create(args.db, args.spec)
    verb = "created" if job.created else "already recorded"
    print(f"job {job.name!r}: {job.n_prompts} prompts {verb} in {args.db}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    job = jobs.create(args.db, args.spec)
    return _report(job.run(**vars(_options(args))), args.db)


def _cmd_resume(args: argparse.Namespace) -> int:
    return _report(jobs.resume(args.db, **vars(_options(args))), args.db)


def _report(summary: RunSummary, db: str) -> int:
    line = (
        f"done {summary.done} ({summary.cached} from cache), failed {summary.failed}, requests {summary.requests}, "
        f"tokens {summary.prompt_tokens}+{summary.completion_tokens}" + usd(summary.cost_usd)
    )
    print(line, file=sys.stderr)
    for kind, count in summary.errors.most_common():
        print(f"  {count} x {kind}", file=sys.stderr)
    if summary.running_elsewhere:
        print(f"{summary.running_elsewhere} prompts are being answered by another process", file=sys.stderr)
    if summary.interrupted or summary.unfinished:
        print(f"interrupted: resume with: python -m batch_prompt.resume {db}", file=sys.stderr)
    elif summary.failed_total:
        print(f"{summary.failed_total} prompts failed: python -m batch_prompt retry-failed {db}, then resume",
              file=sys.stderr)
    return summary.exit_code


def _cmd_status(args: argparse.Namespace) -> int:
    with Store(args.db, create=False) as store:
        report: list[dict[str, Any]] = []
        for job in store.jobs():
            report.append({"job": job.name, "api": job.api, "state": job.state, **store.counts(job)})
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for row in report:
        print(
            f"{row['job']} ({row['api']}{'' if row['state'] == 'ready' else ', incomplete create'}): "
            f"{row['done']}/{row['total']} done, {row['pending']} pending, {row['running']} running, "
            f"{row['failed']} failed; tokens {row['prompt_tokens']} prompt + {row['completion_tokens']} completion"
        )
    if not report:
        print(f"no jobs in {args.db}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    count = export(args.db, args.output, args.format)
    print(f"{count} results written to {args.output}")
    return 0


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    count = jobs.retry_failed(args.db)
    print(f"{count} failed prompts are pending again; run: python -m batch_prompt.resume {args.db}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from .tokens import estimate_parts, price

    spec = load_spec(args.spec)
    per_model: dict[str, list[int]] = {model: [0, 0, 0] for model in spec.models}
    for record in expand(spec):
        prompt, completion = estimate_parts(json.loads(record.request_json))
        sums = per_model[record.model]
        sums[0], sums[1], sums[2] = sums[0] + 1, sums[1] + prompt, sums[2] + completion
    per_request = spec.prompts_per_request if spec.api == "completions" else 1
    costs = [price(model, p, c) for model, (_, p, c) in per_model.items()]
    report = {
        "prompts": sum(s[0] for s in per_model.values()),
        "requests": sum(-(-s[0] // per_request) for s in per_model.values()),
        "prompt_tokens": sum(s[1] for s in per_model.values()),
        "max_completion_tokens": sum(s[2] for s in per_model.values()),
        "max_cost_usd": None if None in costs else round(sum(c or 0.0 for c in costs), 6),
    }
    print(json.dumps(report))
    return 0


COMMANDS = {
    "run": _cmd_run, "create": _cmd_create, "resume": _cmd_resume, "status": _cmd_status,
    "export": _cmd_export, "retry-failed": _cmd_retry_failed, "estimate": _cmd_estimate,
}


if __name__ == "__main__":
    sys.exit(main())
