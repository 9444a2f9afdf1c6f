"""Endpoints: base URLs as people write them, the run's endpoint, and one model's endpoint from a spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import batch_prompt as bp
from batch_prompt.errors import ConfigError, SpecError
from batch_prompt.spec.endpoints import (
    DEFAULT_BASE_URL,
    Endpoint,
    endpoint_for,
    looks_like_key,
    normalize_base_url,
    resolve_endpoint,
)
from batch_prompt.spec.spec import Spec
from batch_prompt.testing import FakeServer

from .conftest import cli_env, run_cli

NORMALIZED = [
    ("http://127.0.0.1:8089", "http://127.0.0.1:8089/v1"),
    ("http://127.0.0.1:8089/", "http://127.0.0.1:8089/v1"),
    ("http://127.0.0.1:8089/v1", "http://127.0.0.1:8089/v1"),
    ("http://127.0.0.1:8089/v1/", "http://127.0.0.1:8089/v1"),
    ("HTTPS://API.OpenAI.com:443/v1//", "https://api.openai.com/v1"),
    ("http://localhost:80/v1", "http://localhost/v1"),
    ("https://x.openai.azure.com/openai/v1", "https://x.openai.azure.com/openai/v1"),
    ("https://openrouter.ai/api/v1/", "https://openrouter.ai/api/v1"),
    ("http://[::1]:8000", "http://[::1]:8000/v1"),
    ("https://gateway.example.com/v1/ACCOUNT/Gateway/openai", "https://gateway.example.com/v1/ACCOUNT/Gateway/openai"),
]


@pytest.mark.parametrize(("url", "canonical"), NORMALIZED)
def test_base_urls_as_people_write_them(url: str, canonical: str) -> None:
    assert normalize_base_url(url) == canonical
    assert normalize_base_url(canonical) == canonical  # idempotent


REFUSED = [
    ("ftp://example.com", "base URL must start with http:// or https://, not 'ftp://example.com'"),
    ("example.com:8000", "base URL must start with http:// or https://"),
    ("http:/example.com", "base URL must start with http:// or https://"),
    ("http://", "base URL has no host: 'http://'"),
    ("http:///v1", "base URL has no host"),
    ("http://host:8089chat", "base URL has a bad port (1-65535): 'http://host:8089chat'"),
    ("http://host:99999/v1", "base URL has a bad port"),
    ("http://host:0", "base URL has a bad port"),
    ("http://host:/v1", "base URL has a bad port"),
    ("https://user:sk-SECRET123@api.example.com/v1", "base URL holds credentials (https://...@api.example.com): a "
     "key is never written down; put it in an environment variable (OPENAI_API_KEY, or a spec endpoint's "
     "api_key_env)"),
    ("https://sk-SECRET123@api.example.com", "base URL holds credentials"),
    ("https://api.example.com/v1?api-version=2024", "base URL has a query or fragment"),
    ("https://api.example.com/v1#x", "base URL has a query or fragment"),
    ("https://api.example.com/v1?", "base URL has a query or fragment"),
    (" http://host/v1", "base URL has whitespace or a control character in it"),
    ("http://host/v1 ", "base URL has whitespace"),
    ("http://ho st/v1", "base URL has whitespace"),
    ("http://host/v1\n", "base URL has whitespace"),
    ("https://api.example.com/sk-SECRET123/v1", "base URL has what looks like an API key in its path"),
    ("", "base URL must be a non-empty string"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_bad_base_urls_are_refused_in_one_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_base_url(url)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "SECRET" not in str(info.value)
    with pytest.raises(SpecError, match=r"^spec field 'base_url' "):
        normalize_base_url(url, "spec field 'base_url'", SpecError)


def test_a_key_looks_like_a_key_and_a_variable_name_does_not() -> None:
    keys = ["sk-proj-abc", "sk-ant-api03-xyz", "gsk_abc", "0123456789abcdef0123456789abcdef",
            "AIzaSyA1234567890abcdefghijklmnopqrstu", "hf_abcdefgh", "abcdEFGH1234abcdEFGH1234abcdEFGH1234"]
    names = ["OPENAI_API_KEY", "VLLM_KEY", "SK_KEY", "KEY_FOR_LLAMA", "MY_VERY_LONG_ENVIRONMENT_VARIABLE_NAME_FOR_KEYS"]
    assert [looks_like_key(k) for k in keys] == [True] * len(keys)
    assert [looks_like_key(n) for n in names] == [False] * len(names)


def test_resolve_endpoint_normalizes_and_keeps_the_key_out_of_repr() -> None:
    endpoint = resolve_endpoint("http://127.0.0.1:8089", "sk-test-secret-1")
    assert endpoint == Endpoint("http://127.0.0.1:8089/v1", "sk-test-secret-1")
    assert "secret" not in repr(endpoint) and endpoint.identity == "http://127.0.0.1:8089/v1"
    assert Endpoint("https://x.example.com/Deploy/v1", "k").identity == "https://x.example.com/deploy/v1"
    env = {"OPENAI_BASE_URL": "http://10.0.0.1:8000/", "OPENAI_API_KEY": "sk-env"}
    assert resolve_endpoint(None, None, env) == Endpoint("http://10.0.0.1:8000/v1", "sk-env")
    assert resolve_endpoint(None, None, {"OPENAI_API_KEY": "k"}).base_url == DEFAULT_BASE_URL
    with pytest.raises(ConfigError, match=r"^OPENAI_BASE_URL must start with http:// or https://"):
        resolve_endpoint(None, "k", {"OPENAI_BASE_URL": "localhost:8000"})
    with pytest.raises(ConfigError, match=r"^no API key: set OPENAI_API_KEY"):
        resolve_endpoint("http://h", None, {})
    with pytest.raises(ConfigError, match=r"^the API key has a space, newline or non-ASCII .*: check OPENAI_API_KEY$"):
        resolve_endpoint("http://h", "sk-a b", {})


def two_servers() -> Spec:
    return Spec.from_dict({
        "model": ["gpt-4o-mini", "llama"], "templates": ["hi"], "base_url": "https://proxy.example.com/v1/",
        "endpoints": {"llama": {"base_url": "http://gpu-box:8000", "api_key_env": "LLAMA_KEY"}},
    })


def test_endpoint_for_a_listed_model_uses_its_url_and_its_variable() -> None:
    spec = two_servers()
    env = {"LLAMA_KEY": "local-key", "OPENAI_API_KEY": "sk-openai", "OPENAI_BASE_URL": "http://elsewhere"}
    for fields in (spec, {"name": "j", **spec.identity(), **spec.run_fields()}):  # a Spec, or a job's stored spec
        assert endpoint_for(fields, "llama", env) == Endpoint("http://gpu-box:8000/v1", "local-key")
        assert endpoint_for(fields, "llama", env, base_url="http://option", api_key="sk-o") == Endpoint(
            "http://gpu-box:8000/v1", "local-key")  # the option is for the other models
        assert endpoint_for(fields, "gpt-4o-mini", env) == Endpoint("https://proxy.example.com/v1", "sk-openai")
        assert endpoint_for(fields, "gpt-4o-mini", env, base_url="http://option:1") == Endpoint(
            "http://option:1/v1", "sk-openai")


@pytest.mark.parametrize("env", [{}, {"LLAMA_KEY": ""}])
def test_endpoint_for_a_listed_model_without_its_key(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        endpoint_for(two_servers(), "llama", {**env, "OPENAI_API_KEY": "sk-openai"})
    assert str(info.value) == (
        "no API key for model 'llama': set the environment variable LLAMA_KEY (the spec's "
        "endpoints['llama'].api_key_env)"
    )


def test_endpoint_for_other_models_falls_back_to_the_environment_and_openai() -> None:
    spec = Spec.from_dict({"model": "m", "templates": ["hi"]})
    assert endpoint_for(spec, "m", {"OPENAI_API_KEY": "k"}) == Endpoint(DEFAULT_BASE_URL, "k")
    assert endpoint_for({}, "m", {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://h:1"}).base_url == "http://h:1/v1"
    with pytest.raises(ConfigError, match=r"^no API key"):
        endpoint_for(spec, "m", {})


def test_a_base_url_without_v1_reaches_the_server(fake: FakeServer, tmp_path: Path) -> None:
    """`--base-url http://host:port` (no path) used to end in `InvalidURL: Invalid port: '8089chat'`."""
    root = fake.url.removesuffix("/v1")
    db = tmp_path / "jobs.db"
    for name, base_url, args in (("option", None, ["--base-url", root]), ("spec", root + "/", [])):
        spec = tmp_path / f"{name}.json"
        spec.write_text(json.dumps({"name": name, "model": "m", "templates": [name + " {x}"],
                                    "keywords": {"x": [1, 2]}, "base_url": base_url}))
        out = run_cli("run", str(spec), "--db", str(db), "--quiet", *args, env=cli_env(tmp_path=tmp_path),
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert sorted(prompt for entry in fake.record for prompt in entry["prompts"]) == [
        "option 1", "option 2", "spec 1", "spec 2"]
    assert [(r["job"], r["messages"][0]["content"]) for r in bp.export(db)] == [
        ("option", "option 1"), ("option", "option 2"), ("spec", "spec 1"), ("spec", "spec 2")]
