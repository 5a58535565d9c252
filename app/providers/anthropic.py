"""Anthropic's Messages API through the official `anthropic` SDK (2.x).

SDK 2.x sends API version 2026-10-21 on every request, and that version removed the sampling
parameters: `temperature`, `top_p` and `top_k` are answered 400 even at their defaults, and the
SDK no longer accepts them. So `max_temperature` is None: a prompt for Anthropic that sets a
temperature is refused at submission with 422 `unsupported_parameter`, never silently dropped.

Streams are `messages.create(stream=True)`, read an event at a time (`anext`) and closed on the
way out, which closes the HTTP response. Unlike openai's, this SDK does not wrap what the
transport raises while a stream is read: those arrive as bare `httpx2` errors and are mapped
here. An `error` event inside a stream that began 200 OK (Anthropic sends `overloaded_error` so
under load) is mapped by its error type, as the status that type stands for would be.

The rest of a chat-completions request is translated as the "anthropic" column of the matrix
(app/providers/fidelity.py) says, and nothing else is: `tools` (`parameters` become
`input_schema`), `tool_choice` (auto, any, tool, none), `parallel_tool_calls` false
(`disable_parallel_tool_use` on the tool choice), `response_format` (`output_config.format`, a
JSON schema; `json_object` asks for any object; for a model without it, a forced tool: see
below), `stop` (`stop_sequences`), `reasoning_effort`
(`thinking` with a token budget) and `user` (`metadata.user_id`). In the conversation, image
parts become image blocks, an assistant's tool calls `tool_use` blocks and tool turns
`tool_result` blocks. The intake refuses what the matrix refuses, so another option reaching
the adapter is a bug upstream: it is a `BadRequest` naming it, never silently dropped. In the
reply, `tool_use` blocks come back as OpenAI tool calls (streamed as `ToolCallDelta`s), and
thinking blocks are the model's working, not its answer: they are left out of the text.

Structured output on a model without the native kind (the upstream models in
`structured_by_tool`, from the catalogue: app/providers/forced_tool.py says why and what cannot
go with it) is one tool more, `json_output`, whose input schema is the answer's, and a
`tool_choice` that forces it. Its `tool_use` block is the answer: read back as the text (compact
JSON; streamed, its `input_json_delta`s as text deltas), with finish reason `stop`, never as a
tool call.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeGuard

import aiohttp
import anthropic
import httpx2
from anthropic import AsyncAnthropic, AsyncAPIResponse, Omit, omit
from anthropic.types import (
    ImageBlockParam,
    MessageDeltaUsage,
    MessageParam,
    MetadataParam,
    OutputConfigParam,
    RawMessageStreamEvent,
    RefusalStopDetails,
    TextBlock,
    TextBlockParam,
    ThinkingConfigParam,
    ToolChoiceAnyParam,
    ToolChoiceAutoParam,
    ToolChoiceParam,
    ToolChoiceToolParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    Usage,
)

from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Completion,
    CompletionRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    Message,
    Part,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ToolCall,
    ToolCallDelta,
    Unavailable,
    arguments_object,
    arguments_text,
    estimate_prompt_tokens,
    estimate_tokens,
    retry_after_seconds,
    tool_call,
)
from app.providers.forced_tool import FORCED_TOOL, FORCED_TOOL_DESCRIPTION, conflict
from app.providers.transport import is_connection_failure

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_STREAM_SECONDS = 600.0  # the SDK's own default timeout, for a client built without one
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The answer was cut short because the context window filled up: a truncation, as above.
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}
# The options the adapter translates: the "anthropic" column's `translated` cells.
_OPTIONS = frozenset(
    {"tools", "tool_choice", "parallel_tool_calls", "response_format", "stop"}
    | {"reasoning_effort", "user"}
)
# OpenAI's reasoning efforts as thinking budgets (1024 is the least Anthropic accepts).
_THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_MediaType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
_IMAGE_TYPES: dict[str, _MediaType] = {
    "image/jpeg": "image/jpeg",
    "image/png": "image/png",
    "image/gif": "image/gif",
    "image/webp": "image/webp",
}
# The status each error type stands for, for an `error` event inside a 200 OK stream.
_ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> AsyncAnthropic:
    """One client per process. The SDK's own retries are off: the gateway owns that loop, so
    every upstream call is counted and billed once. The aiohttp transport is vendored in the
    SDK (it needs only `aiohttp`) and, unlike openai's, reports a refused connection as a
    connection error rather than a timeout. The base URL is always given, so the SDK never
    falls back to `ANTHROPIC_BASE_URL` from the environment behind the settings' back (the
    explicit key likewise stops it reading `ANTHROPIC_API_KEY` / `ANTHROPIC_AUTH_TOKEN`)."""
    return AsyncAnthropic(
        api_key=api_key,
        base_url=base_url or DEFAULT_BASE_URL,
        max_retries=0,
        timeout=anthropic.Timeout(timeout, connect=connect_timeout),
        http_client=anthropic.DefaultAioHttpClient(),
    )


class _Params(TypedDict):
    """The arguments of `messages.create`, the same streamed or not."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | Omit
    tools: list[ToolParam] | Omit
    tool_choice: ToolChoiceParam | Omit
    output_config: OutputConfigParam | Omit
    stop_sequences: list[str] | Omit
    thinking: ThinkingConfigParam | Omit
    metadata: MetadataParam | Omit


