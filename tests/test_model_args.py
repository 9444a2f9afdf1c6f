"""Model arguments: names and types from the installed openai SDK's request types, ranges, extra_body."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

import pytest
from openai.types import completion_create_params as legacy_params
from openai.types.chat import completion_create_params as chat_params

from batch_prompt.errors import SpecError
from batch_prompt.spec.model_args import NOT_SENT, RANGES, RESERVED_ARGS, check_model_args, parameters, request_args


def test_parameters_follow_the_installed_sdk() -> None:
    for api, params in (("chat", chat_params), ("completions", legacy_params)):
        sdk = set(typing.get_type_hints(params.CompletionCreateParamsNonStreaming))
        assert set(parameters(api)) == sdk - set(RESERVED_ARGS)
        assert sdk >= set(RESERVED_ARGS) - {"messages" if api == "completions" else "prompt"}
    assert {"temperature", "max_completion_tokens", "top_logprobs", "response_format"} <= set(parameters("chat"))
    assert {"best_of", "echo", "suffix"} <= set(parameters("completions")) - set(parameters("chat"))
    # every parameter the SDK knows is accepted with a value of its own type (null where it may be)
    for name, hint in parameters("chat").items():
        if type(None) in typing.get_args(hint) and name not in NOT_SENT:
            assert check_model_args("chat", {name: None}) == {name: None}


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("chat", {"n": 3, "max_tokens": 5, "temperature": 1, "top_p": 0.9, "seed": 10**30, "stop": ["\n", "END"]}),
    ("chat", {"logprobs": True, "top_logprobs": 20, "max_completion_tokens": None, "presence_penalty": -2}),
    ("chat", {"response_format": {"type": "json_object"}, "reasoning_effort": "low", "user": "u1",
              "logit_bias": {"50256": -100}, "metadata": {"run": "a"}, "stop": "x"}),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
              "tool_choice": "auto", "parallel_tool_calls": False}),
    ("chat", {"extra_body": {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}}),
    ("completions", {"logprobs": 5, "echo": True, "best_of": 2, "suffix": None, "max_tokens": 16}),
    ("completions", {"max_tokens": 0, "echo": True, "logprobs": 0}),  # scoring a prompt: no new tokens
]


@pytest.mark.parametrize(("api", "args"), ACCEPTED)
def test_valid_model_args_are_accepted_as_given(api: str, args: dict[str, Any]) -> None:
    assert check_model_args(api, args) is args


REFUSED = [
    ("chat", {"temprature": 1}, "model_args `temprature`: not a chat completions parameter; did you mean "
     "`temperature`? (a server-specific parameter goes under model_args.extra_body, which is sent as given)"),
    ("chat", {"top_k": 5}, "model_args `top_k`: not a chat completions parameter; did you mean `top_p`?"),
    ("chat", {"zzzz": 5}, "model_args `zzzz`: not a chat completions parameter (a server-specific parameter goes"),
    ("chat", {"extrabody": {}}, "did you mean `extra_body`?"),
    ("chat", {"best_of": 2}, "model_args `best_of`: not a chat completions parameter"),
    ("completions", {"max_completion_tokens": 2}, "model_args `max_completion_tokens`: not a completions parameter"),
    ("chat", {"n": "2"}, "model_args `n` must be a positive integer or null, not '2'"),
    ("chat", {"n": 2.0}, "model_args `n` must be a positive integer or null, not 2.0"),
    ("chat", {"n": True}, "model_args `n` must be a positive integer or null, not true"),
    ("chat", {"max_tokens": -1}, "model_args `max_tokens` must be a positive integer or null, not -1"),
    ("completions", {"max_tokens": 0}, "model_args `max_tokens` must be a positive integer or null, not 0"),
    ("chat", {"temperature": "hot"}, "model_args `temperature` must be a number from 0 to 2 or null, not 'hot'"),
    ("chat", {"temperature": 2.5}, "model_args `temperature` must be a number from 0 to 2 or null, not 2.5"),
    ("chat", {"top_p": 1.5}, "model_args `top_p` must be a number from 0 to 1 or null, not 1.5"),
    ("chat", {"frequency_penalty": -3}, "model_args `frequency_penalty` must be a number from -2 to 2 or null"),
    ("chat", {"logprobs": 5}, "model_args `logprobs` must be true, false or null for chat completions, not 5"),
    ("completions", {"logprobs": 6}, "model_args `logprobs` must be an integer from 0 to 5 or null, not 6"),
    ("completions", {"logprobs": True}, "model_args `logprobs` must be an integer from 0 to 5 or null, not true"),
    ("chat", {"top_logprobs": 21}, "model_args `top_logprobs` must be an integer from 0 to 20 or null, not 21"),
    ("chat", {"stop": 5}, "model_args `stop` must be a string, a list of strings or null for chat completions, not 5"),
    ("completions", {"stop": [1]}, "model_args `stop` must be a string, a list of strings or null for completions"),
    ("chat", {"reasoning_effort": "ultra"}, "model_args `reasoning_effort` must be one of 'none', 'minimal'"),
    ("chat", {"metadata": {"a": 1}}, "model_args `metadata` must be an object or null for chat completions, "
     'not {"a": 1}: at a: Input should be a valid string'),
    ("chat", {"response_format": "json"}, "model_args `response_format` must be an object for chat completions"),
    ("chat", {"tools": [{"type": "function"}]}, "model_args `tools` must be a list for chat completions, not "
     '[{"type": "function"}]: at 0'),
    ("chat", {"user": 5}, "model_args `user` must be a string for chat completions, not 5"),
    ("chat", {"extra_headers": {"X-A": "1"}}, "model_args `extra_headers` is an SDK request option, not a request "
     "parameter: request headers are not part of a spec"),
    ("chat", {"extra_query": {}}, "model_args `extra_query` is an SDK request option"),
    ("chat", {"timeout": 30}, "model_args `timeout` is an SDK request option, not a request parameter: the timeout "
     "is a run option (--timeout, RunOptions.timeout)"),
    ("chat", {"stream": False}, "model_args may not set `stream`: it is part of the spec itself"),
    ("chat", {"stream_options": {"include_usage": True}}, "model_args may not set `stream_options`"),
    ("completions", {"prompt": "x"}, "model_args may not set `prompt`"),
    ("chat", {"extra_body": ["top_k"]}, "model_args.extra_body must be a dict of parameters sent as given"),
    ("chat", {"extra_body": {"messages": []}}, "model_args.extra_body may not set `messages`"),
    ("chat", {"extra_body": {"stream": True}}, "model_args.extra_body may not set `stream`"),
    ("chat", {"extra_body": {"model": "x"}}, "model_args.extra_body may not set `model`"),
    ("chat", {"top_p": 0.5, "extra_body": {"top_p": 0.9}},
     "model_args.extra_body sets `top_p`, which model_args sets too: give it once"),
]


@pytest.mark.parametrize(("api", "args", "message"), REFUSED, ids=[str(case[1]) for case in REFUSED])
def test_bad_model_args_name_the_key(api: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        check_model_args(api, args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_request_args_merge_extra_body_at_top_level() -> None:
    args = {"temperature": 0.2, "extra_body": {"top_k": 3}}
    assert request_args(args) == {"temperature": 0.2, "top_k": 3}
    assert args == {"temperature": 0.2, "extra_body": {"top_k": 3}}  # the spec's own form is untouched
    plain = {"n": 2}
    assert request_args(plain) is plain


def test_ranged_parameters_are_optional_numbers_of_the_installed_sdk() -> None:
    for api, ranges in RANGES.items():
        params = parameters(api)
        for name, (_, _, integer) in ranges.items():
            assert params[name] == ((int if integer else float) | None), (api, name)


def test_the_sdk_is_imported_only_to_check_model_args_outside_the_ranged_ones() -> None:
    code = (
        "import sys; import batch_prompt as bp, batch_prompt.cli;"
        "args = [{'extra_body': {'top_k': 1}}, {'n': 2, 'max_tokens': 5, 'temperature': 1.0, 'top_p': None},"
        " {'n': 1, 'stop': ['x']}];"
        "[print(bp.Spec.from_dict({'model': 'm', 'templates': ['hi'], 'model_args': a}) and 'openai' in sys.modules,"
        " 'pydantic' in sys.modules) for a in args]"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n") == ["False False", "False False", "True True", ""]
