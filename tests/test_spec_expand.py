"""Spec validation, expansion counts and order, request identity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_prompt.errors import MissingFieldError, SpecError
from batch_prompt.expand import expand, request_body, request_hash
from batch_prompt.spec import Spec, canonical_json


def spec(**fields: object) -> Spec:
    base: dict[str, object] = {"model": "m", "templates": ["I like {food}"], "keywords": [{"food": "pizza"}]}
    base.update(fields)
    return Spec.from_dict(base)


def test_list_expansion_order_is_template_then_keywords() -> None:
    s = spec(templates=["I like {food}", "I hate {food}"], keywords=[{"food": "pizza"}, {"food": "apples"}])
    records = list(expand(s))
    assert [json.loads(r.request_json)["messages"][0]["content"] for r in records] == [
        "I like pizza", "I like apples", "I hate pizza", "I hate apples",
    ]
    assert [(r.template_index, r.keywords_index) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({r.hash for r in records}) == 4


def test_grid_models_and_repeats() -> None:
    s = spec(
        templates=["{a}-{b}"], keywords={"a": [1, 2, 3], "b": ["x", "y"]}, model=["m1", "m2"], repeats=2,
    )
    records = list(expand(s))
    assert len(records) == s.count_prompts() == 3 * 2 * 2 * 2
    first = [(json.loads(r.request_json)["messages"][0]["content"], r.model, r.sample_index) for r in records[:5]]
    assert first == [("1-x", "m1", 0), ("1-x", "m1", 1), ("1-x", "m2", 0), ("1-x", "m2", 1), ("1-y", "m1", 0)]
    assert len({r.hash for r in records}) == 24  # repeats have their own hashes
    # sample 0 shares its hash with the same request in a job without repeats
    plain = list(expand(spec(templates=["{a}-{b}"], keywords={"a": [1, 2, 3], "b": ["x", "y"]}, model="m1")))
    assert plain[0].hash == records[0].hash


def test_chat_message_templates_and_escaped_braces() -> None:
    s = spec(templates=[[{"role": "system", "content": "Be {tone}. Use {{json}}."},
                         {"role": "user", "content": "{q}"}]], keywords=[{"tone": "brief", "q": "2+2?"}])
    (record,) = expand(s)
    assert json.loads(record.request_json)["messages"] == [
        {"role": "system", "content": "Be brief. Use {json}."}, {"role": "user", "content": "2+2?"},
    ]


def test_completions_request_and_model_args() -> None:
    s = spec(api="completions", model_args={"n": 3, "max_tokens": 5}, prompts_per_request=7)
    (record,) = expand(s)
    assert json.loads(record.request_json) == {"model": "m", "prompt": "I like pizza", "n": 3, "max_tokens": 5}
    assert s.prompts_per_request == 7


def test_inline_identity_matches_request_hash() -> None:
    s = spec(model_args={"temperature": 0.5}, repeats=3)
    for record in expand(s):
        body = json.loads(record.request_json)
        assert record.hash == request_hash("chat", body, record.sample_index)


def test_hash_is_stable_across_processes() -> None:
    body = request_body("chat", "gpt-4o-mini", [{"role": "user", "content": "héllo"}], {"n": 2})
    code = (
        "from batch_prompt.expand import request_body, request_hash;"
        "print(request_hash('chat', request_body('chat', 'gpt-4o-mini',"
        " [{'role': 'user', 'content': 'h\\u00e9llo'}], {'n': 2})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == request_hash("chat", body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@given(args=st.dictionaries(st.sampled_from(["temperature", "top_p", "seed", "stop", "x"]), json_values),
       content=st.text(max_size=20), sample=st.integers(min_value=0, max_value=5))
def test_hash_equal_exactly_when_canonical_request_equal(args: dict[str, object], content: str, sample: int) -> None:
    body = request_body("chat", "m", [{"role": "user", "content": content}], args)
    shuffled = dict(reversed(list(body.items())))
    assert request_hash("chat", body, sample) == request_hash("chat", shuffled, sample)
    other = request_body("chat", "m", [{"role": "user", "content": content + "!"}], args)
    assert request_hash("chat", body, sample) != request_hash("chat", other, sample)
    assert request_hash("chat", body, sample) != request_hash("completions", body, sample)
    assert request_hash("chat", body, sample) != request_hash("chat", body, sample + 1)


@given(templates=st.lists(st.sampled_from(["a {x}", "b {y}", "{x}{y}", "plain"]), min_size=1, max_size=4),
       xs=st.lists(st.integers(), min_size=1, max_size=4), ys=st.lists(st.text(max_size=3), min_size=1, max_size=3),
       repeats=st.integers(min_value=1, max_value=3))
def test_grid_count_and_order(templates: list[str], xs: list[int], ys: list[str], repeats: int) -> None:
    s = Spec.from_dict({"model": ["m1", "m2"], "templates": templates, "keywords": {"x": xs, "y": ys},
                        "repeats": repeats})
    records = list(expand(s))
    assert len(records) == len(templates) * len(xs) * len(ys) * 2 * repeats
    keys = [(r.template_index, r.keywords_index, r.model_index, r.sample_index) for r in records]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"templates": ["I like {drink}"]}, "needs field 'drink', missing from keyword dict 0"),
        ({"templates": []}, "'templates' is empty"),
        ({"api": "embeddings"}, "unknown api 'embeddings'"),
        ({"temprature": 1.0}, "unknown spec field 'temprature'"),
        ({"keywords": []}, "'keywords' is empty"),
        ({"keywords": ["pizza"]}, "keywords[0] must be a dict"),
        ({"keywords": {"food": "pizza"}}, "keywords['food'] must be a list"),
        ({"model": ""}, "invalid model name"),
        ({"model_args": {"n": 0}}, "'n' must be a positive integer"),
        ({"model_args": {"messages": []}}, "may not set 'messages'"),
        ({"model_args": {"t": float("nan")}}, "not plain JSON"),
        ({"repeats": 0}, "'repeats' must be a positive integer"),
        ({"templates": ["{}"]}, "positional field"),
        ({"templates": ["{food"]}, "not a valid format string"),
        ({"api": "completions", "templates": [[{"role": "user", "content": "x"}]]}, "must be a string"),
        ({"templates": [[{"role": "user"}]]}, "must be a message"),
    ],
)
def test_bad_specs(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(**fields)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_field_error_names_template_and_field() -> None:
    with pytest.raises(MissingFieldError) as info:
        spec(templates=["ok {food}", "bad {food} {size}"], keywords=[{"food": "a", "size": 1}, {"food": "b"}])
    assert info.value.field == "size"
    assert info.value.template == "bad {food} {size}"
    assert "keyword dict 1" in str(info.value)


def test_canonical_json_is_key_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'
