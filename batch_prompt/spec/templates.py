"""Templates: the `str.format` fields a template uses, checked when the spec is read, and filling them.

A template is a string, or (chat) a list of `{"role", "content"}` messages whose contents are
templates. Only plain named fields are filled (`{food}`, with a conversion `{food!r}` or a format spec
`{n:03d}`): attribute access and indexing (`{x.upper}`, `{x[0]}`) would put a method's address or a
character into the prompt, and are refused, as are positional fields (`{}`, `{0}`). A literal brace
is written `{{` / `}}`.
"""

from __future__ import annotations

import string
from typing import Any

from ..errors import SpecError, shown

Template = str | list[dict[str, str]]
Keywords = dict[str, Any]
BRACE_HINT = "a literal brace is written {{ or }}"


def texts(template: Template) -> list[str]:
    """The format strings of a template: itself, or each message's content."""
    return [template] if isinstance(template, str) else [m["content"] for m in template]


def template_fields(template: Template) -> frozenset[str]:
    """The names of the fields a template fills (nested format-spec fields included).

    Raises `SpecError` naming the template for an invalid format string (with the hint for a literal
    brace), a positional field, or a field with attribute access or indexing.
    """
    names: set[str] = set()
    for text in texts(template):
        _collect(text, template, names)
    return frozenset(names)


def _collect(text: str, template: Template, names: set[str]) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        hint = f" ({BRACE_HINT})" if "'}'" in str(exc) or "'{'" in str(exc) else ""
        raise SpecError(f"template {shown(template)} is not a valid format string: {exc}{hint}") from None
    for _, field_name, format_spec, _ in parsed:
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise SpecError(f"template {shown(template)} uses a positional field; name it, e.g. {{food}}")
        if "." in field_name or "[" in field_name:
            dot, bracket = field_name.find("."), field_name.find("[")
            kind = "attribute access" if bracket == -1 or -1 < dot < bracket else "indexing"
            base = field_name.split(".", 1)[0].split("[", 1)[0]
            raise SpecError(
                f"template {shown(template)} field {{{field_name}}} uses {kind}, which is not filled in: "
                f"use a plain field such as {{{base}}} and put the value you mean in the keyword dict"
            )
        names.add(field_name)
        if format_spec and "{" in format_spec:
            _collect(format_spec, template, names)


def render(template: Template, keywords: Keywords) -> Any:
    """Fill a template's fields: a string, or a list of messages. Raises `SpecError` (a format spec that
    does not fit its value, `{n:d}` for a string), quoting template and keyword dict shortened."""
    try:
        if isinstance(template, str):
            return template.format(**keywords)
        return [{"role": m["role"], "content": m["content"].format(**keywords)} for m in template]
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise SpecError(
            f"cannot fill template {shown(template)} with keyword dict {shown(keywords)}: "
            f"{type(exc).__name__}: {str(exc)[:120]}"
        ) from None


def raw_messages(template: Template) -> list[dict[str, str]]:
    """Chat template as messages: a string becomes one user message."""
    if isinstance(template, str):
        return [{"role": "user", "content": template}]
    return template
