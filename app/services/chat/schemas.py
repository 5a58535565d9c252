"""OpenAI's chat-completions and models shapes.

The request model takes the whole Chat Completions request: tools (and the legacy
`functions`), structured output, the sampling fields, image parts, tool turns. What each
provider makes of each field is app/providers/fidelity.py's matrix; the intake refuses, by
name, what the chosen provider cannot honour.

The request tolerates fields it does not declare (`extra="allow"`): the official SDKs add new
optional fields release after release, and one that only tunes delivery or caching (`store`,
`service_tier`, `prompt_cache_key`, …) must not break a client. Fields that would change the
answer and that this gateway does not carry (audio output, web search, predicted outputs) are
refused by name instead (`UNSUPPORTED_FIELDS`, checked in the service), so nothing is
silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

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
from app.services.conversation import (
    ChatMessage,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tolerant,
    Tool,
    check_extras,
    check_free_json,
)


def _is(neutral: Any) -> Callable[[Any], bool]:
    return lambda value: value == neutral


# Fields that change the output and that no provider here carries, with the one value of each
# that is harmless (the default).
UNSUPPORTED_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio": (lambda _: False, "audio output"),
    "modalities": (_is(["text"]), "modalities other than text"),
    "prediction": (lambda _: False, "predicted outputs"),
    "verbosity": (lambda _: False, "verbosity"),
    "web_search_options": (lambda _: False, "web search"),
}


class StreamOptions(Tolerant):
    include_usage: StrictBool | None = Field(
        None, description="Send a last chunk with `usage` and empty `choices` before `[DONE]`."
    )


class ChatCompletionCreate(Tolerant):
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
    n: StrictInt | None = Field(
        None,
        ge=1,
        le=128,
        description="How many answers to give (choices 0 .. n-1); the usage counts them all. "
        "Providers that answer once per request refuse n > 1.",
    )
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[FunctionDefinition] | None = Field(
        None, max_length=128, description="Legacy: taken as `tools`."
    )
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(
        None, description="Legacy: taken as `tool_choice`."
    )
    response_format: ResponseFormat | None = None
    stop: Text | list[Text] | None = Field(None, description="Up to 4 sequences.")
    top_p: StrictFloat | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], StrictFloat] | None = Field(
        None, max_length=300
    )
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    drop_params: StrictBool | None = Field(
        None,
        description="Prompt Manager extension (`extra_body`): leave out, rather than refuse, "
        "the fields the chosen provider cannot honour; each one left out is recorded on the "
        "prompt (`parameters.dropped_params`) and named in the `X-Dropped-Params` header.",
    )
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
        """The undeclared fields' text, wherever they are (see `Tolerant`)."""
        if self.__pydantic_extra__:
            check_json_text(self.__pydantic_extra__)
        if self.stream_options is not None and self.stream_options.__pydantic_extra__:
            check_json_text(self.stream_options.__pydantic_extra__)
        check_extras(self.messages)
        check_free_json(self.tools or self.functions, self.response_format)
        return self


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = Field(None, description="Absent when there are none.")
    function_call: FunctionCallOut | None = Field(
        None, description="Legacy: the tool call, for a request that used `functions`."
    )


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str = Field(examples=["stop", "tool_calls"])
    logprobs: dict[str, Any] | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(
        description="Of prompt_tokens, those served from the provider's prompt cache."
    )
    completion_tokens_details: CompletionTokensDetails = Field(
        description="Of completion_tokens, those spent reasoning."
    )


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
    capabilities: list[str] | None = Field(
        None,
        description="Prompt Manager extension: what it can do beyond text (tools, vision, "
        "structured_output, reasoning, embeddings); null when the catalogue does not say.",
    )
    context_window: int | None = Field(None, description="Prompt Manager extension.")
    max_output_tokens: int | None = Field(None, description="Prompt Manager extension.")


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
