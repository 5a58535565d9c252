"""The /ai/prompts schemas: `PromptCreate` in; `PromptOut`, `PromptDetail` and pages out."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.db.models import PromptRequest, PromptStatus
from app.kit.fields import (
    MetadataKey,
    MetadataValue,
    Name,
    StrictFloat,
    StrictInt,
    Text,
    TypeName,
    VariableName,
    VariableValue,
    distinct,
    not_blank,
)
from app.services.conversation import (
    ChatMessage,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    check_extras,
    check_free_json,
)


class PromptCreate(BaseModel):
    """A prompt to run. Server fields (id, status, user, timestamps) cannot be set."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "local",
                    "prompt_type": "text",
                    "prompt_text": "Write a haiku about databases.",
                    "max_tokens": 64,
                    "metadata": {"team": "docs"},
                }
            ]
        },
    )

    model: Name | None = Field(
        None,
        description="A catalogue name (`local`, `gpt-4o-mini`, …) or `provider/model`. "
        "May be left out when the `prompt_type` is defined with a `default_model`.",
        examples=["local", "openai/gpt-4.1-nano"],
    )
    prompt_type: TypeName = Field(
        description="What kind of prompt this is: text, code, report, … (1 to 64 letters, "
        "digits, `_`, `.`, `:` or `-`, starting with a letter or digit: a name "
        "`/ai/prompt-types` could define). When an admin has defined this type, its current "
        "policy applies (default model and fallbacks, limits, system instruction, template) "
        "and the prompt records the version (`prompt_type_version`); otherwise it is a free "
        "label.",
        examples=["text"],
    )
    prompt_text: Annotated[Text, AfterValidator(not_blank)] | None = Field(
        None,
        min_length=1,
        description="The prompt. At most MAX_PROMPT_CHARS characters (100,000 by default), "
        "or the prompt type's `max_prompt_chars` if lower. With a type's template, it fills "
        "`{prompt_text}`. Give either this or `messages`.",
    )
    messages: list[ChatMessage] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="A conversation instead of `prompt_text`, in OpenAI's chat-completions "
        "shape (system, user, assistant and tool turns; text and `image_url` parts). Its last "
        "user message is the prompt's `prompt_text` (and what a type's template fills).",
    )
    tools: list[Tool] | None = Field(
        None,
        max_length=128,
        description="Function tools in OpenAI's shape; the answer's calls are stored as "
        "`response.tool_calls`.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = Field(
        None,
        description='Structured output in OpenAI\'s shape: `{"type": "json_schema", '
        '"json_schema": {"name": ..., "schema": {...}, "strict": true}}` or `{"type": '
        '"json_object"}`. The answer is then parsed and stored as `response.output_json`, '
        "checked against the schema; an answer that is not valid JSON (or does not match) "
        "ends the prompt `failed` with `invalid_structured_output`, its text kept.",
    )
    system_prompt: Text | None = Field(
        None, max_length=100_000, description="Instructions sent as the system message."
    )
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    max_tokens: StrictInt | None = Field(
        None, ge=1, le=65_536, description="Most tokens to generate."
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Up to 16 string pairs of your own (keys ≤ 64, values ≤ 512 characters).",
    )
    fallbacks: Annotated[list[Name], AfterValidator(distinct)] | None = Field(
        None,
        max_length=5,
        description="Models to try, in order, when this one keeps failing with a retryable "
        "error, each named once. Default: the catalogue entry's own fallbacks, if any. `[]` "
        "means none.",
        examples=[["claude-haiku-4-5", "gemini-2.5-flash"]],
    )
    timeout_seconds: StrictFloat | None = Field(
        None, gt=0, le=600, description="Total time allowed for each provider call."
    )
    variables: dict[VariableName, VariableValue] | None = Field(
        None,
        max_length=50,
        description="Values for the `{name}` fields of the prompt type's template: exactly "
        "the type's `variables` (up to 50; names are identifiers, values ≤ 10,000 "
        "characters). Only for a type with a template.",
        examples=[{"audience": "new customers"}],
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> PromptCreate:
        if (self.prompt_text is None) == (self.messages is None):
            raise ValueError("give either prompt_text or messages (one of them)")
        if self.messages is not None:
            check_extras(self.messages)
        check_free_json(self.tools, self.response_format)
        return self


_PROMPT_EXAMPLE: dict[str, Any] = {
    "id": "2c292282-6542-4384-9450-18a794829bad",
    "user_id": "0b5c6a0e-3d7e-4d4f-9a43-5f1c1b6f2b11",
    "api_key_id": "9a1f3c2e-7b44-4c1d-8e2f-6d0a5b3c4e21",
    "team_id": None,
    "model": "gpt-4o-mini",
    "provider": "openai",
    "prompt_type": "text",
    "prompt_type_version": None,
    "prompt_text": "Write a haiku about databases.",
    "status": "pending",
    "created_at": "2026-11-25T13:17:14.067333Z",
    "started_at": None,
    "finished_at": None,
    "cancel_requested_at": None,
    "metadata": {"team": "docs"},
}


class PromptOut(BaseModel):
    """A prompt as stored, without its outcome."""

    model_config = ConfigDict(
        from_attributes=True,
        validate_by_name=True,
        json_schema_extra={"examples": [_PROMPT_EXAMPLE]},
    )

    id: uuid.UUID
    user_id: uuid.UUID = Field(description="Who made it.")
    api_key_id: uuid.UUID | None = Field(
        None,
        description="The API key it was made with (null for prompts made before keys "
        "were recorded).",
    )
    team_id: uuid.UUID | None = Field(
        None,
        description="The team it is billed to and shown in (its key's team); null: its "
        "maker's own.",
    )
    model: str = Field(description="The model as requested.")
    provider: str = Field(description="The provider it was routed to.")
    prompt_type: str
    prompt_type_version: int | None = Field(
        description="The version of the prompt type's policy it ran under; null when its "
        "type was not defined."
    )
    prompt_text: str = Field(
        description="The text sent to the model as the user message: with a prompt type's "
        "template, as rendered (the request's own text and variables are in "
        "`parameters.template_input`)."
    )
    status: PromptStatus = Field(description="pending → running → completed | failed | cancelled")
    created_at: datetime
    started_at: datetime | None = Field(description="When the last execution started.")
    finished_at: datetime | None = Field(description="When it reached its final status.")
    cancel_requested_at: datetime | None = Field(
        description="When its cancellation was requested. A running prompt then ends "
        "`cancelled` within about a second, unless it finished first."
    )
    metadata: dict[str, str] = Field(validation_alias="meta")


class ChoiceOut(BaseModel):
    """One more answer of a request with `n` > 1."""

    text: str
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None


class ResponseOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    response_text: str
    duration_ms: int = Field(description="Wall time of the provider call that answered.")
    provider: str
    upstream_model: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool = Field(
        description="True when the provider reported no usage and the counts are estimates."
    )
    cost_usd: Decimal = Field(description="At the catalogue price in force when it ran.")
    catalogue_version: str | None = Field(
        description="The catalogue version of that price; null for a model it does not list."
    )
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] | None = Field(
        None,
        description="The tool calls the answer made, in OpenAI's shape (`id`, `type`, "
        "`function.name`, `function.arguments`); null when it made none.",
    )
    refusal: str | None = Field(None, description="The model's refusal message, if any.")
    choices: list[ChoiceOut] | None = Field(
        None,
        description="With `n` > 1 (/v1/chat/completions): the answers after the first (which "
        "is `response_text`, `tool_calls`, `refusal` and `finish_reason`), in order; null "
        "for a single answer. The token counts and cost cover them all.",
    )
    output_json: Any = Field(
        None,
        description="A structured-output prompt's answer (`response_format`), parsed; null "
        "for other prompts, and for an answer that was not valid (the prompt then failed "
        "`invalid_structured_output`, with this response kept).",
    )
    cached_input_tokens: int | None = Field(
        None, description="Of input_tokens, those served from the provider's prompt cache."
    )
    reasoning_tokens: int | None = Field(
        None, description="Of output_tokens, those spent reasoning (thinking)."
    )
    first_token_ms: int | None = Field(
        validation_alias="time_to_first_token_ms",
        description="Streamed answers (`/v1/chat/completions` with `stream: true`) only: time "
        "from the start of the provider call that answered to its first text; null otherwise.",
    )
    created_at: datetime


