"""OpenAI's embeddings shapes: `POST /v1/embeddings`'s body and its answer.

Like the chat request, the body tolerates fields it does not declare (a newer SDK's optional
ones), each checked as text. `input` is a string or a list of strings, as OpenAI takes them
(up to 2,048, none empty); OpenAI's other form, token ids (a list of integers, or a list of
such lists), is read so that it can be refused by name (400 `unsupported_parameter`): token
ids are one tokenizer's, and no other provider here could read them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from app.kit.fields import StrictInt, Text
from app.kit.text import Name, check_json_text, check_text

MAX_INPUTS = 2048


Input = str | list[str] | list[int] | list[list[int]]


def _input(value: Any) -> Input:
    """A string, a list of strings, or token ids; nothing empty, at most MAX_INPUTS."""
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("string_too_short", "input must not be an empty string")
        return check_text(value)
    if not isinstance(value, list):
        raise PydanticCustomError("input_type", "input must be a string or a list of strings")
    if not value:
        raise PydanticCustomError("too_short", "input must hold at least one string")
    if len(value) > MAX_INPUTS:
        raise PydanticCustomError(
            "too_long",
            "input holds {count} strings; at most {limit} are allowed",
            {"count": len(value), "limit": MAX_INPUTS},
        )
    if all(isinstance(item, str) for item in value):
        for index, item in enumerate(value):
            if not item:
                raise PydanticCustomError(
                    "string_too_short",
                    "input[{index}] must not be an empty string",
                    {"index": index},
                )
            check_text(item)
        return value
    if all(_token_ids(item) for item in value) or _token_ids(value):
        return value  # (refused by the service, by name)
    raise PydanticCustomError("input_type", "input must be a string or a list of strings")


def token_ids(value: Input) -> bool:
    """Whether a valid `input` is token ids (an integer list, or a list of them)."""
    return not isinstance(value, str) and not isinstance(value[0], str)


def _token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    )


_TEXT = {"type": "string", "minLength": 1}
_TOKENS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
EmbeddingInput = Annotated[
    Input,
    PlainValidator(_input),
    WithJsonSchema(
        {
            "anyOf": [
                _TEXT,
                {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": MAX_INPUTS},
                _TOKENS,
                {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": MAX_INPUTS},
            ],
            "description": "The text to embed: a string, or a list of up to 2,048 strings (one "
            "vector each, in order); none may be empty. Token ids (integers) are refused with "
            "a 400 `unsupported_parameter`: send the text.",
        }
    ),
]


class EmbeddingCreate(BaseModel):
    """OpenAI's `POST /v1/embeddings` body."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "text-embedding-3-small", "input": ["first text", "second text"]}
            ]
        },
    )

    model: Name = Field(
        description="An embedding model of the catalogue (`GET /v1/models`: capability "
        "`embeddings`) or `provider/model`.",
        examples=["text-embedding-3-small"],
    )
    input: EmbeddingInput
    dimensions: StrictInt | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Shorter vectors than the model's own, where the model can make them "
        "(OpenAI's text-embedding-3 models, Gemini; not the local model: a 400 "
        "`unsupported_parameter`).",
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None,
        description="`float` (the default): each vector as a list of numbers; `base64`: its "
        "little-endian float32 bytes, base64-encoded (what the official SDKs ask for, and "
        "decode themselves, when you give no format).",
    )
    user: Annotated[Text, Field(max_length=256)] | None = Field(
        None, description="Your end user's id; stored with the prompt (`parameters.user`)."
    )

    @model_validator(mode="after")
    def _extra_text(self) -> EmbeddingCreate:
        """The undeclared fields' text (see the module's docstring)."""
        if self.__pydantic_extra__:
            check_json_text(self.__pydantic_extra__)
        return self


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="The input's position in `input`.")
    embedding: list[float] | str = Field(
        description="The vector: numbers, or with `encoding_format: base64` its little-endian "
        "float32 bytes in base64."
    )


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    """OpenAI's embeddings answer: one `embedding` per input, in order."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="The model as requested.")
    usage: EmbeddingUsage
