"""The command line's arguments: the parser of every command, and the types that check option values
(a one-line error naming the option, exit 2, before anything runs)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from ..errors import ConfigError
from ..options import SERVICE_TIERS
from ..reports.status import STATUSES
from ..results.writer import FORMATS
from ..spec.endpoints import normalize_base_url

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


def _duration(text: str) -> str:
    """An argparse type: a duration (`run.plan.parse_duration`), kept as given (it counts from the run's start)."""
    from ..run.plan import parse_duration

    try:
        parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
    parser.add_argument("--mode", choices=("live", "batch", "auto"),
                        help="live calls, the provider's Batch API, or auto: the cheapest that meets --deadline "
                             "(default: the mode the job last ran in)")
    parser.add_argument("--deadline", type=_duration, metavar="DURATION",
                        help="auto mode (implied): finish within this, e.g. 90m, 2h, 1h30m, 2d (a number: seconds); "
                             "kept with the job, so a plain resume keeps to it")
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
    parser.add_argument("--service-tier", choices=SERVICE_TIERS,
                        help="live requests' service_tier (flex: at the flex price, may wait for capacity)")
    parser.add_argument("--flex-fallback", type=_seconds, metavar="S",
                        help="flex: after S seconds waiting on flex capacity, send a prompt at the default tier "
                             "(default: never)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--yes", action="store_true",
                        help="never ask before sending, and show no estimate (run asks on a terminal; resume never)")


def _seconds(text: str) -> float:
    """An argparse type: seconds, zero or more and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, not {text!r}")
    return value


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
    p.add_argument("--by", metavar="FIELD",
                   help="per job, a table of prompts, tokens and cost by a keyword field, template or model")
    p.add_argument("--prices", metavar="FILE", help="price overrides (JSON or TOML, USD per million tokens)")

    p = sub.add_parser("export", help="write the results of done prompts (no API calls)")
    p.add_argument("db")
    p.add_argument("-o", "--output", required=True, help="results file")
    p.add_argument("--format", choices=FORMATS,
                   help="default: from the suffix (.jsonl .csv .parquet .db/.sqlite), else pickle")
    p.add_argument("--job", metavar="NAME", help="only this job")
    p.add_argument("--include", metavar="failed,pending",
                   help="export failed and/or pending prompts too: one row each with status, error_kind, error")

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
    p.add_argument("--unparsed", action="store_true",
                   help="only done prompts with an answer the job's parse cannot parse, with why")
    p.add_argument("--limit", type=_positive, default=20, help="at most this many per job (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output, answers in full")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="on an internal error, print its traceback (it is saved to a file anyway)")
    return parser
