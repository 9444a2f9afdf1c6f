"""The Responses API's answers in the chat shape the rest of batch-prompt reads.

A job with `api: "responses"` keeps each answer as the server sent it (a Response object: `object:
"response"`, `output` items, `usage` in input/output tokens). Everything that reads answers (the ledger's
token counts, the export, status, show) reads them through `as_chat`, the one mapping to the chat
completion's shape:

- `choices`: one choice, `{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason",
  "logprobs": None}`, TEXT the `output_text` parts of the `message` output items joined (a refusal part
  is the message's `refusal`); `finish_reason` is "stop" for status `completed`, "length" for
  `incomplete` with reason `max_output_tokens`, "content_filter" for that reason, else the status. A
  response with no answer at all (status `failed`, `cancelled`, `queued`, `in_progress`) has no choice;
- `usage` (`chat_usage`): `prompt_tokens` = `input_tokens`, `completion_tokens` = `output_tokens`
  (reasoning included, as billed), `total_tokens`, `prompt_tokens_details.cached_tokens`,
  `completion_tokens_details.reasoning_tokens`;
- `id`, `model`, `created` (from `created_at`, whole seconds), `service_tier`.

Any other answer (chat, completions) is returned as it is, so the readers need not know the job's API.
"""

from __future__ import annotations

from typing import Any

ANSWERED = ("completed", "incomplete")  # statuses whose output is the model's answer (incomplete: cut short)
FINISH_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def is_response(data: Any) -> bool:
    """True for a Responses API response (`object: "response"`, or `output` items and no `choices`)."""
    return isinstance(data, dict) and "choices" not in data and (
        data.get("object") == "response" or isinstance(data.get("output"), list))


def as_chat(data: Any) -> Any:
    """`data` in the chat completion's shape (see the module docstring) when it is a Responses API
    response; any other value returned as it is (the same object). Never raises on odd values."""
    if not is_response(data):
        return data
    status = data.get("status")
    chat: dict[str, Any] = {"id": data.get("id")}
    created = data.get("created_at")
    chat["created"] = int(created) if isinstance(created, int | float) and not isinstance(created, bool) else None
    chat.update(model=data.get("model"), service_tier=data.get("service_tier"))
    choices: list[dict[str, Any]] = []
    if status in ANSWERED:
        text, refusal = _output_text(data.get("output"))
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if refusal is not None:
            message["refusal"] = refusal
        choices.append({"index": 0, "message": message, "finish_reason": finish_reason(data), "logprobs": None})
    chat["choices"] = choices
    if "usage" in data:
        chat["usage"] = chat_usage(data["usage"])
    return chat


def finish_reason(data: dict[str, Any]) -> Any:
    """A response's status as a chat `finish_reason`."""
    status = data.get("status")
    if status == "completed":
        return "stop"
    details = data.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if status == "incomplete" and reason in FINISH_REASONS:
        return FINISH_REASONS[reason]
    return status


def chat_usage(usage: Any) -> Any:
    """A Responses usage in chat's keys (see the module docstring); any other usage as it is."""
    if not isinstance(usage, dict) or "prompt_tokens" in usage or "input_tokens" not in usage:
        return usage
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    total = usage.get("total_tokens")
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    chat: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    given = usage.get("input_tokens_details")
    if isinstance(given, dict):
        chat["prompt_tokens_details"] = {"cached_tokens": given.get("cached_tokens")}
    made = usage.get("output_tokens_details")
    if isinstance(made, dict):
        chat["completion_tokens_details"] = {"reasoning_tokens": made.get("reasoning_tokens")}
    return chat


def usage_of(data: Any) -> dict[str, Any]:
    """The chat-shaped usage of any answer (a dict; empty when it has none)."""
    usage = chat_usage(data.get("usage")) if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else {}


def _output_text(output: Any) -> tuple[str, str | None]:
    """The `output_text` parts of the message items joined, and the refusal parts' (None: no refusal)."""
    texts: list[str] = []
    refusals: list[str] = []
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            continue  # reasoning, tool calls: not the answer's text
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                refusals.append(part["refusal"])
    return "".join(texts), ("".join(refusals) if refusals else None)
