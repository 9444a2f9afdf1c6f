"""Expansion: templates x keyword dicts x models x repeats -> prompt records, each with its request hash.

Order is (template, keyword dict, model, repeat), the export order. Expansion is a generator, so a
million-prompt job never sits in memory.

Request identity: `request_hash` is sha256 over `HASH_VERSION` + the canonical JSON of the exact request
(api, model, messages, prompt or input, every body parameter: model args with `extra_body` merged in) plus the
sample index when it is above 0. Every row of a job is its own draw: the sample index of a row is
`occurrence * repeats + repeat`, where `occurrence` counts the earlier rows of the same expansion with
the same request body (two keyword dicts that differ only in a field the template does not use, two
templates that render alike). So the first occurrence of a request hashes exactly as it always has
(repeat 0 of a job shares its hash, and cache entry, with the same request in any other job), and later
ones are new samples, as a repeat is. A spec's `dedupe` gives identical rows one shared hash (one answer)
instead. The sample index is stored in each row (`PromptRecord.sample_index`).

Seeds: with a `seed` in the model args, sample k is sent with `seed + k` (a server that honours seeds
would otherwise return one draw k times); sample 0 keeps the seed as given, so its hash is unchanged.
A later sample's hash is its own body's (the seed it is sent with), and its stored request is that body:
what is sent, and what the export shows, is the seed of that draw.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .model_args import request_args
from .spec import Spec, canonical_json
from .templates import raw_messages as raw_messages
from .templates import render as render

HASH_VERSION = "bp1"
PROMPT_KEYS = {"chat": "messages", "completions": "prompt", "responses": "input"}  # where a body holds its prompt


@dataclass(frozen=True, slots=True)
class PromptRecord:
    hash: str
    template_index: int
    keywords_index: int
    model_index: int
    sample_index: int  # the request's sample: occurrence * repeats + repeat (see the module docstring)
    model: str
    template_json: str
    keywords_json: str
    request_json: str  # {"model", "messages"|"prompt"|"input", **body parameters}: the body sent (packing aside)


def request_body(api: str, model: str, rendered: Any, model_args: dict[str, Any],
                 seed: int | None = None) -> dict[str, Any]:
    """The JSON body of a one-prompt request (`extra_body` merged in at top level, as the SDK does); with
    `seed`, that seed instead of the model args' (a later sample's, `seed_of(model_args) + k`)."""
    body = {"model": model, PROMPT_KEYS[api]: rendered, **request_args(model_args)}
    if seed is not None:
        body["seed"] = seed
    return body


def seed_of(model_args: dict[str, Any]) -> int | None:
    """The seed a request is sent with (`seed`, or one in `extra_body`), when it is an integer."""
    seed = request_args(model_args).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def request_hash(api: str, body: dict[str, Any], sample_index: int = 0) -> str:
    """Stable identity of a request: same api, body and sample index, same hash, in any process."""
    identity: dict[str, Any] = {"api": api, "body": body}
    if sample_index:
        identity["sample"] = sample_index
    return hash_text(canonical_json(identity))


def hash_text(text: str) -> str:
    return hashlib.sha256(f"{HASH_VERSION}:{text}".encode()).hexdigest()


class Occurrences:
    """How often each request body has occurred so far in one expansion.

    Keyed by the first 64 bits of a body's sample-0 hash, in an open-addressing table of 8-byte slots
    sized for the bodies expected, at most 3/4 full (~11 bytes per body: 11 MB for a million; a dict
    would take ~100 MB), with a dict only for the bodies seen more than once. Two different bodies
    sharing 64 bits (odds ~3e-8 in a million) would make the second a later occurrence of the first:
    still a unique hash, only not the one it had before rows were counted.
    """

    def __init__(self, expected: int = 0) -> None:
        self._table = array("Q", bytes(8 * max(1024, expected * 4 // 3 + 1)))
        self._used = 0
        self._repeated: dict[int, int] = {}

    def seen(self, digest: int) -> int:
        """How many times `digest` was seen before (0 the first time); counts this time."""
        digest = digest or 1  # 0 marks an empty slot
        table = self._table
        size = len(table)
        slot = digest % size
        while True:
            held = table[slot]
            if held == digest:
                count = self._repeated.get(digest, 0) + 1
                self._repeated[digest] = count
                return count
            if held == 0:
                table[slot] = digest
                self._used += 1
                if 4 * self._used > 3 * size:
                    self._grow()
                return 0
            slot = slot + 1 if slot + 1 < size else 0

    def _grow(self) -> None:
        old = self._table
        self._table = table = array("Q", bytes(16 * len(old)))
        size = len(table)
        for digest in old:
            if digest:
                slot = digest % size
                while table[slot]:
                    slot = slot + 1 if slot + 1 < size else 0
                table[slot] = digest


def expand(spec: Spec) -> Iterator[PromptRecord]:
    """Yield the spec's prompt records in export order. The hashes depend only on the spec: the same in
    any process, with or without a database (`estimate` expands too)."""
    template_jsons = [canonical_json(t) for t in spec.templates]
    # Two rows' bodies are equal exactly when their rendered prompts are (model args are the job's) and
    # their models are: so a prompt's occurrence, counted once by its first model's body, holds for all.
    occurrences = None if spec.dedupe else Occurrences(len(spec.templates) * spec.count_keyword_dicts())
    repeats = spec.repeats
    seed = seed_of(spec.model_args)
    for t_index, template in enumerate(spec.templates):
        for k_index, keywords in enumerate(spec.keyword_dicts()):
            rendered = render(template, keywords)
            if spec.api != "completions" and isinstance(rendered, str):  # one user message (responses: input)
                rendered = [{"role": "user", "content": rendered}]
            keywords_json = canonical_json(keywords)
            start = 0
            for m_index, model in enumerate(spec.models):
                body_json = canonical_json(request_body(spec.api, model, rendered, spec.model_args))
                # canonical_json({"api", "body", "sample"?}) written out: keys are already sorted
                head = f'{{"api":"{spec.api}","body":{body_json}'
                first = hash_text(head + "}")
                if m_index == 0 and occurrences is not None:
                    start = occurrences.seen(int(first[:16], 16)) * repeats
                for sample in range(start, start + repeats):
                    body_k, head_k = body_json, head
                    if sample and seed is not None:  # the k-th draw with its own seed (module docstring)
                        body_k = canonical_json(request_body(spec.api, model, rendered, spec.model_args,
                                                             seed + sample))
                        head_k = f'{{"api":"{spec.api}","body":{body_k}'
                    yield PromptRecord(
                        hash=hash_text(f'{head_k},"sample":{sample}}}') if sample else first,
                        template_index=t_index,
                        keywords_index=k_index,
                        model_index=m_index,
                        sample_index=sample,
                        model=model,
                        template_json=template_jsons[t_index],
                        keywords_json=keywords_json,
                        request_json=body_k,
                    )
