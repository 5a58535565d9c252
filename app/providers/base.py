"""The narrow, typed boundary every provider adapter sits behind, and our own error tree.

Adapters translate vendor errors into `ProviderError` subclasses at the boundary, so the rest
of the system decides retry / fallback / fail on our codes, never on a vendor's exception type.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NotRequired, Protocol, TypedDict, runtime_checkable


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImageURL(TypedDict):
    url: str  # https://… or data:image/<type>;base64,…
    detail: NotRequired[str]


class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = TextPart | ImagePart


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


def tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A tool call in OpenAI's shape, whichever vendor made it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def arguments_text(arguments: object) -> str:
    """A vendor's arguments object as OpenAI's `arguments` string (compact JSON)."""
    return json.dumps(arguments or {}, separators=(",", ":"))


def arguments_object(call: ToolCall) -> dict[str, Any] | None:
    """A call's `arguments` as the JSON object Gemini and Anthropic take in its place; None
    when they are not one (the adapter says so, in its vendor's terms)."""
    try:
        arguments: object = json.loads(call["function"]["arguments"])
    except (ValueError, TypeError):
        return None
    return arguments if isinstance(arguments, dict) else None


class Message(TypedDict):
    """One turn, in OpenAI's chat-completions shape (the gateway's own vocabulary; each adapter
    translates it). `content` is a string, or for a user turn a list of text and image parts;
    an assistant turn that called tools has `tool_calls` (its content may then be None); a
    `tool` turn answers the call named by `tool_call_id`."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Part] | None
    tool_calls: NotRequired[list[ToolCall]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})  # shared, read-only


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str  # the upstream model name, as the provider knows it
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None  # total seconds for this call; None: the client's default
    # The other chat-completions fields the request uses, by their OpenAI names and in OpenAI's
    # shape (`tools`, `tool_choice`, `response_format`, `stop` (always a list), `top_p`, …:
    # app/providers/fidelity.py lists them and what each provider makes of them). Only fields
    # the provider can honour arrive here: the intake refuses (or drops) the others.
    options: Mapping[str, Any] = field(default_factory=lambda: NO_OPTIONS)


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams them: the first piece of call `index`
    has its `id` and `name`, later ones only more `arguments` text. `choice` is the answer it
    belongs to (OpenAI's `choices[].index`; more than 0 only for a request with `n` > 1)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    choice: int = 0


@dataclass(frozen=True, slots=True)
class ChoiceText:
    """A piece of streamed text of answer `choice` ≥ 1, for a request with `n` > 1. (The first
    answer's text streams as bare `str` deltas: the plain request allocates nothing more.)"""

    choice: int
    text: str


@dataclass(frozen=True, slots=True)
class Choice:
    """One more answer to the same request (OpenAI's `n` > 1): `Completion.choices` holds the
    answers after the first, the first being the `Completion` itself."""

    text: str
    finish_reason: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    logprobs: Any = None


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    usage_reported: bool  # False: the provider sent no usage and the counts are estimates
    finish_reason: str | None
    upstream_model: str
    cached_input_tokens: int = 0  # of input_tokens, those served from the vendor's prompt cache
    tool_calls: tuple[ToolCall, ...] = ()  # finish_reason is then `tool_calls`
    refusal: str | None = None  # the model's refusal message (OpenAI's `refusal`), if any
    reasoning_tokens: int = 0  # of output_tokens, those spent thinking
    logprobs: Any = None  # OpenAI's `choices[0].logprobs` object, where the provider gives one
    # With `n` > 1: the answers after this first one (OpenAI's choices 1 .. n-1), in order. The
    # token counts above are the whole call's, every answer's output included.
    choices: tuple[Choice, ...] = ()


Delta = str | ChoiceText | ToolCallDelta  # what a stream yields before its `Completion`


class Provider(Protocol):
    name: str
    # Which column of the translation matrix (app/providers/fidelity.py) it follows:
    # "openai" (OpenAI and compatible servers), "gemini", "anthropic" or "local".
    kind: str

    @property
    def max_temperature(self) -> float | None:
        """The highest temperature the vendor accepts; None: it accepts none at all."""

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[Delta | Completion]:
        """The same call, streamed: yields the answer's text as it arrives (non-empty `str`
        deltas) and its tool calls in pieces (`ToolCallDelta`), then exactly one `Completion`
        (the whole text and tool calls, usage, finish reason) last. With `n` > 1 the other
        answers' text comes as `ChoiceText` and their calls' pieces with `choice` set.
        Fails with the same `ProviderError`s as `complete`, before or after some deltas;
        closing the iterator early abandons the upstream call."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str  # the upstream model name, as the provider knows it
    inputs: tuple[str, ...]  # each one non-empty text; one vector comes back for each
    dimensions: int | None = None  # shorter vectors than the model's own, where it can
    user: str | None = None  # the client's end-user id (OpenAI's `user`), where it is sent
    timeout: float | None = None  # total seconds for this call; None: the client's default


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in order, each as little-endian float32 bytes: what OpenAI sends
    base64-encoded (`encoding_format: base64`), so a vector read that way is passed on exactly,
    and one read as JSON numbers takes 4 bytes a dimension rather than a Python float's 24."""

    vectors: tuple[bytes, ...]
    input_tokens: int
    usage_reported: bool  # False: the provider sent no usage and the count is an estimate
    upstream_model: str

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0]) // 4 if self.vectors else 0


