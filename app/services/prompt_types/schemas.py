"""The /ai/prompt-types schemas: `PromptTypeDefinition` in (PUT), `PromptTypeOut` out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.db.models import PromptType
from app.kit.fields import Name, StrictFloat, StrictInt, Text, distinct
from app.providers.registry import MAX_FALLBACKS
from app.services.prompt_types.template import parse_template


def _none_if_blank(value: str | None) -> str | None:
    return value if value is None or value.strip() else None


_EXAMPLE: dict[str, Any] = {
    "description": "Summaries for a named audience.",
    "system_instruction": "You write short, plain summaries.",
    "template": "Summarise for {audience}:\n{prompt_text}",
    "default_model": "gpt-4o-mini",
    "fallbacks": ["claude-haiku-4-5"],
    "max_prompt_chars": 20000,
    "max_output_tokens": 512,
    "timeout_seconds": 30,
}


class PromptTypeDefinition(BaseModel):
    """A prompt type's policy. Every field is optional: what is left out is not enforced
    (the request's own value, or the server's default, applies)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    description: Annotated[Text | None, AfterValidator(_none_if_blank)] = Field(
        None, max_length=500, description="What this type is for, for people."
    )
    system_instruction: Annotated[Text | None, AfterValidator(_none_if_blank)] = Field(
        None,
        max_length=100_000,
        description="Sent as the system message. A request's own `system_prompt` follows it, "
        "after a blank line.",
    )
    template: Annotated[Text | None, AfterValidator(_none_if_blank)] = Field(
        None,
        max_length=100_000,
        description="The user message, built from the request: `{prompt_text}` (required) is "
        "the request's text, any other `{name}` a value the request gives in `variables`. "
        "Only plain `{name}` fields; `{{` and `}}` are literal braces.",
        examples=["Summarise for {audience}:\n{prompt_text}"],
    )
    default_model: Name | None = Field(
        None,
        description="The model used when a request names none. Must resolve here (catalogue "
        "name or `provider/model` of a configured provider).",
        examples=["gpt-4o-mini"],
    )
    fallbacks: Annotated[list[Name], AfterValidator(distinct)] | None = Field(
        None,
        max_length=MAX_FALLBACKS,
        description="Fallback models for requests that give no `fallbacks`. Null: the "
        "model's own catalogue fallbacks; `[]`: none.",
    )
    max_prompt_chars: StrictInt | None = Field(
        None,
        ge=1,
        description="Longest prompt (as rendered by the template) accepted for this type; "
        "never more than the server's MAX_PROMPT_CHARS.",
    )
    max_output_tokens: StrictInt | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Ceiling for `max_tokens`, and its value when a request gives none "
        "(lowered to what the model can produce). A request asking more is a 422 "
        "`max_tokens_too_large`.",
    )
    timeout_seconds: StrictFloat | None = Field(
        None,
        gt=0,
        le=600,
        description="Ceiling for `timeout_seconds`, and its value when a request gives none. "
        "A request asking more is a 422 `timeout_too_large`.",
    )


class PromptTypeOut(PromptTypeDefinition):
    """One version of a prompt type."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "summary",
                    "version": 2,
                    **_EXAMPLE,
                    "variables": ["audience"],
                    "retired": False,
                    "created_at": "2026-11-26T10:02:11.530211Z",
                    "created_by": "0b4e6f0c-7d55-4c4e-9d63-4f0f3f1f2a10",
                }
            ]
        },
    )

    name: str = Field(examples=["summary"])
    version: int = Field(
        description="1, 2, …: every change (and retiring) makes a new version; prompts "
        "record the version they ran under (`prompt_type_version`)."
    )
    variables: list[str] = Field(
        description="The variables the template needs (besides `prompt_text`): a request "
        "must give exactly these in `variables`."
    )
    retired: bool = Field(
        description="True for the version that retired the type (DELETE). Prompts of a "
        "retired type are refused until a PUT defines it again."
    )
    created_at: datetime
    created_by: uuid.UUID | None = Field(
        description="The admin who made this version: shown to admins only (null for others, "
        "as for a version made from the command line)."
    )

    @classmethod
    def from_row(cls, row: PromptType, *, show_creator: bool) -> PromptTypeOut:
        """`show_creator`: the reader is an admin (an admin's id is not every user's to see)."""
        template = parse_template(row.template) if row.template is not None else None
        return cls(
            name=row.name,
            version=row.version,
            **row.policy(),
            variables=list(template.variables) if template else [],
            retired=row.retired,
            created_at=row.created_at,
            created_by=row.created_by if show_creator else None,
        )


class PromptTypeList(BaseModel):
    items: list[PromptTypeOut] = Field(description="The current version of each active type.")
