"""OpenAI's chat-completions wire format, read: the one place that says what OpenAI's answers
mean in our terms, for both transports (the SDK adapter `openai.py` and the direct one,
`openai_http.py`).

Shared by both: `status_error` (an HTTP status, error body and Retry-After → our
`ProviderError`), `map_finish_reason` (a choice's finish_reason → ours), `read_usage` (a
`usage` object → input and output tokens, and whether they were reported) and
`build_completion` (the `Completion` those make). The direct transport's own readers are here
too: an answer's JSON (`parse_completion`), a stream's `chat.completion.chunk`s
(`StreamedAnswer`) and an error body (`error_body`), each read into what the SDK makes of the
same bytes. The embeddings API (`POST {base}/embeddings`) is read here too, for both
transports: `embedding_body` (what is sent) and `read_embeddings` / `parse_embeddings` (what
comes back). The vendor's wire facts are in docs/wire-formats.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import from_json

from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Choice,
    ChoiceText,
    Completion,
    CompletionRequest,
    ContentFiltered,
    ContextLengthExceeded,
    EmbeddingRequest,
    Embeddings,
    MalformedResponse,
    ProviderError,
    RateLimited,
    ToolCall,
    ToolCallDelta,
    Unavailable,
    estimate_input_tokens,
    estimate_prompt_tokens,
    estimate_tokens,
    pack_floats,
    retry_after_seconds,
    tool_call,
)

MAX_VENDOR_MESSAGE = 500


class _WrongShape(Exception):
    """The reply is JSON, but not shaped like a chat completion."""


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int  # of input_tokens, those served from the vendor's prompt cache
    reported: bool  # False: the vendor sent no usage and the counts are estimates
    reasoning_tokens: int = 0  # of output_tokens, those spent reasoning


# Both transports: errors, finish reasons, usage.


def status_error(
    status: int, body: object, retry_after: str | None, *, provider: str
) -> ProviderError:
    """A non-2xx answer → our error tree. `body` is what the SDK keeps as an APIStatusError's
    `body` (`error_body` makes the same from the bytes); its `error` object, when it has one,
    gives the message and the code. `retry_after` is the Retry-After header. Messages come from
    the vendor's error body or are written here: they never include the API key."""
    error = body.get("error", body) if isinstance(body, dict) else body
    vendor = _vendor_message(error, status)
    message = f"{provider}: {vendor}"
    if status in (401, 403):
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({vendor})", status=status
        )
    wait = retry_after_seconds(retry_after)
    if status == 429:
        return RateLimited(message, status=status, retry_after=wait)
    if status >= 500:
        return Unavailable(message, status=status, retry_after=wait)
    code = str(error.get("code") or "") if isinstance(error, dict) else ""
    if code == "context_length_exceeded":
        return ContextLengthExceeded(message, status=status)
    if code in ("content_filter", "content_policy_violation"):
        return ContentFiltered(message, status=status)
    return BadRequest(message, status=status)


def map_finish_reason(finish_reason: str | None, *, provider: str) -> str | None:
    """A choice's finish_reason as ours: the same string, except that an answer withheld under
    the vendor's content policy is no answer at all."""
    if finish_reason == "content_filter":
        raise ContentFiltered(f"{provider} withheld the answer under its content policy")
    return finish_reason


def read_usage(usage: object, request: CompletionRequest, text: str, *, provider: str) -> Usage:
    """A `usage` JSON object (None when the answer has none) → the tokens of the call: those
    reported, or an estimate from the request and the answer's `text` when there are none."""
    try:
        if usage is None:  # some compatible servers report none: estimate, and say so
            return Usage(estimate_prompt_tokens(request), estimate_tokens(text), 0, reported=False)
        details = _field(usage, "prompt_tokens_details")
        cached = _count(_field(details, "cached_tokens")) if details is not None else None
        output = _field(usage, "completion_tokens_details")
        reasoning = _count(_field(output, "reasoning_tokens")) if output is not None else None
        return Usage(
            input_tokens=_required_count(_field(usage, "prompt_tokens")),
            output_tokens=_required_count(_field(usage, "completion_tokens")),
            cached_input_tokens=cached or 0,
            reported=True,
            reasoning_tokens=reasoning or 0,
        )
    except _WrongShape:
        raise _unreadable(provider) from None