@runtime_checkable
class Embedder(Protocol):
    """A provider that can also embed text (`POST /v1/embeddings`). Those that cannot
    (Anthropic has no embeddings API) simply lack `embed`: `isinstance(provider, Embedder)`
    tells them apart."""

    name: str
    # Whether a request's `dimensions` (shorter vectors than the model's own) can be honoured.
    embeds_dimensions: bool

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """The request's vectors, in its inputs' order; fails with the same `ProviderError`s
        as `Provider.complete`."""
        ...


def pack_floats(values: Sequence[float]) -> bytes:
    """A vector as little-endian float32 bytes (see `Embeddings`)."""
    packed = array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack_floats(raw: bytes) -> list[float]:
    """The numbers of a vector packed by `pack_floats` (or sent base64 by OpenAI)."""
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class ProviderError(Exception):
    """A provider call that did not produce an answer. `code` is stable and shown to users."""

    code = "provider_error"
    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message  # for users: never holds a key or a stack trace
        self.status = status  # the upstream HTTP status, when there was one
        self.retry_after = retry_after  # seconds, from the vendor's Retry-After header


class RateLimited(ProviderError):
    code = "rate_limited"
    retryable = True


class Unavailable(ProviderError):
    """5xx, and Anthropic's 529 "overloaded"."""

    code = "provider_unavailable"
    retryable = True


class ProviderTimeout(ProviderError):
    code = "timeout"
    retryable = True


class ConnectionFailed(ProviderError):
    code = "connection_error"
    retryable = True


class AuthenticationFailed(ProviderError):
    code = "authentication_failed"


class BadRequest(ProviderError):
    code = "bad_request"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class ContentFiltered(ProviderError):
    code = "content_filtered"


class ProviderNotConfigured(ProviderError):
    """The prompt names a provider this server no longer has (its configuration changed)."""

    code = "provider_not_configured"


class AdapterFailed(ProviderError):
    """An adapter raised something other than a ProviderError: a bug, logged in full."""

    code = "internal_error"


class MalformedResponse(ProviderError):
    code = "malformed_response"
    retryable = True


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is rare from these vendors)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for providers that report no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def message_text(message: Message) -> str:
    """The text of a turn: its content, or its text parts joined; a tool call's arguments."""
    content = message["content"]
    if isinstance(content, str):
        text = content
    elif content is None:
        text = ""
    else:
        text = "\n".join(p["text"] for p in content if p["type"] == "text")
    calls = message.get("tool_calls")
    if calls:
        text = " ".join(
            [text, *(c["function"]["name"] + c["function"]["arguments"] for c in calls)]
        )
    return text


def estimate_input_tokens(inputs: Sequence[str]) -> int:
    """`estimate_tokens` of every input of an embedding request, summed."""
    return sum(estimate_tokens(text) for text in inputs)


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """`estimate_tokens` of everything the request sends (its messages, one separator apart)."""
    return estimate_tokens(" ".join(message_text(m) for m in request.messages))
