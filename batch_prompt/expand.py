"""Expansion: templates x keyword dicts x models x repeats -> prompt records, each with its request hash.

Order is (template, keyword dict, model, sample), the export order. Expansion is a generator, so a
million-prompt job never sits in memory.

Request identity: `request_hash` is sha256 over `HASH_VERSION` + the canonical JSON of the exact request
(api, model, messages or prompt, every model arg) plus the sample index when it is above 0, so repeat 0 of
a job shares its hash (and cache entry) with the same request in a job without repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .spec import Keywords, Spec, Template, canonical_json

HASH_VERSION = "bp1"


@dataclass(frozen=True, slots=True)
class PromptRecord:
    hash: str
    template_index: int
    keywords_index: int
    model_index: int
    sample_index: int
    model: str
    template_json: str
    keywords_json: str
    request_json: str  # {"model", "messages"|"prompt", **model_args}: the body sent (packing aside)


def request_body(api: str, model: str, rendered: Any, model_args: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a one-prompt request."""
    key = "messages" if api == "chat" else "prompt"
    return {"model": model, key: rendered, **model_args}


def request_hash(api: str, body: dict[str, Any], sample_index: int = 0) -> str:
    """Stable identity of a request: same api, body and sample index, same hash, in any process."""
    identity: dict[str, Any] = {"api": api, "body": body}
    if sample_index:
        identity["sample"] = sample_index
    return hash_text(canonical_json(identity))


def hash_text(text: str) -> str:
    return hashlib.sha256(f"{HASH_VERSION}:{text}".encode()).hexdigest()


def render(template: Template, keywords: Keywords) -> Any:
    """Fill a template's `str.format` fields: a string, or a list of messages. Raises `SpecError`."""
    try:
        if isinstance(template, str):
            return template.format(**keywords)
        return [{"role": m["role"], "content": m["content"].format(**keywords)} for m in template]
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise SpecError(f"cannot fill template {template!r} with {keywords!r}: {exc!r}") from None


def raw_messages(template: Template) -> list[dict[str, str]]:
    """Chat template as messages: a string becomes one user message."""
    if isinstance(template, str):
        return [{"role": "user", "content": template}]
    return template


def expand(spec: Spec) -> Iterator[PromptRecord]:
    """Yield the spec's prompt records in export order."""
    template_jsons = [canonical_json(t) for t in spec.templates]
    for t_index, template in enumerate(spec.templates):
        for k_index, keywords in enumerate(spec.keyword_dicts()):
            rendered = render(template, keywords)
            if spec.api == "chat" and isinstance(rendered, str):
                rendered = [{"role": "user", "content": rendered}]
            keywords_json = canonical_json(keywords)
            for m_index, model in enumerate(spec.models):
                body_json = canonical_json(request_body(spec.api, model, rendered, spec.model_args))
                for sample in range(spec.repeats):
                    # canonical_json({"api", "body", "sample"?}) written out: keys are already sorted
                    identity = f'{{"api":"{spec.api}","body":{body_json}'
                    identity += f',"sample":{sample}}}' if sample else "}"
                    yield PromptRecord(
                        hash=hash_text(identity),
                        template_index=t_index,
                        keywords_index=k_index,
                        model_index=m_index,
                        sample_index=sample,
                        model=model,
                        template_json=template_jsons[t_index],
                        keywords_json=keywords_json,
                        request_json=body_json,
                    )