def build_completion(
    request: CompletionRequest,
    text: str,
    finish_reason: str | None,
    model: str | None,
    usage: object,
    *,
    provider: str,
    tool_calls: tuple[ToolCall, ...] = (),
    refusal: str | None = None,
    logprobs: object = None,
    choices: tuple[Choice, ...] = (),
) -> Completion:
    """The `Completion` of an answer: its text, its finish reason (from `map_finish_reason`),
    the model that answered (else the one asked for) and its `usage` JSON object, as
    `read_usage` reads it; its tool calls, refusal and logprobs as the vendor sent them; the
    other answers (`n` > 1) as `choices`."""
    every_text = text if not choices else " ".join([text, *(c.text for c in choices)])
    counted = read_usage(usage, request, every_text, provider=provider)
    return Completion(
        text=text,
        input_tokens=counted.input_tokens,
        output_tokens=counted.output_tokens,
        usage_reported=counted.reported,
        finish_reason=finish_reason,
        upstream_model=model or request.model,
        cached_input_tokens=counted.cached_input_tokens,
        tool_calls=tool_calls,
        refusal=refusal,
        reasoning_tokens=counted.reasoning_tokens,
        logprobs=logprobs,
        choices=choices,
    )


def read_tool_calls(calls: object, *, provider: str) -> tuple[ToolCall, ...]:
    """A message's `tool_calls` JSON (None when it has none) → ours, each checked."""
    if calls is None:
        return ()
    try:
        if not isinstance(calls, list):
            raise _WrongShape("tool_calls")
        return tuple(_tool_call(call) for call in calls)
    except _WrongShape:
        raise _unreadable(provider) from None


def _tool_call(call: object) -> ToolCall:
    function = _field(call, "function")
    call_id, name = _text(_field(call, "id")), _text(_field(function, "name"))
    if not call_id or not name:
        raise _WrongShape("tool call")
    arguments = _text(_field(function, "arguments")) or ""
    return tool_call(call_id, name, arguments)


def _vendor_message(error: object, status: int) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:MAX_VENDOR_MESSAGE]
    return f"HTTP {status}"


def _unreadable(provider: str) -> MalformedResponse:
    return MalformedResponse(f"{provider} sent a response that could not be read")


# The direct transport: the bytes the SDK would have read for it.


def error_body(raw: bytes) -> object:
    """A non-2xx answer's bytes → what the SDK keeps as the APIStatusError's `body`: the JSON,
    its `error` object when it has one (`body.get("error", body)`, as the SDK has it); None
    when the body is not JSON (the SDK keeps the text, which gives no message either)."""
    try:
        body: object = json.loads(raw.decode("utf-8", errors="replace").strip())
    except (ValueError, RecursionError):
        return None
    return body.get("error", body) if isinstance(body, dict) else body


def parse_completion(raw: bytes, request: CompletionRequest, *, provider: str) -> Completion:
    """A 2xx body → a Completion (the SDK transport reads its model, dumped back to JSON,
    with `read_completion`)."""
    try:
        reply = from_json(raw)  # pydantic-core's parser: several times json.loads's speed
    except (ValueError, RecursionError):
        raise MalformedResponse(f"{provider} sent a response that is not JSON") from None
    return read_completion(reply, request, provider=provider)


def read_completion(reply: object, request: CompletionRequest, *, provider: str) -> Completion:
    """A reply's JSON → a Completion."""
    try:
        return _completion(reply, request, provider=provider)
    except _WrongShape:
        raise _unreadable(provider) from None


def _completion(reply: object, request: CompletionRequest, *, provider: str) -> Completion:
    choices = _field(reply, "choices")
    if not choices:
        raise MalformedResponse(f"{provider} answered with no choices")
    if not isinstance(choices, list):
        raise _WrongShape("choices")
    first, *others = _in_order(choices, request)
    choice = _choice(first, provider)
    return build_completion(
        request,
        choice.text,
        choice.finish_reason,
        _text(_field(reply, "model")),
        _field(reply, "usage"),
        provider=provider,
        tool_calls=choice.tool_calls,
        refusal=choice.refusal,
        logprobs=choice.logprobs,
        choices=tuple(_choice(other, provider) for other in others),
    )


def _choice(choice: object, provider: str) -> Choice:
    message = _field(choice, "message")
    return Choice(
        text=_text(_field(message, "content")) or "",
        finish_reason=map_finish_reason(_text(_field(choice, "finish_reason")), provider=provider),
        tool_calls=read_tool_calls(_field(message, "tool_calls"), provider=provider),
        refusal=_text(_field(message, "refusal")),
        logprobs=_field(choice, "logprobs"),
    )


def _in_order(choices: list[object], request: CompletionRequest) -> list[object]:
    """An answer's choices by their `index` (as listed when there is none): one per answer
    asked for (`n`), no more."""
    if len(choices) == 1:
        return choices
    indexed = sorted(
        ((_choice_index(c, position, request), c) for position, c in enumerate(choices)),
        key=lambda item: item[0],
    )
    if [index for index, _ in indexed] != list(range(len(indexed))):
        raise _WrongShape("choices")  # an answer twice, or one missing
    return [choice for _, choice in indexed]


