"""Text the API accepts, and text it sends back: one rule for every string.

Two kinds of character break a request further down if they are let in:

- NUL (U+0000): PostgreSQL stores it neither in `text` nor in `jsonb`, so a prompt carrying
  one fails at its insert (or, inside a JSON column, later), while SQLite would keep it.
- A lone surrogate (U+D800 to U+DFFF): JSON's `\\u` escapes can spell one, Python's `json`
  reads it into a `str`, and then no UTF-8 encoder can write it: not the database driver, not
  the JSON serializer of the answer (a 500), not a webhook's body.

Every string field of every request body, every stored query or header value, is therefore
a `Text` (or one of the types built on it): such a string is refused with a validation error
of type `invalid_text` (a 422 `invalid_text` problem; a 400 under /v1), on SQLite and
PostgreSQL alike, before anything is stored. `check_json_text` does the same for free-form
JSON a model accepts without declaring it (the OpenAI request's extra fields). Two refusals
come from pydantic itself and are reported as `invalid_text` too (`validation_errors`): a
lone surrogate in any `str` field (pydantic's `string_unicode`), and such a character in a
field whose pattern refuses it anyway (a name: no check of our own is then needed).

On the way out, `scrub` turns a lone surrogate that is already stored (SQLite JSON columns
written before this check existed) into U+FFFD, so the row is shown rather than a 500.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints
from pydantic_core import PydanticCustomError

INVALID_TEXT = "invalid_text"
NUL_MESSAGE = "must not contain NUL (\\u0000) characters"
SURROGATE_MESSAGE = "must not contain lone surrogates (\\ud800 to \\udfff): send valid Unicode"
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be accepted as text, or None. ASCII strings (most) need one scan."""
    if "\x00" in value:
        return NUL_MESSAGE
    if not value.isascii() and _SURROGATE.search(value) is not None:
        # (pydantic refuses one in a declared `str` field itself, as `string_unicode`: the
        # error handlers report that as this; this check covers the rest, extra fields)
        return SURROGATE_MESSAGE
    return None


def check_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError(INVALID_TEXT, problem)
    return value


def check_json_text(value: Any) -> Any:
    """Every string in a JSON value (keys included) checked as `Text`; returns the value."""
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                check_text(key)
            check_json_text(item)
    elif isinstance(value, list):
        for item in value:
            check_json_text(item)
    return value


Text = Annotated[str, AfterValidator(check_text)]
"""Any string a client sends."""

Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(check_text),
]
"""A model name: `local`, `gpt-4o-mini`, `provider/model`."""

TYPE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


TypeName = Annotated[str, StringConstraints(pattern=TYPE_NAME_PATTERN)]
"""A prompt type's name, the same on submit (`prompt_type`) and in `/ai/prompt-types/{name}`:
1 to 64 letters, digits, `_`, `.`, `:` or `-`, starting with a letter or digit."""


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors (`loc`, `msg`, `type`, and `input`, which is dropped here: it may be
    large or secret), with pydantic's own refusals of such text reported as `invalid_text`."""
    cleaned = []
    for error in errors:
        kind, message, value = error.get("type"), str(error.get("msg", "")), error.get("input")
        if kind == "string_unicode":
            kind, message = INVALID_TEXT, SURROGATE_MESSAGE
        elif kind == "string_pattern_mismatch" and isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                kind, message = INVALID_TEXT, problem
        cleaned.append({"loc": list(error.get("loc", ())), "msg": message, "type": kind})
    return cleaned


def scrub(value: str) -> str:
    """`value` with each lone surrogate replaced by U+FFFD (a valid pair is joined)."""
    if value.isascii() or _SURROGATE.search(value) is None:
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def scrub_json(value: Any) -> Any:
    """A JSON value (as `json.loads` returns it) with every string `scrub`bed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_json(k): scrub_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_json(item) for item in value]
    return value
