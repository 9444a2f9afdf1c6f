"""Spec validation, expansion counts and order, request identity."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_prompt.errors import MissingFieldError, SpecError
from batch_prompt.spec.expand import Occurrences, expand, request_body, request_hash
from batch_prompt.spec.spec import Spec, canonical_json, load_spec, rate_for


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
        "from batch_prompt.spec.expand import request_body, request_hash;"
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
        ({"model_args": {"n": 0}}, "model_args `n` must be a positive integer or null, not 0"),
        ({"model_args": {"messages": []}}, "model_args may not set `messages`: it is part of the spec itself"),
        ({"model_args": {"extra_body": {"t": float("nan")}}}, "not plain JSON"),
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


# ---- every row its own draw (request identity of repeated rows)

# Hashes recorded before rows were counted: a first occurrence must keep them (databases, cache entries).
PIZZA_N2 = "9cbe315cc8384d25db86e47c4e201a0d3df1e261d6283aeae49dcb377cb5f281"  # sample 0
PIZZA_N2_SAMPLE_1 = "027b0973d9eb41ce8c34740f2442f099257c0d68624e90b8f3527e794076b801"
SAY_A_COMPLETIONS = "83e3cc7cc621f5f78073dd7b3471142060e9c3b6daa27a0aef32bb8020fc5af7"


def pizza_twice(**fields: object) -> Spec:
    return spec(model="gpt-4o-mini", keywords=[{"food": "pizza"}, {"food": "pizza"}], model_args={"n": 2},
                **fields)


def test_first_occurrences_keep_their_hashes_and_twins_are_new_samples() -> None:
    records = list(expand(pizza_twice(repeats=2)))
    assert [(r.keywords_index, r.sample_index) for r in records] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    body = json.loads(records[0].request_json)
    assert [r.hash for r in records] == [
        PIZZA_N2, PIZZA_N2_SAMPLE_1, request_hash("chat", body, 2), request_hash("chat", body, 3),
    ]
    (say_a,) = expand(spec(api="completions", templates=["Say {x}"], keywords={"x": ["a"]}))
    assert say_a.hash == SAY_A_COMPLETIONS


def test_dedupe_shares_one_hash_as_before() -> None:
    records = list(expand(pizza_twice(repeats=2, dedupe=True)))
    assert [r.hash for r in records] == [PIZZA_N2, PIZZA_N2_SAMPLE_1, PIZZA_N2, PIZZA_N2_SAMPLE_1]
    assert [r.sample_index for r in records] == [0, 1, 0, 1]


def test_keyword_dicts_differing_in_an_unused_field_are_two_draws() -> None:
    s = spec(templates=["Continue: {seq}"], keywords=[{"seq": "H", "id": 1}, {"seq": "H", "id": 2}])
    first, second = expand(s)
    assert first.request_json == second.request_json
    body = json.loads(first.request_json)
    assert (first.hash, second.hash) == (request_hash("chat", body), request_hash("chat", body, 1))
    assert len({r.hash for r in expand(spec(templates=["Continue: {seq}"], dedupe=True,
                                            keywords=[{"seq": "H", "id": 1}, {"seq": "H", "id": 2}]))}) == 1


def test_repeated_random_sequences_each_get_their_own_samples() -> None:
    import random

    rng = random.Random(7)
    seqs = ["".join(rng.choice("HT") for _ in range(4)) for _ in range(100)]  # 16 values: many repeats
    s = spec(templates=["Next after {seq}?"], keywords=[{"seq": q} for q in seqs], repeats=3, model=["a", "b"])
    records = list(expand(s))
    assert len({r.hash for r in records}) == len(records) == 600
    seen: dict[tuple[str, str], int] = {}
    for r in records[::3]:  # repeat 0 of each row: sample = occurrence * repeats
        key = (r.model, r.request_json)
        assert r.sample_index == 3 * seen.get(key, 0)
        seen[key] = seen.get(key, 0) + 1
    assert sum(1 for count in seen.values() if count > 1) == 32  # every (model, sequence) pair recurs


def test_two_templates_rendering_alike_are_two_draws() -> None:
    s = spec(templates=["I like {food}", "I like {food}"], keywords=[{"food": "pizza"}])
    assert [r.hash for r in expand(s)] == [
        request_hash("chat", json.loads(next(expand(s)).request_json), i) for i in (0, 1)
    ]


def test_dedupe_is_part_of_the_identity_only_when_set() -> None:
    assert "dedupe" not in spec().identity()  # a job recorded before dedupe existed keeps its identity
    assert spec(dedupe=True).identity() == {**spec().identity(), "dedupe": True}
    assert spec(dedupe=False).identity() == spec().identity()


def reference_hashes(s: Spec) -> list[str]:
    """The rule written the slow, obvious way, from each row's body and position only: a dict of every
    body seen; the k-th row with a body seen before is sample k * repeats + repeat."""
    seen: dict[str, int] = {}
    hashes = []
    occurrence = 0
    for i, r in enumerate(expand(s)):
        repeat = i % s.repeats  # each row's repeats are consecutive
        if repeat == 0:
            occurrence = 0 if s.dedupe else seen.get(r.request_json, 0)
            seen[r.request_json] = seen.get(r.request_json, 0) + 1
        hashes.append(request_hash(s.api, json.loads(r.request_json), occurrence * s.repeats + repeat))
    return hashes


small_specs = st.fixed_dictionaries({
    "templates": st.lists(st.sampled_from(["a {x}", "a {x}", "b {y}", "{x}{y}", "plain"]), min_size=1, max_size=4),
    "keywords": st.lists(st.fixed_dictionaries({"x": st.integers(0, 2), "y": st.sampled_from(["", "1"]),
                                                "unused": st.integers()}), min_size=1, max_size=6),
    "model": st.lists(st.sampled_from(["m1", "m2"]), min_size=1, max_size=2, unique=True),
    "repeats": st.integers(1, 3),
    "dedupe": st.booleans(),
    "api": st.sampled_from(["chat", "completions"]),
})


@given(fields=small_specs)
def test_hashes_unique_without_dedupe_and_first_occurrences_unchanged(fields: dict[str, Any]) -> None:
    s = Spec.from_dict(fields)
    records = list(expand(s))
    hashes = [r.hash for r in records]
    assert hashes == reference_hashes(s)
    if not s.dedupe:
        assert len(set(hashes)) == len(hashes)
    first_seen: set[tuple[str, int]] = set()
    for i, r in enumerate(records):  # the first row of each body, each repeat, hashes as before rows counted
        repeat = i % s.repeats
        if (r.request_json, repeat) not in first_seen:
            first_seen.add((r.request_json, repeat))
            assert r.hash == request_hash(s.api, json.loads(r.request_json), repeat)
    deduped = [r.hash for r in expand(Spec.from_dict({**fields, "dedupe": True}))]
    assert deduped == [request_hash(s.api, json.loads(r.request_json), i % s.repeats) for i, r in enumerate(records)]


@settings(max_examples=4, deadline=None)
@given(fields=st.lists(small_specs, min_size=10, max_size=10))
def test_hashes_are_stable_across_processes(fields: list[dict[str, Any]]) -> None:
    code = (
        "import json, sys; from batch_prompt.spec.spec import Spec; from batch_prompt.spec.expand import expand;"
        "print(json.dumps([[r.hash for r in expand(Spec.from_dict(f))] for f in json.load(sys.stdin)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(fields), capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "99", "PATH": ""})
    assert json.loads(out.stdout) == [[r.hash for r in expand(Spec.from_dict(f))] for f in fields]


@given(digests=st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 1024, 2048, 2**63]), max_size=300))
def test_occurrence_table_counts_like_a_dict(digests: list[int]) -> None:
    table, counts = Occurrences(), Counter[int]()
    for digest in digests:
        assert table.seen(digest) == counts[digest or 1]
        counts[digest or 1] += 1


def test_occurrence_table_grows() -> None:
    table = Occurrences()
    values = [(i * 0x9E3779B97F4A7C15) % 2**64 for i in range(1, 5000)] + [j << 20 for j in range(1, 3000)]
    assert [table.seen(v) for v in values] == [0] * len(values)
    assert [table.seen(v) for v in values[::7]] == [1] * len(values[::7])
    assert len(table._table) == 16384  # at most 3/4 full
    assert len(Occurrences(1_000_000)._table) == 1_333_334  # sized for the bodies expected: no growth


def test_a_model_listed_twice_is_refused() -> None:
    with pytest.raises(SpecError, match=r"^spec field 'model' lists 'm' twice: for more samples use repeats"):
        spec(model=["m", "other", "m"])


# ---- templates

@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("x {x.upper}", "template 'x {x.upper}' field {x.upper} uses attribute access, which is not filled in: "
                        "use a plain field such as {x} and put the value you mean in the keyword dict"),
        ("x {x[0]}", "template 'x {x[0]}' field {x[0]} uses indexing, which is not filled in"),
        ("x {x[0].real}", "field {x[0].real} uses indexing"),
        ("x {x:>{w.y}}", "field {w.y} uses attribute access"),
        ("a {b", "template 'a {b' is not a valid format string: expected '}' before end of string "
                 "(a literal brace is written {{ or }})"),
        ("a } b", "template 'a } b' is not a valid format string: Single '}' encountered in format string "
                  "(a literal brace is written {{ or }})"),
        ("a { b", "(a literal brace is written {{ or }})"),
    ],
)
def test_template_fields_that_mean_nothing_are_refused(template: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(templates=[template], keywords=[{"x": "abc", "b": 1, "w": 3}])
    assert message in str(info.value)
    with pytest.raises(SpecError) as info:  # in a chat message too, naming the whole template
        spec(templates=[[{"role": "user", "content": template}]], keywords=[{"x": "abc", "b": 1, "w": 3}])
    chat = json.dumps([{"role": "user", "content": template}])
    assert message.replace(f"template {template!r}", f"template {chat}") in str(info.value)


def test_conversions_format_specs_and_nested_fields_are_filled() -> None:
    s = spec(templates=["{x!r} {n:03d} {x:>{w}}"], keywords=[{"x": "ab", "n": 7, "w": 4}])
    assert json.loads(next(expand(s)).request_json)["messages"][0]["content"] == "'ab' 007   ab"
    with pytest.raises(MissingFieldError) as info:  # a nested field is a field the keyword dict needs
        spec(templates=["{x:>{w}}"], keywords=[{"x": "ab"}])
    assert info.value.field == "w"


def test_render_error_quotes_a_long_value_shortened() -> None:
    s = spec(templates=["{food:d}"], keywords=[{"food": "x" * 200_000}])
    with pytest.raises(SpecError) as info:
        list(expand(s))
    assert str(info.value) == (
        "cannot fill template '{food:d}' with keyword dict {\"food\": \"" + "x" * 47 + "...: "
        "ValueError: Unknown format code 'd' for object of type 'str'"
    )


# ---- model args in the request: extra_body


def test_extra_body_is_merged_into_the_request_and_its_hash() -> None:
    s = spec(model_args={"temperature": 0.7, "extra_body": {"top_k": 5, "min_p": 0.1}})
    (record,) = expand(s)
    body = json.loads(record.request_json)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "I like pizza"}], "temperature": 0.7,
                    "top_k": 5, "min_p": 0.1}
    assert record.hash == request_hash("chat", body)
    assert s.identity()["model_args"] == {"temperature": 0.7, "extra_body": {"top_k": 5, "min_p": 0.1}}
    # a known parameter given in extra_body is sent as given: the same request, the same hash
    (same,) = expand(spec(model_args={"extra_body": {"temperature": 0.7, "top_k": 5, "min_p": 0.1}}))
    assert same.hash == record.hash


# ---- spec fields: run fields, JSON duplicates, what means nothing


def test_run_fields_are_parsed_normalized_and_stored(tmp_path: Path) -> None:
    s = spec(model=["a", "b"], base_url="HTTP://Localhost:8000/", rpm={"a": 60}, tpm=1e6, max_cost=2, prices="p.json",
             endpoints={"b": {"base_url": "http://10.0.0.5:8001", "api_key_env": "VLLM_KEY"}})
    assert s.run_fields() == {
        "base_url": "http://localhost:8000/v1", "endpoints": {"b": {"base_url": "http://10.0.0.5:8001/v1",
                                                                    "api_key_env": "VLLM_KEY"}},
        "rpm": {"a": 60.0}, "tpm": 1e6, "max_cost": 2.0, "prices": str(Path.cwd() / "p.json"), "parse": None,
    }
    assert (rate_for(s.rpm, "a"), rate_for(s.rpm, "b"), rate_for(s.tpm, "b")) == (60.0, None, 1e6)
    assert s.identity() == spec(model=["a", "b"]).identity()  # none of them is the job's identity
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "spec.json"
    path.write_text(json.dumps({"model": "m", "templates": ["hi"], "prices": "prices.toml"}))
    assert load_spec(path).prices == str(tmp_path / "sub" / "prices.toml")
    assert load_spec(path, prices="/etc/p.toml").prices == "/etc/p.toml"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompts_per_request": 5}, "spec field 'prompts_per_request' is for api 'completions' only"),
        ({"base_url": "ftp://example.com"}, "spec field 'base_url' must start with http:// or https://"),
        ({"base_url": "sk-abcdefghijklmnop"}, "spec field 'base_url' looks like an API key, not a URL"),
        ({"dedupe": "yes"}, "spec field 'dedupe' must be true or false, not 'yes'"),
        ({"rpm": {"other": 5}}, "spec field 'rpm' names model 'other', which is not one of the spec's models ('m')"),
        ({"tpm": {"m": 0}}, "tpm['m'] must be a positive number (finite), not 0"),
        ({"rpm": {}}, "spec field 'rpm' is an empty mapping"),
        ({"max_cost": -1}, "spec field 'max_cost' must be a positive number (finite), not -1"),
        ({"max_cost": float("inf")}, "spec field 'max_cost' must be a positive number (finite), not Infinity"),
        ({"prices": " "}, "spec field 'prices' must be a non-empty string"),
        ({"endpoints": {"m": {"base_url": "http://h", "api_key_env": "sk-proj-abc123"}}},
         "endpoints['m'].api_key_env looks like an API key: a key is never written in a spec; put it in an "
         "environment variable and give that variable's name as api_key_env"),
        ({"endpoints": {"m": {"base_url": "http://h", "api_key_env": "K", "api_key": "0123456789abcdef" * 2}}},
         "endpoints['m'].api_key looks like an API key"),
        ({"endpoints": {"m": {"base_url": "http://h", "api_key_env": "K", "headers": {}}}},
         "endpoints['m'] has unknown key 'headers' (known keys: base_url, api_key_env)"),
        ({"endpoints": {"m": {"base_url": "http://h"}}}, "endpoints['m'] needs 'api_key_env'"),
        ({"endpoints": {"m": {"base_url": "http://h", "api_key_env": "MY-KEY"}}},
         "endpoints['m'].api_key_env must name an environment variable"),
        ({"endpoints": {"m": {"base_url": "http://h:0", "api_key_env": "K"}}},
         "endpoints['m'].base_url has a bad port (1-65535): 'http://h:0'"),
        ({"endpoints": {"x": {"base_url": "http://h", "api_key_env": "K"}}},
         "spec field 'endpoints' names model 'x', which is not one of the spec's models ('m')"),
        ({"endpoints": []}, "spec field 'endpoints' must map model names to"),
    ],
)
def test_bad_run_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec(**fields)
    assert message in str(info.value)
    assert "abc123" not in str(info.value) and "0123456789abcdef" not in str(info.value)  # a key is never echoed


@pytest.mark.parametrize(
    "text",
    [
        '{"model": "m", "templates": ["hi"], "model": "other"}',
        '{"model": "m", "templates": ["hi"], "model_args": {"temperature": 1, "temperature": 0}}',
        '{"model": "m", "templates": ["{x}"], "keywords": [{"x": 1}, {"x": 2, "x": 3}]}',
    ],
)
def test_a_key_given_twice_in_json_is_refused_at_any_depth(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    key = "model" if '"model": "other"' in text else "temperature" if "temperature" in text else "x"
    assert str(info.value) == f"{path}: key {key!r} appears twice in one JSON object (the last would silently win)"
    (tmp_path / "spec").write_text(text)  # no suffix: JSON first
    with pytest.raises(SpecError, match="appears twice"):
        load_spec(tmp_path / "spec")


def test_a_key_given_twice_in_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text('model = "m"\ntemplates = ["hi"]\nmodel = "n"\n')
    with pytest.raises(SpecError, match="is not valid TOML: Cannot overwrite a value"):
        load_spec(path)
