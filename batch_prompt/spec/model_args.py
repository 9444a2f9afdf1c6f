"""Model arguments: the request parameters a spec sends besides its model and prompt, checked before
anything is written.

The parameters of each API are the openai SDK's own request types (`openai.types.chat.
completion_create_params` for chat, `openai.types.completion_create_params` for legacy completions,
`openai.types.responses.response_create_params` for the Responses API):
their names are read from the SDK's TypedDicts and each value is validated against its annotation
(pydantic, strict: `"2"` is not an integer); the numeric parameters of `RANGES` (`n`, `max_tokens`,
`temperature`, ...) are checked for type and range here. The SDK is imported (~0.5 s and ~30 MB, once)
only when a spec has a model argument outside `RANGES` to check, never for status or export.

`extra_body` is the SDK's convention for server-specific parameters (vLLM's `top_k`, `min_p`, ...): a
dict whose keys are sent as given, merged into the request body at top level. The stored request (and
so the request hash, and an export's `model_args`) is that merged body, exactly what is sent: `top_k`
given in `extra_body` appears as a top-level `top_k`. The spec itself keeps `extra_body` as written.
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any, Literal

from ..errors import SpecError, shown

# Request keys the spec itself controls: a model arg (or an `extra_body` key) may not set them.
RESERVED_ARGS = ("model", "messages", "prompt", "stream")
RESERVED_BY_API = {"responses": ("model", "input", "stream")}  # the Responses API's `prompt` is its own
EXTRA_BODY = "extra_body"
# SDK request options that are not body parameters, and what to do instead.
SDK_OPTIONS = {
    "extra_headers": "request headers are not part of a spec",
    "extra_query": "query parameters are not part of a spec (a base URL takes none either)",
    "timeout": "the timeout is a run option (--timeout, RunOptions.timeout)",
}
NOT_SENT = {"stream_options": "batch-prompt does not stream, and servers refuse stream_options without stream",
            "background": "batch-prompt waits for each answer; a background response would have to be polled"}
API_NAMES = {"chat": "chat completions", "completions": "completions", "responses": "responses"}
# A parameter of another API, and what this one takes instead (a spec moved from chat to responses, or back).
INSTEAD: dict[str, dict[str, str | None]] = {
    "responses": {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
                  "n": "repeats (a spec field)", "messages": "templates (they become `input`)",
                  "response_format": "text.format", "reasoning_effort": "reasoning.effort",
                  "logprobs": "top_logprobs with include [\"message.output_text.logprobs\"]", "seed": None},
    "chat": {"max_output_tokens": "max_completion_tokens", "reasoning": "reasoning_effort",
             "text": "response_format", "input": "templates (they become `messages`)", "instructions":
             "a system message in the template"},
}
# (low, high, integer) per parameter; None is open. These parameters are checked here, type and range,
# without importing the SDK (so the usual specs cost no SDK import at create); a test pins that each
# is a parameter of the installed SDK's request type, as an optional int or float like its range.
Range = tuple[float | None, float | None, bool]
RANGES: dict[str, dict[str, Range]] = {
    "chat": {
        "n": (1, None, True), "max_tokens": (1, None, True), "max_completion_tokens": (1, None, True),
        "temperature": (0, 2, False), "top_p": (0, 1, False), "top_logprobs": (0, 20, True),
        "presence_penalty": (-2, 2, False), "frequency_penalty": (-2, 2, False),
    },
    "completions": {
        "n": (1, None, True), "max_tokens": (1, None, True), "best_of": (1, None, True),
        "temperature": (0, 2, False), "top_p": (0, 1, False), "logprobs": (0, 5, True),
        "presence_penalty": (-2, 2, False), "frequency_penalty": (-2, 2, False),
    },
    "responses": {  # OpenAI refuses a `max_output_tokens` below 16
        "max_output_tokens": (16, None, True), "temperature": (0, 2, False), "top_p": (0, 1, False),
        "top_logprobs": (0, 20, True),
    },
}


def check_model_args(api: str, args: dict[str, Any]) -> dict[str, Any]:
    """`args` when every key is a parameter of `api` with a valid value, and `extra_body` is well formed.

    Raises `SpecError` naming the first bad key: unknown (with the nearest known parameter), an SDK
    option, reserved, a value of the wrong type or out of range, or an `extra_body` key that collides.
    """
    for key in RESERVED_BY_API.get(api, RESERVED_ARGS):
        if key in args:
            raise SpecError(f"model_args may not set `{key}`: it is part of the spec itself")
    plain = [key for key in args if key != EXTRA_BODY]
    ranged = RANGES[api]
    params = parameters(api) if any(key not in ranged for key in plain) else {}
    for key in plain:
        value = args[key]
        if key in SDK_OPTIONS:
            raise SpecError(f"model_args `{key}` is an SDK request option, not a request parameter: {SDK_OPTIONS[key]}")
        if key in NOT_SENT:
            raise SpecError(f"model_args may not set `{key}`: {NOT_SENT[key]}")
        if key in ranged:
            _check_range(api, key, value, args)
            continue
        if key not in params:
            raise SpecError(_unknown(api, key, params))
        problem = _type_problem(params[key], value)
        if problem is not None:
            raise SpecError(f"model_args `{key}` must be {_describe(params[key])} for {API_NAMES[api]}, "
                            f"not {shown(value)}{problem}")
    if EXTRA_BODY in args:
        _check_extra_body(api, args)
    return args


def request_args(args: dict[str, Any]) -> dict[str, Any]:
    """The body parameters `args` sends: `extra_body`'s keys merged in at top level, as the SDK does."""
    if EXTRA_BODY not in args:
        return args
    merged = {key: value for key, value in args.items() if key != EXTRA_BODY}
    merged.update(args[EXTRA_BODY])
    return merged


