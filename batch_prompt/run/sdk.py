"""The openai SDK as the live path needs it, without importing it until it is needed.

Importing `openai` takes 0.5-1 s and 30-40 MB (its pydantic types): longer than a small job's whole run.
The live hot path (`client.ApiClient.send`) sends with aiohttp and never needs it while every call
succeeds; what it needs of the SDK is here:

- `request_headers(api_key)`: the headers `AsyncOpenAI` sends with every request (its `default_headers`
  and `auth_headers`, computed as the SDK computes them; a test holds them equal to the SDK's own);
- `loaded()`: the SDK if some code imported it, else None. An exception can be one of the SDK's types
  only once the SDK is imported, so `failures.classify` asks this instead of importing it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import sys
from types import ModuleType


def loaded() -> ModuleType | None:
    """The openai SDK if it is imported, else None (then nothing raised so far is one of its types)."""
    return sys.modules.get("openai")


def request_headers(api_key: str) -> dict[str, str]:
    """What `AsyncOpenAI(api_key=api_key)` sends with every request, from inside an asyncio event loop:
    its default headers (`User-Agent: AsyncOpenAI/Python <version>`, the `X-Stainless-*` platform
    headers, `OpenAI-Organization` and `OpenAI-Project` from `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID`),
    then its auth header."""
    version = _version()
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": f"AsyncOpenAI/Python {version}",
        **_platform_headers(version),
        "X-Stainless-Async": "async:asyncio",
    }
    for name, variable in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
        value = os.environ.get(variable)
        if value is not None:
            headers[name] = value
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


@functools.cache
def _version() -> str:
    return importlib.metadata.version("openai")


@functools.cache
def _platform_headers(version: str) -> dict[str, str]:
    """`openai._base_client.platform_headers`: the same values, worked out the same way."""
    return {
        "X-Stainless-Lang": "python",
        "X-Stainless-Package-Version": version,
        "X-Stainless-OS": _os_name(),
        "X-Stainless-Arch": _arch(),
        "X-Stainless-Runtime": platform.python_implementation(),
        "X-Stainless-Runtime-Version": platform.python_version(),
    }


def _os_name() -> str:
    system, name = platform.system().lower(), platform.platform().lower()
    if "iphone" in name or "ipad" in name:
        return "iOS"
    named = {"darwin": "MacOS", "windows": "Windows", "freebsd": "FreeBSD", "openbsd": "OpenBSD"}
    if system in named:
        return named[system]
    if "android" in name:
        return "Android"
    if system == "linux":
        try:
            distro = platform.freedesktop_os_release().get("ID", "").lower()
        except OSError:
            distro = ""
        return {"freebsd": "FreeBSD", "openbsd": "OpenBSD"}.get(distro, "Linux")
    return f"Other:{name}" if name else "Unknown"


def _arch() -> str:
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if machine in ("arm", "x86_64"):
        return {"arm": "arm", "x86_64": "x64"}[machine]
    if sys.maxsize <= 2**32:
        return "x32"
    return f"other:{machine}" if machine else "unknown"
