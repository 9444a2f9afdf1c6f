"""Endpoints: where requests go, and with which key.

`normalize_base_url` turns a base URL as people write it (`http://host:8000`, `http://host:8000/v1/`)
into the one form the SDK is given and the cache is keyed by. `resolve_endpoint` is the run's endpoint
from options and environment; `endpoint_for` is one model's, honouring a spec's `endpoints` (a model
served elsewhere, its key named by an environment variable). Keys are read per call from the
environment and never kept in a `repr`, written down, or accepted in a spec.

This module imports nothing heavy: the command line checks `--base-url` with it before anything runs.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BatchPromptError, ConfigError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_PATH = "/v1"  # what every OpenAI-compatible server serves under; a URL without a path means it
DEFAULT_PORTS = {"http": 80, "https": 443}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What an API key looks like when someone pastes one where a variable's name or a URL belongs: a key
# prefix (OpenAI's, Anthropic's and OpenRouter's sk-, Groq's, xAI's, Hugging Face's, Google's), or a long
# token of letters and digits with lower case, or hex (Azure's keys). Case-sensitive: an environment
# variable's name (upper case by convention, `SK_KEY`) is not a key.
_KEY_PREFIX = re.compile(r"^(sk-|sk_|gsk_|xai-|pplx-|hf_|nvapi-|AIza)")
_KEY_TOKEN = re.compile(r"[A-Fa-f0-9]{32,}|(?=.*[a-z])(?=.*[0-9])[A-Za-z0-9_\-]{32,}")


@dataclass(frozen=True)
class Endpoint:
    """Where requests go. The key is kept out of `repr` and never written anywhere."""

    base_url: str
    api_key: str = field(repr=False)
    key_env: str | None = field(default=None, compare=False)  # the variable the key came from (None: in code)

    @property
    def identity(self) -> str:
        """The cache's name for this endpoint: the normalized base URL (case-folded, as cache entries
        written before normalization were keyed), never the key."""
        return self.base_url.lower()


def looks_like_key(text: str) -> bool:
    """True for a string shaped like an API key (`sk-...`, a long hex or mixed-case token). An environment
    variable's name (`MY_SERVER_KEY`, upper case by convention) is not."""
    text = text.strip()
    return bool(_KEY_PREFIX.match(text) or _KEY_TOKEN.fullmatch(text))