def _choice_index(choice: object, position: int, request: CompletionRequest) -> int:
    """A choice's `index`, checked: each answer asked for (`n`) has one, 0 .. n-1."""
    index = _field(choice, "index")
    if index is None:
        return position
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < _n(request):
        raise _WrongShape("choice index")
    return index


def _n(request: CompletionRequest) -> int:
    n = request.options.get("n", 1)
    return n if isinstance(n, int) else 1


# Embeddings, both transports.


def embedding_body(request: EmbeddingRequest) -> dict[str, Any]:
    """The embeddings request: the inputs always as a list, the vectors asked for in base64
    (as the SDK asks by default: a third of the bytes of JSON numbers, and read exactly);
    `dimensions` and `user` only when given."""
    body: dict[str, Any] = {
        "model": request.model,
        "input": list(request.inputs),
        "encoding_format": "base64",
    }
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user is not None:
        body["user"] = request.user
    return body


def parse_embeddings(raw: bytes, request: EmbeddingRequest, *, provider: str) -> Embeddings:
    """A 2xx body of `POST /embeddings` → the `Embeddings` (the SDK transport reads its model,
    dumped back to JSON, with `read_embeddings`)."""
    try:
        reply = from_json(raw)
    except (ValueError, RecursionError):
        raise MalformedResponse(f"{provider} sent a response that is not JSON") from None
    return read_embeddings(reply, request, provider=provider)


def read_embeddings(reply: object, request: EmbeddingRequest, *, provider: str) -> Embeddings:
    """A `list` of `embedding` objects → the vectors in the inputs' order (by their `index`,
    else as listed), each a base64 string of little-endian float32s or, from a compatible
    server that ignores `encoding_format`, a list of numbers; `usage.prompt_tokens` (an
    estimate when there is no usage)."""
    try:
        data = _field(reply, "data")
        if not isinstance(data, list):
            raise _WrongShape("data")
        items = [
            (_index(item, position), _vector(_field(item, "embedding")))
            for position, item in enumerate(data)
        ]
        if sorted(index for index, _ in items) != list(range(len(request.inputs))):
            raise MalformedResponse(
                f"{provider} answered with {len(items)} embeddings for {len(request.inputs)} inputs"
            )
        vectors = tuple(vector for _, vector in sorted(items, key=lambda item: item[0]))
        usage = _field(reply, "usage")
        model = _text(_field(reply, "model")) or request.model
        if usage is None:
            return Embeddings(vectors, estimate_input_tokens(request.inputs), False, model)
        tokens = _field(usage, "prompt_tokens")
        if tokens is None:
            tokens = _field(usage, "total_tokens")
        return Embeddings(vectors, _required_count(tokens), True, model)
    except _WrongShape:
        raise _unreadable(provider) from None


def _index(item: object, position: int) -> int:
    index = _field(item, "index")
    if index is None:
        return position
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise _WrongShape("index")
    return index


def _vector(value: object) -> bytes:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _WrongShape("embedding") from None
        if not raw or len(raw) % 4:
            raise _WrongShape("embedding")
        return raw
    if isinstance(value, list) and value:
        if not all(
            isinstance(number, int | float) and not isinstance(number, bool) for number in value
        ):
            raise _WrongShape("embedding")
        return pack_floats(value)
    raise _WrongShape("embedding")