def to_anthropic_messages(messages: list[Message]) -> tuple[str | None, list[MessageParam]]:
    """System messages become the top-level `system` prompt (joined); the rest are turns, in
    Anthropic's blocks where OpenAI has parts: images, an assistant's tool calls (`tool_use`)
    and tool turns (`tool_result`, in a user turn). Consecutive tool turns share one user turn,
    as Anthropic wants every result of an assistant's calls together in the turn after it."""
    system: list[str] = []
    turns: list[MessageParam] = []
    results: list[ToolResultBlockParam] | None = None  # those of the last turn, if it has some
    for message in messages:
        role = message["role"]
        if role == "system":
            system.append(_text(message["content"]))
        elif role == "tool":
            if results is None:
                results = []
                turns.append({"role": "user", "content": results})
            results.append(_tool_result(message))
        elif role == "user":
            results = None
            turns.append({"role": "user", "content": _user_content(message["content"])})
        else:
            results = None
            turns.append({"role": "assistant", "content": _assistant_content(message)})
    return ("\n\n".join(system) if system else None), turns


def _text(content: str | list[Part] | None) -> str:
    """The text of a turn's content (its text parts, joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


def _user_content(content: str | list[Part] | None) -> str | list[TextBlockParam | ImageBlockParam]:
    if content is None or isinstance(content, str):
        return content or ""
    blocks: list[TextBlockParam | ImageBlockParam] = []
    for part in content:
        if part["type"] == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
            blocks.append(_image(part["image_url"]["url"]))
        else:
            raise BadRequest(f"a message part of type {part['type']!r} cannot be sent")
    return blocks


def _image(url: str) -> ImageBlockParam:
    """A data URL is sent as its base64 data, an https URL as it is: Anthropic fetches it."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        header = header.lower()
        media_type = _IMAGE_TYPES.get(header.removeprefix("data:").removesuffix(";base64"))
        if not header.endswith(";base64") or media_type is None:
            raise BadRequest(
                "an image's data URL must be base64 JPEG, PNG, GIF or WebP "
                f"(data:image/png;base64,…), not {header[:40]}"
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest("an image must be an https URL or a base64 data URL")


def _assistant_content(message: Message) -> str | list[TextBlockParam | ToolUseBlockParam]:
    text = _text(message["content"])
    calls = message.get("tool_calls")
    if not calls:
        return text
    blocks: list[TextBlockParam | ToolUseBlockParam] = []
    if text:  # Anthropic refuses an empty text block
        blocks.append({"type": "text", "text": text})
    for call in calls:
        arguments = arguments_object(call)
        if arguments is None:
            raise BadRequest(
                f"the arguments of tool call {call['id']!r} are not a JSON object, "
                "and Anthropic takes a tool call's input only as one"
            )
        name = call["function"]["name"]
        blocks.append({"type": "tool_use", "id": call["id"], "name": name, "input": arguments})
    return blocks


def _tool_result(message: Message) -> ToolResultBlockParam:
    call_id = message.get("tool_call_id")
    if not call_id:
        raise BadRequest("a tool turn must name the call it answers (tool_call_id)")
    return {"type": "tool_result", "tool_use_id": call_id, "content": _text(message["content"])}


def _tools(tools: Any, provider: str) -> list[ToolParam]:
    """OpenAI's function tools; a tool without parameters takes an empty object, as OpenAI's
    do (Anthropic requires a schema)."""
    translated: list[ToolParam] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or tool.get("type") != "function":
            raise BadRequest(f"{provider} takes only function tools")
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        param: ToolParam = {"name": function["name"], "input_schema": schema}
        if function.get("description") is not None:
            param["description"] = function["description"]
        if function.get("strict") is not None:
            param["strict"] = bool(function["strict"])
        translated.append(param)
    return translated


def _tool_choice(choice: Any, *, one_call: bool, provider: str) -> ToolChoiceParam | Omit:
    """`one_call`: `parallel_tool_calls` false, which Anthropic sets on the tool choice (on
    `auto`, its default, when the request named none; `none` calls no tool at all)."""
    if choice is None or choice == "auto":
        if not one_call:
            return omit if choice is None else {"type": "auto"}
        auto: ToolChoiceAutoParam = {"type": "auto", "disable_parallel_tool_use": True}
        return auto
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        required: ToolChoiceAnyParam = {"type": "any"}
        if one_call:
            required["disable_parallel_tool_use"] = True
        return required
    function = choice.get("function") if isinstance(choice, Mapping) else None
    if (
        not isinstance(function, Mapping)
        or choice.get("type") != "function"
        or not isinstance(function.get("name"), str)
    ):
        raise BadRequest(f"{provider} does not understand tool_choice {choice!r}")
    named: ToolChoiceToolParam = {"type": "tool", "name": function["name"]}
    if one_call:
        named["disable_parallel_tool_use"] = True
    return named


def _json_schema(response_format: Any, provider: str) -> dict[str, Any] | None:
    """The JSON schema a response format asks for (None: `text`, the default, asks for none).
    Anthropic's structured output, native or by forced tool, takes a JSON schema: `json_object`
    (any JSON object) is the schema of any object."""
    if not isinstance(response_format, Mapping):
        raise BadRequest(f"{provider} does not understand response_format {response_format!r}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    spec = response_format.get("json_schema")
    if kind == "json_schema" and isinstance(spec, Mapping):
        return dict(spec.get("schema") or {"type": "object"})
    if kind == "json_object":
        return {"type": "object"}
    raise BadRequest(f"{provider} does not understand response_format {response_format!r}")


def _forced_tool(schema: dict[str, Any], provider: str) -> ToolParam:
    """The tool whose input is the answer. Anthropic takes only an object as a tool's input:
    a schema of anything else cannot be asked for so. (Not `strict`: strict tool use is part
    of the native structured output such a model lacks; the gateway checks the answer.)"""
    if schema.get("type") != "object":
        raise BadRequest(
            f"{provider} gives structured output for this model through a tool, whose input "
            "must be a JSON object: the response_format schema's type must be object"
        )
    if schema == {"type": "object"}:  # json_object: any object, with any properties
        schema = {"type": "object", "additionalProperties": True}
    return {"name": FORCED_TOOL, "description": FORCED_TOOL_DESCRIPTION, "input_schema": schema}


def _thinking(
    effort: Any, max_tokens: int, provider: str
) -> tuple[ThinkingConfigParam | Omit, int]:
    """The thinking a reasoning effort asks for (`none`: none at all, so none is asked for),
    and the call's max_tokens. Anthropic counts thinking within max_tokens and refuses a
    max_tokens not above the budget, so such a max_tokens (the request's or the default)
    becomes the budget plus itself: the model may think its whole budget and still have what
    the request allowed for the answer, rather than the call being refused."""
    if effort is None or effort == "none":
        return omit, max_tokens
    budget = _THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise BadRequest(f"{provider} does not understand reasoning_effort {effort!r}")
    if max_tokens <= budget:
        max_tokens += budget
    return {"type": "enabled", "budget_tokens": budget}, max_tokens


class AnthropicProvider:
    max_temperature = None  # not accepted at all by API version 2026-10-21
    kind = "anthropic"

    def __init__(
        self,
        client: AsyncAnthropic,
        *,
        default_max_tokens: int,
        name: str = "anthropic",
        structured_by_tool: Iterable[str] = (),
    ) -> None:
        """`structured_by_tool`: the upstream models without native structured output, whose
        response_format is served by a forced tool (the catalogue's, in production)."""
        self.name = name
        self._client = client
        self._default_max_tokens = default_max_tokens  # the Messages API requires max_tokens
        self._structured_by_tool = frozenset(structured_by_tool)

    async def complete(self, request: CompletionRequest) -> Completion:
        params, forced = self._prepared(request)
        with self._sdk_errors():
            # The SDK's timeouts are per phase (connect, each read); this makes the request's
            # timeout a deadline for the whole call, as CompletionRequest promises.
            async with asyncio.timeout(request.timeout):
                raw = await self._client.messages.with_raw_response.create(
                    **params, timeout=self._timeout(request)
                )
        reply = await _parse(raw)
        if reply is None:
            raise MalformedResponse(
                f"{self.name} sent a response that could not be read", status=raw.status_code
            )
        # Thinking blocks are left out: the model's working, not its answer. The forced
        # tool's call (structured output by tool) is the answer's text, not a tool call.
        text = "".join(
            block.text if isinstance(block, TextBlock) else arguments_text(block.input)
            for block in reply.content
            if isinstance(block, TextBlock) or (forced and _answers(block))
        )
        calls = tuple(
            tool_call(block.id, block.name, arguments_text(block.input))
            for block in reply.content
            if isinstance(block, ToolUseBlock) and not (forced and _answers(block))
        )
        stop_reason = _forced_stop(reply.stop_reason) if forced else reply.stop_reason
        return _completion(
            request,
            _Answer(text, reply.usage, stop_reason, reply.stop_details, reply.model, calls),
            provider=self.name,
            status=raw.status_code,
        )

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[str | ToolCallDelta | Completion, None]:
        params, forced = self._prepared(request)
        deadline = asyncio.get_running_loop().time() + _seconds(request, self._client.timeout)
        with self._sdk_errors():
            async with asyncio.timeout_at(deadline):
                events = await self._client.messages.create(
                    **params, stream=True, timeout=self._timeout(request)
                )
        answer = _StreamedAnswer(forced=forced)
        status = events.response.status_code
        try:
            while (event := await self._next(events, deadline)) is not None:
                if (piece := answer.add(event)) is not None:
                    yield piece
        finally:
            await events.close()
        if answer.stop_reason is None:  # cut off, though the connection ended cleanly
            raise MalformedResponse(
                f"{self.name} ended its stream before the answer did", status=status
            )
        yield _completion(request, answer.answer(), provider=self.name, status=status)

    async def aclose(self) -> None:
        await self._client.close()

    def _prepared(self, request: CompletionRequest) -> tuple[_Params, bool]:
        """The call's arguments, the same streamed or not, and whether its structured output
        is asked for by forced tool. What the request asks for and cannot be translated is
        refused here, before any call: never silently dropped."""
        if request.temperature is not None:  # refused at submission; never dropped here
            raise BadRequest(f"{self.name} does not accept a temperature")
        options = request.options
        if unknown := [name for name in options if name not in _OPTIONS]:
            raise BadRequest(f"{self.name} does not accept {', '.join(unknown)}")
        system, turns = to_anthropic_messages(request.messages)
        max_tokens = request.max_tokens
        thinking, max_tokens = _thinking(
            options.get("reasoning_effort"),
            max_tokens if max_tokens is not None else self._default_max_tokens,
            self.name,
        )
        tools = options.get("tools")
        # Only `false` asks for something: true is the default.
        one_call = options.get("parallel_tool_calls") is False
        response_format = options.get("response_format")
        schema = _json_schema(response_format, self.name) if response_format is not None else None
        stop = options.get("stop")
        user = options.get("user")
        params = _Params(
            model=request.model,
            max_tokens=max_tokens,
            messages=turns,
            system=system if system is not None else omit,
            tools=_tools(tools, self.name) if tools else omit,
            tool_choice=_tool_choice(
                options.get("tool_choice"), one_call=one_call, provider=self.name
            ),
            output_config=(
                {"format": {"type": "json_schema", "schema": schema}}
                if schema is not None
                else omit
            ),
            stop_sequences=([stop] if isinstance(stop, str) else list(stop)) if stop else omit,
            thinking=thinking,
            metadata={"user_id": str(user)} if user is not None else omit,
        )
        if schema is None or request.model not in self._structured_by_tool:
            return params, False
        # No native structured output: a forced tool (the intake refuses what cannot go with
        # it, before anything is recorded; this is the same check, for any other caller).
        if (problem := conflict(options)) is not None:
            raise BadRequest(f"{self.name} ({request.model}): {problem}")
        own = params["tools"]
        params["tools"] = [*(own if isinstance(own, list) else ()), _forced_tool(schema, self.name)]
        # One call, so that one tool_use block is the whole answer.
        params["tool_choice"] = {
            "type": "tool",
            "name": FORCED_TOOL,
            "disable_parallel_tool_use": True,
        }
        params["output_config"] = omit
        return params, True

    def _timeout(self, request: CompletionRequest) -> float | anthropic.Timeout | None:
        # Always given: with no timeout and a client left on the SDK's default one, the SDK
        # refuses non-streamed calls whose max_tokens it guesses could take over 10 minutes.
        return request.timeout if request.timeout is not None else self._client.timeout

    async def _next(
        self, events: anthropic.AsyncStream[RawMessageStreamEvent], deadline: float
    ) -> RawMessageStreamEvent | None:
        with self._sdk_errors(status=events.response.status_code):
            async with asyncio.timeout_at(deadline):
                return await anext(events, None)

    @contextlib.contextmanager
    def _sdk_errors(self, *, status: int | None = None) -> Iterator[None]:
        """What the SDK, its transport or our deadline raised, as our errors. `status`: that
        of a stream being read, whose transport errors the SDK passes on as they are."""
        try:
            yield
        except TimeoutError:  # httpx2.TimeoutException is not one
            raise ProviderTimeout(f"{self.name} did not answer in time") from None
        except anthropic.APIError as exc:
            key = self._client.api_key
            raise map_anthropic_error(exc, provider=self.name, api_key=key) from None
        except httpx2.TimeoutException:
            raise ProviderTimeout(f"{self.name} did not answer in time") from None
        except httpx2.TransportError:
            raise ConnectionFailed(f"the connection to {self.name} failed or was dropped") from None
        except ValueError:  # an event whose data is not JSON
            raise MalformedResponse(
                f"{self.name} sent a response that could not be read", status=status
            ) from None


@dataclass(frozen=True, slots=True)
class _Answer:
    """What `_completion` reads of a reply, whole or streamed."""

    text: str
    usage: Usage | None  # None when the vendor sent none
    stop_reason: str | None
    stop_details: RefusalStopDetails | None
    model: str | None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(slots=True)
class _StreamedCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class _StreamedAnswer:
    """What the events of a stream add up to: the text of its `text_delta`s, the tool calls
    of its `tool_use` blocks (their arguments, the `input_json_delta`s), the usage of
    `message_start` brought up to date by `message_delta` (whose counts are running totals),
    and the stop reason and details of `message_delta`. Thinking (`thinking_delta`,
    `signature_delta`) is the model's working, not its answer: it is passed over. With
    `forced` (structured output by forced tool), that tool's block is text: its input's
    pieces are text deltas (an empty input, `{}` at the block's end)."""

    def __init__(self, *, forced: bool = False) -> None:
        self._forced = forced
        self._pieces: list[str] = []
        self._calls: list[_StreamedCall] = []
        self._call_of_block: dict[int, int] = {}  # content block index → tool call index
        self._answer_blocks: dict[int, bool] = {}  # the forced tool's blocks → any input yet
        self._usage: Usage | None = None
        self._model: str | None = None
        self.stop_reason: str | None = None
        self._stop_details: RefusalStopDetails | None = None

    def add(self, event: RawMessageStreamEvent) -> str | ToolCallDelta | None:
        """Returns what the event adds to the answer: text, a piece of a tool call, or None."""
        if event.type == "message_start":
            self._model = event.message.model
            self._usage = getattr(event.message, "usage", None)  # the SDK parses leniently
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            block = event.content_block
            if self._forced and block.name == FORCED_TOOL:
                self._answer_blocks[event.index] = False
                return None
            index = self._call_of_block[event.index] = len(self._calls)
            self._calls.append(_StreamedCall(block.id, block.name))
            return ToolCallDelta(index=index, id=block.id, name=block.name, arguments="")
        elif event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                self._pieces.append(delta.text)
                return delta.text
            if event.index in self._answer_blocks:
                if delta.type == "input_json_delta" and delta.partial_json:
                    self._answer_blocks[event.index] = True
                    self._pieces.append(delta.partial_json)
                    return delta.partial_json
                return None
            # Only those of the blocks started as tool calls (not a server tool's, say).
            call = self._call_of_block.get(event.index)
            if delta.type == "input_json_delta" and delta.partial_json and call is not None:
                self._calls[call].arguments.append(delta.partial_json)
                return ToolCallDelta(index=call, arguments=delta.partial_json)
        elif event.type == "content_block_stop" and self._answer_blocks.get(event.index) is False:
            self._answer_blocks[event.index] = True
            self._pieces.append("{}")  # as the whole call reads an empty input
            return "{}"
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason
            self._stop_details = event.delta.stop_details
            self._usage = _updated(self._usage, getattr(event, "usage", None))
        return None

    def answer(self) -> _Answer:
        text = "".join(self._pieces)
        calls = tuple(
            tool_call(call.id, call.name, "".join(call.arguments) or "{}") for call in self._calls
        )
        reason = _forced_stop(self.stop_reason) if self._forced else self.stop_reason
        return _Answer(text, self._usage, reason, self._stop_details, self._model, calls)


def _answers(block: object) -> TypeGuard[ToolUseBlock]:
    """Whether a reply's block is the forced tool's call, whose input is the answer."""
    return isinstance(block, ToolUseBlock) and block.name == FORCED_TOOL


def _forced_stop(stop_reason: str | None) -> str | None:
    """A forced tool's call is the answer, not a call for the client to make: it stops the
    answer as the end of a turn does (`stop`, not `tool_calls`)."""
    return "end_turn" if stop_reason == "tool_use" else stop_reason


def _updated(usage: Usage | None, delta: MessageDeltaUsage | None) -> Usage | None:
    if usage is None or delta is None:
        return usage
    totals = {
        "input_tokens": delta.input_tokens,
        "cache_creation_input_tokens": delta.cache_creation_input_tokens,
        "cache_read_input_tokens": delta.cache_read_input_tokens,
    }
    update = {name: count for name, count in totals.items() if count is not None}
    return usage.model_copy(update={**update, "output_tokens": delta.output_tokens})


def _seconds(request: CompletionRequest, client_timeout: float | anthropic.Timeout | None) -> float:
    """A stream's deadline: the request's timeout, else the client's, over the whole call."""
    if request.timeout is not None:
        return request.timeout
    if isinstance(client_timeout, anthropic.Timeout):
        client_timeout = client_timeout.read
    return client_timeout if client_timeout is not None else DEFAULT_STREAM_SECONDS


def _completion(
    request: CompletionRequest, answer: _Answer, *, provider: str, status: int
) -> Completion:
    if answer.stop_reason == "refusal":
        category = answer.stop_details.category if answer.stop_details else None
        raise ContentFiltered(
            f"{provider} declined to answer under its usage policy"
            + (f" (category: {category})" if category else ""),
            status=status,
        )
    usage = answer.usage
    if usage is not None and isinstance(usage.input_tokens, int):
        cache_read = usage.cache_read_input_tokens or 0
        # Anthropic counts prompt-cache reads and writes apart from input_tokens.
        input_tokens = usage.input_tokens + (usage.cache_creation_input_tokens or 0)
        input_tokens += cache_read
        output_tokens, reported = usage.output_tokens, True
    else:
        cache_read = 0
        input_tokens = estimate_prompt_tokens(request)
        output_tokens, reported = estimate_tokens(answer.text), False
    reason = str(answer.stop_reason) if answer.stop_reason else None
    return Completion(
        text=answer.text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=reported,
        finish_reason=_FINISH_REASONS.get(reason, reason.lower()) if reason else None,
        upstream_model=answer.model or request.model,
        cached_input_tokens=cache_read,
        tool_calls=answer.tool_calls,
    )


async def _parse(raw: AsyncAPIResponse[anthropic.types.Message]) -> anthropic.types.Message | None:
    """The reply, or None when it is not one. The SDK parses leniently: a body that is not
    JSON raises, a non-JSON content type comes back as text, and a JSON object of another
    shape as a Message whose fields are None."""
    try:
        reply: object = await raw.parse()
    except (ValueError, anthropic.APIResponseValidationError):
        return None
    if not isinstance(reply, anthropic.types.Message) or not isinstance(reply.content, list):
        return None
    return reply


def map_anthropic_error(
    exc: anthropic.APIError, *, provider: str, api_key: str | None = None
) -> ProviderError:
    """Translate an SDK exception into our error tree. Messages come from the vendor's error
    body or are written here, and never carry the API key."""
    if isinstance(exc, anthropic.APIConnectionError):  # APITimeoutError included
        if isinstance(exc, anthropic.APITimeoutError) and not is_connection_failure(exc):
            return ProviderTimeout(f"{provider} did not answer in time")
        if _never_connected(exc):
            return ConnectionFailed(f"could not connect to {provider}")
        return ConnectionFailed(f"the connection to {provider} failed or was dropped")
    if isinstance(exc, anthropic.APIResponseValidationError):
        return MalformedResponse(
            f"{provider} sent a response that could not be read", status=exc.status_code
        )
    if not isinstance(exc, anthropic.APIStatusError):
        return MalformedResponse(f"{provider} sent a response that could not be read")
    status = exc.status_code
    if status < 400:  # an `error` event inside a stream that began 200 OK
        status = _ERROR_EVENT_STATUS.get(str(exc.type), 500)
    detail = _vendor_message(exc, api_key)
    message = f"{provider}: {detail}"
    if status in (401, 403):
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({detail})", status=status
        )
    retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if status >= 500:  # 529 is Anthropic's "overloaded"
        return Unavailable(message, status=status, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status == 400 and "prompt is too long" in detail.lower():
        return ContextLengthExceeded(message, status=status)
    return BadRequest(message, status=status)


def _vendor_message(exc: anthropic.APIStatusError, api_key: str | None) -> str:
    text = exc.api_message if isinstance(exc.api_message, str) else f"HTTP {exc.status_code}"
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return text[:500]


def _never_connected(exc: BaseException) -> bool:
    """Whether the connection was never made (refused, unresolvable host), as opposed to one
    that broke after the request went out, which the upstream may have acted on."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(
            seen, ConnectionRefusedError | socket.gaierror | aiohttp.ClientConnectorError
        ):
            return True
        seen = seen.__cause__
    return False