@lru_cache(maxsize=3)
def parameters(api: str) -> dict[str, Any]:
    """Parameter name -> type annotation of one API's request body, read from the installed SDK
    (its non-streaming create params), without the keys the spec itself sets."""
    from openai.types import completion_create_params as legacy
    from openai.types.chat import completion_create_params as chat
    from openai.types.responses import response_create_params as responses

    params = {"chat": chat.CompletionCreateParamsNonStreaming, "completions": legacy.CompletionCreateParamsNonStreaming,
              "responses": responses.ResponseCreateParamsNonStreaming}[api]
    hints = typing.get_type_hints(params)
    reserved = RESERVED_BY_API.get(api, RESERVED_ARGS)
    return {name: hint for name, hint in hints.items() if name not in reserved}


def _unknown(api: str, key: str, params: dict[str, Any]) -> str:
    instead = INSTEAD.get(api, {})
    if key in instead:
        use = instead[key]
        hint = f"; use {use}" if use else ""
        return f"model_args `{key}`: not a {API_NAMES[api]} parameter{hint}"
    names = [*params, *SDK_OPTIONS, EXTRA_BODY]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return (
        f"model_args `{key}`: not a {API_NAMES[api]} parameter{hint} "
        f"(a server-specific parameter goes under model_args.{EXTRA_BODY}, which is sent as given)"
    )


def _check_range(api: str, key: str, value: Any, args: dict[str, Any]) -> None:
    """A parameter of `RANGES`: a number of its kind within its range, or null."""
    if value is None:
        return
    low, high, integer = RANGES[api][key]
    if key == "max_tokens" and api == "completions" and value == 0 and args.get("echo") is True:
        low = 0  # `echo` with no new tokens: the legacy way to score a prompt's own logprobs
    if not _in_range(value, low, high, integer):
        raise SpecError(f"model_args `{key}` must be {_range_text(low, high, integer)} or null, not {shown(value)}")


def _check_extra_body(api: str, args: dict[str, Any]) -> None:
    extra = args[EXTRA_BODY]
    if not isinstance(extra, dict):
        raise SpecError(f"model_args.{EXTRA_BODY} must be a dict of parameters sent as given, not {shown(extra)}")
    for key in extra:
        if key in RESERVED_BY_API.get(api, RESERVED_ARGS) or key == EXTRA_BODY:
            raise SpecError(f"model_args.{EXTRA_BODY} may not set `{key}`: it is part of the spec itself")
        if key in args:
            raise SpecError(f"model_args.{EXTRA_BODY} sets `{key}`, which model_args sets too: give it once")


def _in_range(value: Any, low: float | None, high: float | None, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _range_text(low: float | None, high: float | None, integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    if high is None:
        return "a positive integer" if integer and low == 1 else f"{kind} >= {low:g}"
    return f"{kind} from {low:g} to {high:g}"


def _type_problem(hint: Any, value: Any) -> str | None:
    """None when `value` fits the SDK's annotation (strictly), else where it does not: pydantic's
    complaint (": at X: message" for a nested part, "" for the value as a whole), or only where (": at X")
    when a union's branches disagree. An annotation pydantic cannot read is not checked."""
    from pydantic import ValidationError

    adapter = _adapter(hint)
    if adapter is None:
        return None
    try:
        result = adapter.validate_python(value, strict=True)
        if isinstance(result, Iterator):  # an `Iterable[...]` annotation validates its items lazily
            for _ in result:
                pass
    except ValidationError as exc:
        errors = exc.errors()
        paths = [[str(part) for part in error["loc"] if isinstance(part, int) or _is_field(part)] for error in errors]
        if len(errors) == 1:
            return f": at {'.'.join(paths[0])}: {errors[0]['msg']}" if paths[0] else ""
        common = paths[0]  # several complaints, one per branch of a union: where they agree
        for path in paths[1:]:
            agree = 0
            while agree < min(len(common), len(path)) and common[agree] == path[agree]:
                agree += 1
            common = common[:agree]
        return f": at {'.'.join(common)}" if common else ""
    return None


def _is_field(part: str) -> bool:
    """A location part that is a field name, not pydantic's name for a branch of a union."""
    return part.isidentifier() and part.islower() and part not in ("str", "int", "float", "bool", "none")


@cache
def _adapter(hint: Any) -> Any:
    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    try:
        return TypeAdapter(hint)
    except PydanticSchemaGenerationError:
        return None


def _describe(hint: Any) -> str:
    """An annotation in words: `Optional[int]` -> "an integer or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return _join([_describe(arg) for arg in args])
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    named = {int: "an integer", float: "a number", bool: "true, false", str: "a string", type(None): "null"}
    if hint in named:
        return named[hint]
    if origin in (list, tuple) or getattr(origin, "__name__", "") in ("Iterable", "Sequence"):
        return "a list of strings" if args == (str,) else "a list"
    if origin is dict or hasattr(hint, "__required_keys__"):  # a dict, or one of the SDK's TypedDicts
        return "an object"
    return "a value of the SDK's type"


def _join(words: list[str]) -> str:
    unique = list(dict.fromkeys(words))
    if "null" in unique:  # last, as people say it
        unique.remove("null")
        unique.append("null")
    return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " or " + unique[-1]
