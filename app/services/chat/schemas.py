"""OpenAI's chat-completions and models shapes, as far as this gateway honours them.

The request model tolerates fields it does not declare (`extra="allow"`): the official SDKs
add new optional fields release after release, and one that only tunes delivery or caching
(`store`, `service_tier`, `prompt_cache_key`, …) must not break a client. Fields that would
change the answer and that no provider here can honour are refused by name instead
(`UNSUPPORTED_FIELDS`, checked in the service), so nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from app.kit.fields import (
    MetadataKey,
    MetadataValue,
    Name,
    StrictBool,
    StrictFloat,
    StrictInt,
    Text,
    VariableName,
    VariableValue,
)
from app.kit.text import TypeName, check_json_text


def _is(neutral: Any) -> Callable[[Any], bool]:
    return lambda value: value == neutral


def _empty(value: Any) -> bool:
    return not value


# Fields that change the output, and the one value of each that is harmless (the default).
UNSUPPORTED_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_empty, "tools and function calling"),
    "tool_choice": (lambda v: v in ("none", "auto"), "tools and function calling"),
    "functions": (_empty, "function calling"),
    "function_call": (lambda v: v in ("none", "auto"), "function calling"),
    "response_format": (_is({"type": "text"}), "response_format (JSON mode, structured output)"),
    "logprobs": (_is(False), "logprobs"),
    "top_logprobs": (_is(0), "logprobs"),
    "logit_bias": (_empty, "logit_bias"),
    "top_p": (_is(1), "top_p (use temperature)"),
    "frequency_penalty": (_is(0), "frequency_penalty"),
    "presence_penalty": (_is(0), "presence_penalty"),
    "stop": (_empty, "stop sequences"),
    "seed": (lambda _: False, "seed"),
    "audio": (lambda _: False, "audio output"),
    "modalities": (_is(["text"]), "modalities other than text"),
    "prediction": (lambda _: False, "predicted outputs"),
    "reasoning_effort": (lambda _: False, "reasoning_effort"),
    "verbosity": (lambda _: False, "verbosity"),
    "web_search_options": (lambda _: False, "web search"),
}


class _Tolerant(BaseModel):
    """A part of the request that tolerates fields it does not declare (see above). They are
    not used, but they are text the API accepted, so the same rule holds for them (`Text`):
    `ChatCompletionCreate` checks them all at once (one check per request, rather than a
    validator run for every message and part)."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Tolerant):
    """A content part. Only `text` parts are accepted; other types are refused by name."""

    type: Text = Field(examples=["text"])
    text: Text | None = None


def _content_kind(value: Any) -> str:
    return "parts" if isinstance(value, list) else "text"


# A string or a list of parts, told apart by the value itself, so that a bad one is reported
# once, against its own form (not once per form it might have had).
Content = Annotated[
    Annotated[Text, Tag("text")] | Annotated[list[TextPart], Tag("parts")],
    Discriminator(_content_kind),
]


class ChatMessage(_Tolerant):
    """One turn. `developer` is taken as `system`; `tool`/`function` turns are refused."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = Field(
        description='A string, or a list of `{"type": "text", "text": ...}` parts.'
    )
    name: Text | None = Field(None, description="Accepted and ignored.")


class StreamOptions(_Tolerant):
    include_usage: StrictBool | None = Field(
        None, description="Send a last chunk with `usage` and empty `choices` before `[DONE]`."
    )


class ChatCompletionCreate(_Tolerant):
    """OpenAI's `POST /v1/chat/completions` body, the subset this gateway honours."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Write a haiku about databases."},
                    ],
                    "max_tokens": 64,
                }
            ]
        },
    )

    model: Name = Field(
        description="A catalogue name (see `GET /v1/models`) or `provider/model`.",
        examples=["gpt-4o-mini"],
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    max_tokens: StrictInt | None = Field(None, ge=1, le=65_536)
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=65_536, description="Same as `max_tokens`; wins when both are given."
    )
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(None, description="Only 1 is supported.")
    user: Annotated[Text, Field(max_length=256)] | None = Field(
        None, description="Your end user's id; stored with the prompt (`parameters.user`)."
    )
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=16, description="Stored as the prompt's metadata."
    )
    prompt_type: TypeName | None = Field(
        None,
        description="Prompt Manager extension (`extra_body`): the prompt's type in "
        "`/ai/prompts` (a name `/ai/prompt-types` could define); default `chat`. A defined "
        "type's policy applies (ceilings, fallbacks, system instruction; its template wraps "
        "the last user message).",
    )
    variables: dict[VariableName, VariableValue] | None = Field(
        None,
        max_length=50,
        description="Prompt Manager extension (`extra_body`): values for the `{name}` fields "
        "of the prompt type's template, as in `POST /ai/prompts/`.",
    )

    @model_validator(mode="after")
    def _extra_text(self) -> ChatCompletionCreate:
        """The undeclared fields' text, wherever they are (see `_Tolerant`)."""
        if self.__pydantic_extra__:
            check_json_text(self.__pydantic_extra__)
        if self.stream_options is not None and self.stream_options.__pydantic_extra__:
            check_json_text(self.stream_options.__pydantic_extra__)
        for message in self.messages:
            if message.__pydantic_extra__:
                check_json_text(message.__pydantic_extra__)
            if message.content.__class__ is list:
                for part in message.content:
                    if part.__pydantic_extra__:
                        check_json_text(part.__pydantic_extra__)
        return self


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str = Field(examples=["stop"])


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's `chat.completion`. `id` is `chatcmpl-<prompt id hex>`."""

    id: str = Field(examples=["chatcmpl-2c29228265424384945018a794829bad"])
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The model as requested.")
    choices: list[Choice]
    usage: Usage


class Model(BaseModel):
    id: str = Field(examples=["gpt-4o-mini"])
    object: Literal["model"] = "model"
    created: int = Field(description="The catalogue version's date, as a Unix time.")
    owned_by: str = Field(description="The provider that serves it.", examples=["openai"])


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = None
    code: str | None = Field(None, examples=["model_not_found"])


class ErrorBody(BaseModel):
    """OpenAI's error shape, which the official SDKs turn into their exception classes."""

    error: ErrorDetail
