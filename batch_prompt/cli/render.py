"""What the command line shows of a prompt (`show`), as lines of text. A job's status, an estimate and a
run's summary are `reports.text`'s lines, the same that Python shows. Nothing here prints (the CLI does)."""

from __future__ import annotations

import json

from ..reports.prices import money as money
from ..reports.status import PromptView
from ..reports.text import plural, short
from ..results.table import messages_text


def view_lines(view: PromptView) -> list[str]:
    head = f"{view.job} #{view.id} {view.model} {view.status}"
    if view.status == "failed":
        head += f": {view.error_kind or 'error'} ({plural(view.attempts, 'attempt')})"
    elif view.cached:
        head += " (from the cache)"
    prompt = messages_text(view.prompt) if isinstance(view.prompt, list) else str(view.prompt)
    lines = [head, short(f"  prompt: {prompt}"), short(f"  keywords: {json.dumps(view.keywords)}")]
    if view.error:
        lines.append(short(f"  error: {view.error}"))
    if view.answers:
        more = len(view.answers) - 1
        extra = f" (+{plural(more, 'more choice')})" if more else ""
        lines.append(short(f"  answer: {view.answers[0]}", len(extra)) + extra)
    errors = [(k, error) for k, error in enumerate(view.parse_errors or ()) if error is not None]
    if errors:
        k, error = errors[0]
        others = f" (+{plural(len(errors) - 1, 'more')})" if len(errors) > 1 else ""
        lines.append(short(f"  does not parse (choice {k}): {error}", len(others)) + others)
    return lines