class StreamedAnswer:
    """What the `chat.completion.chunk`s of a stream add up to, read as `parse_completion`
    reads a whole reply: per choice (by its `index`; only 0 unless `n` > 1), the text of
    `delta.content`, the tool calls of its `delta.tool_calls` (by `index`: id and name first,
    then the arguments in pieces), the refusal and logprobs pieces and the last
    `finish_reason`; the `model`, and the usage of the chunk that carries one (without it, an
    estimate).

    `add` returns the text a chunk adds to the first answer; the other pieces it adds (tool
    calls, and with `n` > 1 the other answers' text) wait in `deltas` for the caller to hand
    on (`take_deltas`)."""

    def __init__(self, request: CompletionRequest, *, provider: str) -> None:
        self._request = request
        self._provider = provider
        self._choices: dict[int, _ChoicePieces] = {0: _ChoicePieces()}
        self._model: str | None = None
        self._usage: object = None
        self.deltas: list[ChoiceText | ToolCallDelta] = []
        self.done = False  # `[DONE]` was read: what follows is not the answer's

    def take_deltas(self) -> list[ChoiceText | ToolCallDelta]:
        deltas, self.deltas = self.deltas, []
        return deltas

    def add(self, data: str) -> str | None:
        """One event's data; returns the text it adds to the first answer, if any."""
        if self.done or data.startswith("[DONE]"):  # the SDK's test, kept
            self.done = True
            return None
        try:
            chunk = from_json(data)
        except (ValueError, RecursionError):
            raise MalformedResponse(f"{self._provider} sent a response that is not JSON") from None
        return self.add_chunk(chunk)

    def add_chunk(self, chunk: object) -> str | None:
        """One chunk, already read from JSON (the SDK transport's, dumped back from its
        model); returns the text it adds to the first answer, if any."""
        try:
            return self._take(chunk)
        except _WrongShape:
            raise _unreadable(self._provider) from None

    def completion(self) -> Completion:
        answers = [self._choices[index] for index in sorted(self._choices)]
        if any(answer.finish_reason is None for answer in answers):
            # cut off, though the connection ended cleanly
            raise MalformedResponse(f"{self._provider} ended its stream before the answer did")
        first, *others = (answer.choice() for answer in answers)
        return build_completion(
            self._request,
            first.text,
            first.finish_reason,
            self._model,
            self._usage,
            provider=self._provider,
            tool_calls=first.tool_calls,
            refusal=first.refusal,
            logprobs=first.logprobs,
            choices=tuple(others),
        )

    def _take(self, chunk: object) -> str | None:
        if _field(chunk, "error"):  # an error reported inside the stream, as the SDK reads it
            raise _WrongShape("error")
        self._model = _text(_field(chunk, "model")) or self._model
        if (usage := _field(chunk, "usage")) is not None:
            self._usage = usage
        choices = _field(chunk, "choices")
        if not choices:  # the usage chunk has none
            return None
        if not isinstance(choices, list):
            raise _WrongShape("choices")
        first_text = None
        for position, choice in enumerate(choices):
            index = _choice_index(choice, position, self._request)
            answer = self._choices.get(index)
            if answer is None:
                self._choices[index] = answer = _ChoicePieces()
            text = self._take_choice(choice, index, answer)
            if index == 0:
                first_text = text
            elif text:
                self.deltas.append(ChoiceText(index, text))
        return first_text

    def _take_choice(self, choice: object, index: int, answer: _ChoicePieces) -> str | None:
        finish_reason = map_finish_reason(
            _text(_field(choice, "finish_reason")), provider=self._provider
        )
        answer.finish_reason = finish_reason or answer.finish_reason
        delta = _field(choice, "delta")
        if delta is None:
            return None
        text = _text(_field(delta, "content"))
        if text:
            answer.pieces.append(text)
        calls = _field(delta, "tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise _WrongShape("tool_calls")
            for call in calls:
                self._add_call(call, index, answer)
        if refusal := _text(_field(delta, "refusal")):
            answer.refusal.append(refusal)
        logprobs = _field(choice, "logprobs")
        if logprobs is not None and isinstance(content := _field(logprobs, "content"), list):
            answer.logprobs = (answer.logprobs or []) + content
        return text or None

    def _add_call(self, call: object, choice: int, answer: _ChoicePieces) -> None:
        index = _field(call, "index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise _WrongShape("tool call index")
        function = _field(call, "function")
        name = _text(_field(function, "name")) if function is not None else None
        arguments = (_text(_field(function, "arguments")) if function is not None else None) or ""
        call_id = _text(_field(call, "id"))
        pieces = answer.calls.get(index)
        if pieces is None:
            if not call_id or not name:  # a call's first piece names it
                raise _WrongShape("tool call")
            answer.calls[index] = pieces = _CallPieces(call_id, name)
            self.deltas.append(ToolCallDelta(index, call_id, name, arguments, choice))
        elif arguments:
            self.deltas.append(ToolCallDelta(index, arguments=arguments, choice=choice))
        if arguments:
            pieces.arguments.append(arguments)


@dataclass(slots=True)
class _ChoicePieces:
    """One answer of a stream, as its chunks bring it."""

    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    calls: dict[int, _CallPieces] = field(default_factory=dict)
    refusal: list[str] = field(default_factory=list)
    logprobs: list[Any] | None = None

    def choice(self) -> Choice:
        return Choice(
            text="".join(self.pieces),
            finish_reason=self.finish_reason,
            tool_calls=tuple(pieces.call() for _, pieces in sorted(self.calls.items())),
            refusal="".join(self.refusal) or None,
            logprobs={"content": self.logprobs} if self.logprobs is not None else None,
        )


@dataclass(slots=True)
class _CallPieces:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def call(self) -> ToolCall:
        return tool_call(self.id, self.name, "".join(self.arguments))


def _field(obj: object, key: str) -> object:
    """`obj[key]` of a JSON object, None when absent."""
    if not isinstance(obj, dict):
        raise _WrongShape(key)
    return obj.get(key)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _WrongShape("expected a string")


def _count(value: object) -> int | None:
    if value is None:
        return None
    return _required_count(value)


def _required_count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _WrongShape("expected a token count")
