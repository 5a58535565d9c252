"""Prompt templates: `{name}` fields only, parsed once when a type is defined.

`str.format` would let a template reach attributes and items (`{x.__class__}`, `{x[0]}`) and
take format specs; a template is admin input rendered with client input, so it gets none of
that. `string.Formatter.parse` does the tokenising (including `{{` and `}}` escapes); every
field must then be a plain identifier without conversion or format spec, and rendering only
concatenates the literal text and the values.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

PROMPT_TEXT = "prompt_text"  # the field that receives the request's own text
MAX_VARIABLES = 50
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class TemplateError(ValueError):
    """A template that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: (literal text, field name or None) pieces, in order."""

    pieces: tuple[tuple[str, str | None], ...]

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables a request must give: every field except `prompt_text`, in order of
        first appearance."""
        names = (name for _, name in self.pieces if name is not None and name != PROMPT_TEXT)
        return tuple(dict.fromkeys(names))

    def render(self, values: dict[str, str]) -> str:
        """The text with every field replaced; `values` must hold all of them."""
        return "".join(
            literal + (values[name] if name is not None else "") for literal, name in self.pieces
        )


def parse_template(source: str) -> Template:
    """Parse and validate; raises TemplateError. `{prompt_text}` must appear, or the
    request's own text would be silently dropped."""
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(source))
    except ValueError as exc:  # an unmatched `{` or `}`
        raise TemplateError(f"{exc}; write a literal brace as {{{{ or }}}}.") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, None))
            continue
        if not IDENTIFIER.match(field):
            raise TemplateError(
                f"'{{{field}}}' is not a plain variable: fields are {{name}} with a name of "
                "letters, digits and underscores (no positions, attributes or indexes)."
            )
        if spec or conversion:
            raise TemplateError(
                f"'{{{field}}}' has a conversion or format spec; only plain {{name}} is allowed."
            )
        pieces.append((literal, field))
    template = Template(tuple(pieces))
    if PROMPT_TEXT not in {name for _, name in pieces}:
        raise TemplateError(f"The template must contain {{{PROMPT_TEXT}}}, the request's text.")
    if len(template.variables) > MAX_VARIABLES:
        raise TemplateError(f"A template may use at most {MAX_VARIABLES} variables.")
    return template
