"""Field types shared by the request schemas of every endpoint (/ai/prompts/, /v1,
/ai/prompt-types): the text rule of app/kit/text.py applied, strict numbers, distinct lists."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Strict, StringConstraints

from app.kit.text import Name, Text, TypeName, check_text

__all__ = ["Name", "Text", "TypeName"]


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain some non-whitespace text")
    return value


MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(check_text)
]
MetadataValue = Annotated[str, StringConstraints(max_length=512), AfterValidator(check_text)]


def _not_prompt_text(value: str) -> str:
    if value == "prompt_text":
        raise ValueError("prompt_text is the request's own text, not a variable")
    return value


VariableName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"),
    AfterValidator(_not_prompt_text),
]
VariableValue = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(check_text)]

# Numbers and flags in a body are JSON numbers and booleans, not `"5"` or `true` for 1: a
# client that sends a string there has a bug, and a gateway that guesses hides it.
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]  # (an integer is still a number: 1 is 1.0)
StrictBool = Annotated[bool, Strict()]


def distinct(models: list[str]) -> list[str]:
    """Fallbacks name each model once: a repeat would only retry the same failure."""
    seen: set[str] = set()
    for model in models:
        if model in seen:
            raise ValueError(f"'{model}' is listed twice; name each model once")
        seen.add(model)
    return models