class ErrorOut(BaseModel):
    code: str = Field(examples=["rate_limited"])
    message: str


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    provider: str
    model: str
    started_at: datetime
    ended_at: datetime
    outcome: str = Field(
        description="`success`; `error` (see error_code); `abandoned` (its runner stopped "
        "while waiting for the answer); `cancelled` (the prompt was cancelled during the call); "
        "`lost` (its runner died before recording what the call did: it may have been made "
        "and billed).",
        examples=["success", "error"],
    )
    http_status: int | None
    error_code: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    reasoning_tokens: int | None = None
    usage_estimated: bool
    cost_usd: Decimal | None
    catalogue_version: str | None = Field(description="The price list the cost was computed with.")


class PromptDetail(PromptOut):
    """A prompt with its outcome: the response when completed, the error when failed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_PROMPT_EXAMPLE,
                    "status": "completed",
                    "started_at": "2026-11-25T13:17:14.073419Z",
                    "finished_at": "2026-11-25T13:17:14.913040Z",
                    "upstream_model": "gpt-4o-mini",
                    "parameters": {"max_tokens": 64},
                    "executions": 1,
                    "response": {
                        "response_text": "Rows fall like snow / ...",
                        "duration_ms": 812,
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini-2024-07-18",
                        "input_tokens": 14,
                        "output_tokens": 17,
                        "usage_estimated": False,
                        "cost_usd": "0.0000123",
                        "catalogue_version": "2026-11-25",
                        "finish_reason": "stop",
                        "first_token_ms": None,
                        "created_at": "2026-11-25T13:17:14.915975Z",
                    },
                    "error": None,
                    "attempts": [
                        {
                            "provider": "openai",
                            "model": "gpt-4o-mini",
                            "started_at": "2026-11-25T13:17:14.083653Z",
                            "ended_at": "2026-11-25T13:17:14.906323Z",
                            "outcome": "success",
                            "http_status": None,
                            "error_code": None,
                            "input_tokens": 14,
                            "output_tokens": 17,
                            "cached_input_tokens": 0,
                            "usage_estimated": False,
                            "cost_usd": "0.0000123",
                            "catalogue_version": "2026-11-25",
                        }
                    ],
                }
            ]
        }
    )

    upstream_model: str
    parameters: dict[str, Any]
    executions: int = Field(
        description="How many times a runner claimed it (retries after a lost runner count)."
    )
    response: ResponseOut | None
    error: ErrorOut | None
    attempts: list[AttemptOut] = Field(description="Every provider call made for it, in order.")

    @classmethod
    def from_prompt(cls, prompt: PromptRequest) -> PromptDetail:
        """Build from a prompt loaded with its `response` and `attempt_log`."""
        error = (
            ErrorOut(code=prompt.error_code, message=prompt.error_message or "")
            if prompt.error_code
            else None
        )
        return cls(
            **PromptOut.model_validate(prompt).model_dump(),
            upstream_model=prompt.upstream_model,
            parameters=prompt.parameters,
            executions=prompt.executions,
            response=ResponseOut.model_validate(prompt.response) if prompt.response else None,
            error=error,
            attempts=[AttemptOut.model_validate(a) for a in prompt.attempt_log],
        )


class PromptPage(BaseModel):
    items: list[PromptOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