def normalize_base_url(url: Any, what: str = "base URL", error: type[BatchPromptError] = ConfigError) -> str:
    """The canonical form of a base URL: `scheme://host[:port]/path`, scheme and host lower-case, the
    scheme's default port dropped, no trailing slash; no path at all means `/v1`; any other path is kept.

    Raises `error` (`ConfigError` for options and environment, `SpecError` for a spec field), a message
    starting with `what`, for: not a string, whitespace or control characters, not http(s), no host, a
    bad port, credentials (`user:key@host`: the message never repeats them), a query or a fragment.
    """
    if not isinstance(url, str) or not url:
        raise error(f"{what} must be a non-empty string (an http:// or https:// URL)")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise error(f"{what} has whitespace or a control character in it: {_shown(url)}")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise error(f"{what} is not a valid URL ({exc}): {_shown(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not url[len(scheme) :].startswith("://"):
        raise error(f"{what} must start with http:// or https://, not {_shown(url)}")
    if "@" in parts.netloc:
        raise error(
            f"{what} holds credentials ({scheme}://...@{parts.netloc.rsplit('@', 1)[1]}): a key is never written "
            "down; put it in an environment variable (OPENAI_API_KEY, or a spec endpoint's api_key_env)"
        )
    if "?" in url or "#" in url:
        raise error(f"{what} has a query or fragment (?... or #...): give only scheme, host, port and path")
    host = parts.hostname
    if not host:
        raise error(f"{what} has no host: {_shown(url)}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    has_port = parts.netloc.rsplit("]", 1)[-1].count(":") > 0
    if port == -1 or port == 0 or (has_port and port is None):
        raise error(f"{what} has a bad port (1-65535): {_shown(url)}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    if any(segment.lower().startswith("sk-") for segment in parts.path.split("/")):
        raise error(f"{what} has what looks like an API key in its path: a key is never written down")
    path = parts.path.rstrip("/") or DEFAULT_PATH
    return f"{scheme}://{netloc}{path}"


def _shown(url: str) -> str:
    text = repr(url)
    return text if len(text) <= 80 else text[:77] + "..."


def check_key(key: str, source: str) -> str:
    """A key as read from `source` (an environment variable's name), refused when it cannot be a header."""
    if not key.isascii() or not key.isprintable() or key != key.strip() or " " in key:
        raise ConfigError(f"the API key has a space, newline or non-ASCII character: check {source}")
    return key


def resolve_endpoint(base_url: str | None, api_key: str | None, env: Mapping[str, str] | None = None) -> Endpoint:
    """The run's endpoint: options first, then `OPENAI_BASE_URL` / `OPENAI_API_KEY`, then OpenAI's URL.

    The URL is normalized (`normalize_base_url`). Raises `ConfigError` for a bad URL or when there is no key.
    """
    env = os.environ if env is None else env
    if base_url:
        url = normalize_base_url(base_url)
    else:
        url = normalize_base_url(env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL, "OPENAI_BASE_URL")
    key = api_key or env.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError("no API key: set OPENAI_API_KEY (or pass api_key=...)")
    return Endpoint(url, check_key(key, "OPENAI_API_KEY"), None if api_key else "OPENAI_API_KEY")


def endpoint_for(
    fields: Any, model: str, env: Mapping[str, str] | None = None, *, base_url: str | None = None,
    api_key: str | None = None,
) -> Endpoint:
    """Where `model`'s requests go, for a job's stored spec (a mapping, `JobRow.spec`) or a `Spec`.

    A model listed in the spec's `endpoints` uses that base URL and the key in the environment variable
    its `api_key_env` names (`base_url` and `api_key` here do not apply to it); a missing or empty
    variable is a `ConfigError` naming the variable and the model. Any other model goes where
    `resolve_endpoint` says: the `base_url` option, else the spec's `base_url`, else `OPENAI_BASE_URL`,
    else OpenAI, with `api_key` or `OPENAI_API_KEY`.
    """
    env = os.environ if env is None else env
    listed = (_field(fields, "endpoints") or {}).get(model)
    if listed is None:
        return resolve_endpoint(base_url or _field(fields, "base_url"), api_key, env)
    variable = listed["api_key_env"]
    key = env.get(variable)
    if not key:
        raise ConfigError(
            f"no API key for model {model!r}: set the environment variable {variable} "
            f"(the spec's endpoints[{model!r}].api_key_env)"
        )
    return Endpoint(normalize_base_url(listed["base_url"], f"endpoints[{model!r}].base_url"), check_key(key, variable),
                    variable)


def batch_endpoint(base_url: str, key_env: str | None, api_key: str | None, env: Mapping[str, str] | None = None,
                   ) -> Endpoint:
    """Where a recorded batch is collected: the URL it was sent to, with the key from the variable it was
    sent with (`api_key`, a key given in code, when it recorded none). `ConfigError` naming the variable
    when it is not set."""
    env = os.environ if env is None else env
    key = (env.get(key_env) if key_env else None) or api_key
    if not key:
        variable = key_env or "OPENAI_API_KEY"
        raise ConfigError(f"batches are open at {base_url}, sent with the key in {variable}: set {variable} to "
                          "collect them", endpoint=base_url)
    return Endpoint(base_url, check_key(key, key_env or "api_key"), key_env)


def _field(fields: Any, name: str) -> Any:
    return fields.get(name) if isinstance(fields, Mapping) else getattr(fields, name, None)
