"""Google's Gemini API through the official `google-genai` SDK (its async client, `.aio`).

Streamed calls use `generate_content_stream` (`:streamGenerateContent?alt=sse`). Its deadline is
the SDK's, as for `complete`: the per-request (or client) timeout becomes aiohttp's `total`,
which bounds the whole call, body included, so a stream that goes quiet ends as a timeout.
The SDK's stream is a chain of async generators whose innermost one (the one that releases the
HTTP response) sits in a reference cycle: closing the outer generator leaves the connection open
until the garbage collector happens by. So the SDK's stream is read ahead in a task of its own
(`_ReadAhead`), always inside a read, and closing cancels that read, which unwinds the whole
chain at once and closes the connection.

The request's OpenAI fields are translated as the "gemini" column of the translation matrix
(app/providers/fidelity.py) says, and only those (`_options`):

- `tools` become one `Tool` of `functionDeclarations`, each function's `parameters` sent as
  `parametersJsonSchema` (JSON Schema as written). OpenAI's `strict` has no Gemini
  equivalent (no switch for strict schema adherence): it is accepted and not sent;
- `tool_choice` becomes `toolConfig.functionCallingConfig`: none → NONE, auto → AUTO,
  required → ANY, one named function → ANY with `allowedFunctionNames`;
- `response_format` json_object → `responseMimeType` application/json; json_schema → that and
  `responseJsonSchema` (its `strict` has no switch either);
- `stop`, `top_p`, `seed`, `frequency_penalty`, `presence_penalty` → the same generation fields;
- `reasoning_effort` → `thinkingConfig.thinkingBudget` (see REASONING_BUDGETS);
- `logprobs` → `responseLogprobs`, `top_logprobs` → `logprobs` (0 to 20 alternatives, as
  OpenAI allows); each candidate's `logprobsResult` (`chosenCandidates`, and `topCandidates`
  step by step) becomes OpenAI's `logprobs.content`, added up over the chunks when streamed;
- `n` → `candidateCount`: candidate 0 is the Completion itself, the others (by their
  `index`) its `choices`; streamed, a chunk carries pieces of any of them, each routed to its
  choice (`ChoiceText`, `ToolCallDelta.choice`). Tool-call ids are kept unique across the
  candidates (a repeated one is replaced by a made-up one);
- `user` is recorded by the gateway and never sent (Gemini has no such field).

Anything else in `options` (the matrix refuses it for Gemini, so the intake should not have let
it through) is a `BadRequest` naming it, never dropped.

Messages: system turns → `systemInstruction`; user text and image parts → text and
`inlineData` parts (a `data:` URL decoded, an http(s) one fetched by the `ImageFetcher` given);
an assistant turn's `tool_calls` → `functionCall` parts (with the call's id); `tool` turns →
`functionResponse` parts (`{"result": <content>}`, named after the call they answer), one
`user` content for consecutive ones. Replies' `functionCall` parts become `tool_calls`, with
finish reason `tool_calls`; streamed, each arrives whole in one chunk, so it is yielded as one
`ToolCallDelta` holding all its arguments.

Embeddings (`embed`) go through `aio.models.embed_content`, which the SDK sends to the Gemini
API as one `:batchEmbedContents` call (one request per input), with `dimensions` as each
request's `outputDimensionality`. The Gemini API reports no token usage for them (only Vertex
AI has a billable character count), so the tokens are estimated unless a `usageMetadata` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp
import pydantic
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from google import genai
from google.genai import errors, types

from app.providers import fidelity
from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Choice,
    ChoiceText,
    Completion,
    CompletionRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    Delta,
    EmbeddingRequest,
    Embeddings,
    MalformedResponse,
    Message,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ToolCall,
    ToolCallDelta,
    Unavailable,
    arguments_object,
    arguments_text,
    estimate_input_tokens,
    estimate_prompt_tokens,
    estimate_tokens,
    message_text,
    pack_floats,
    retry_after_seconds,
    tool_call,
)
from app.providers.images import ImageFetcher, InvalidImage, parse_data_url

_Item = TypeVar("_Item")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
# Finish reasons meaning the answer was withheld by a policy rather than ended.
FILTERED_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# "The input token count (N) exceeds the maximum number of tokens allowed (M)." (Gemini API);
# "... the input token count is N but model only supports up to M" (Vertex AI).
CONTEXT_LENGTH = re.compile(r"input token count.*(exceeds the maximum|only supports up to)", re.I)
# OpenAI's reasoning_effort as a thinking budget in tokens (0: no thinking).
REASONING_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
TOOL_CHOICE_MODES = {
    "none": types.FunctionCallingConfigMode.NONE,
    "auto": types.FunctionCallingConfigMode.AUTO,
    "required": types.FunctionCallingConfigMode.ANY,
}
# The options `_options` translates; `user` is recorded by the gateway and not sent.
TRANSLATED = frozenset(
    {
        "tools",
        "tool_choice",
        "response_format",
        "stop",
        "top_p",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "reasoning_effort",
        "logprobs",
        "top_logprobs",
        "n",
    }
)
RECORDED = frozenset({"user"})
# Gemini's `logprobs` (alternatives a step) takes 0 to 20, as OpenAI's `top_logprobs` does.
MAX_TOP_LOGPROBS = 20


class _ConnectTimeoutConnector(aiohttp.TCPConnector):
    """Bounds the TCP/TLS connect. The SDK gives every request its own
    `ClientTimeout(total=...)`, which replaces the session's, so this is the only place a
    connect limit survives."""

    def __init__(self, *, connect_timeout: float) -> None:
        super().__init__(limit=0)  # no pool queue: the gateway caps calls in flight itself
        self._connect_timeout = connect_timeout

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        bounded = aiohttp.ClientTimeout(
            total=timeout.total,
            connect=timeout.connect,
            sock_read=timeout.sock_read,
            sock_connect=min(timeout.sock_connect or math.inf, self._connect_timeout),
            ceil_threshold=timeout.ceil_threshold,
        )
        return await super().connect(req, traces, bounded)


@dataclass(frozen=True, slots=True)
class GeminiClient:
    """The SDK client and the aiohttp session it sends through; the SDK never closes a
    session it was given, so they are closed together here."""

    sdk: genai.Client
    session: aiohttp.ClientSession

    async def aclose(self) -> None:
        await self.sdk.aio.aclose()
        self.sdk.close()  # the sync transport the SDK builds (unused) holds a pool too
        await self.session.close()


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> GeminiClient:
    """One client per process; call it from the running event loop (the app's lifespan),
    which the aiohttp session belongs to.

    - Retries off: `attempts=1` stops tenacity after one try and also switches off the SDK's
      hidden resend of a refused or reset connection (after a 1-10 s sleep), which it makes
      whenever no `retry_options` are set. The gateway owns that loop, so every upstream
      call is counted and billed once.
    - Our own aiohttp session (the SDK would also pick aiohttp, but build its session by
      subclassing `ClientSession`, which aiohttp deprecates): it bounds the connect time
      (see _ConnectTimeoutConnector) and is closed cleanly with the client.
    - Everything explicit (base URL, API version, `vertexai=False`), so no GOOGLE_* variable
      in the environment changes where requests go.
    """
    session = aiohttp.ClientSession(
        connector=_ConnectTimeoutConnector(connect_timeout=connect_timeout)
    )
    options = types.HttpOptions(
        base_url=base_url or DEFAULT_BASE_URL,
        api_version="v1",
        timeout=_milliseconds(timeout),
        retry_options=types.HttpRetryOptions(attempts=1),
        aiohttp_client=session,
    )
    return GeminiClient(
        genai.Client(api_key=api_key, vertexai=False, http_options=options), session
    )


class GeminiProvider:
    max_temperature = 2.0
    kind = "gemini"
    embeds_dimensions = True  # outputDimensionality

    def __init__(
        self, client: GeminiClient, *, name: str = "gemini", images: ImageFetcher | None = None
    ) -> None:
        """`images` fetches the images messages give by http(s) URL (None: such an image is a
        `BadRequest`); the provider owns it, and closes it with itself."""
        self.name = name
        self._client = client
        self._images = images

    async def complete(self, request: CompletionRequest) -> Completion:
        contents, config = await self._call(request)
        with _sdk_errors(self.name):
            reply = await self._client.sdk.aio.models.generate_content(
                model=request.model, contents=contents, config=config
            )
        return _completion(request, reply, provider=self.name)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[Delta | Completion, None]:
        contents, config = await self._call(request)
        # Nothing is sent until the first chunk is asked for.
        chunks = _ReadAhead(
            await self._client.sdk.aio.models.generate_content_stream(
                model=request.model, contents=contents, config=config
            )
        )
        answer = _StreamedAnswer(request, provider=self.name)
        try:
            while (chunk := await self._next(chunks)) is not None:
                for piece in answer.add(chunk):
                    yield piece
        finally:
            await chunks.close()
        yield answer.completion()

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        config = types.EmbedContentConfig(
            output_dimensionality=request.dimensions,
            http_options=(
                types.HttpOptions(timeout=_milliseconds(request.timeout))
                if request.timeout is not None
                else None
            ),
        )
        with _sdk_errors(self.name):
            reply = await self._client.sdk.aio.models.embed_content(
                model=request.model, contents=list(request.inputs), config=config
            )
        return _embeddings(request, reply, provider=self.name)

    async def _call(
        self, request: CompletionRequest
    ) -> tuple[list[types.Content], types.GenerateContentConfig]:
        """The request's contents and config, the same streamed or not."""
        contents, system = await _to_contents(request.messages, self._images)
        config = _config(request, system)
        return contents, config

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        finally:
            if self._images is not None:
                await self._images.aclose()

    async def _next(
        self, chunks: _ReadAhead[types.GenerateContentResponse]
    ) -> types.GenerateContentResponse | None:
        with _sdk_errors(self.name):
            return await chunks.next()


class _ReadAhead(Generic[_Item]):
    """An async iterator read in a task of its own, as fast as it yields; closing cancels the
    task, in the middle of a read unless the iterator is done."""

    def __init__(self, items: AsyncIterator[_Item]) -> None:
        self._queue: asyncio.Queue[_Item | Exception | None] = asyncio.Queue()  # None: the end
        self._task = asyncio.create_task(self._read(items))

    async def next(self) -> _Item | None:
        """The next item, None after the last, or what the iterator raised."""
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])  # a cancellation of our own caller still goes through

    async def _read(self, items: AsyncIterator[_Item]) -> None:
        try:
            async for item in items:
                self._queue.put_nowait(item)
        except Exception as exc:
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(None)


@contextlib.contextmanager
def _sdk_errors(provider: str) -> Iterator[None]:
    """What the SDK or its transport raised, as our errors (a bug here goes through as is)."""
    try:
        yield
    except (errors.APIError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        mapped = map_gemini_error(exc, provider=provider)
        if mapped is None:
            raise
        raise mapped from None


def _config(
    request: CompletionRequest, system: types.Content | None
) -> types.GenerateContentConfig:
    options = _options(request.options)
    try:
        return _generate_config(request, system, options)
    except pydantic.ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:3])
        raise BadRequest(f"options Gemini cannot take as given ({fields})") from None


def _generate_config(
    request: CompletionRequest, system: types.Content | None, options: dict[str, Any]
) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        system_instruction=system,
        temperature=request.temperature,
        max_output_tokens=request.max_tokens,
        # One HTTP call per complete(): no continuation hops, no function-calling loop.
        # (Streamed, continuation would also resend a stream that broke off before any text.)
        automatic_continuation=False,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=(
            types.HttpOptions(timeout=_milliseconds(request.timeout))
            if request.timeout is not None
            else None
        ),
        **options,
    )


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The request's OpenAI options as `GenerateContentConfig` fields (see the module's
    docstring); a value that asks for nothing (the field's default) is not sent."""
    config: dict[str, Any] = {}
    for name, value in options.items():
        row = fidelity.BY_NAME.get(name)
        if name in RECORDED or (row is not None and row.is_default(value)):
            continue
        if name not in TRANSLATED:
            why = f" ({fidelity.why('gemini', name)})" if row is not None else ""
            raise BadRequest(f"{name} is not supported by Gemini{why}")
        if name == "tools":
            config["tools"] = [_tools(value)]
        elif name == "tool_choice":
            config["tool_config"] = types.ToolConfig(function_calling_config=_tool_choice(value))
        elif name == "response_format":
            config.update(_response_format(value))
        elif name == "stop":
            config["stop_sequences"] = [value] if isinstance(value, str) else list(value)
        elif name == "reasoning_effort":
            if value not in REASONING_BUDGETS:
                raise BadRequest(
                    f"reasoning_effort {value!r} is not one of {', '.join(REASONING_BUDGETS)}"
                )
            config["thinking_config"] = types.ThinkingConfig(
                thinking_budget=REASONING_BUDGETS[value]
            )
        elif name == "logprobs":
            if value is not True:
                raise BadRequest("logprobs must be true or false")
            config["response_logprobs"] = True
        elif name == "top_logprobs":
            config["logprobs"] = _top_logprobs(value, options)
        elif name == "n":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadRequest(f"n must be a whole number of at least 1, not {value!r}")
            config["candidate_count"] = value
        else:  # top_p, seed, frequency_penalty, presence_penalty: the same fields
            config[name] = value
    return config


def _top_logprobs(value: Any, options: Mapping[str, Any]) -> int:
    """`top_logprobs` as Gemini's `logprobs`, which it only takes with `responseLogprobs` (as
    OpenAI takes it only with `logprobs: true`)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise BadRequest(
            f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS} for Gemini, "
            f"not {value!r}"
        )
    if options.get("logprobs") is not True:
        raise BadRequest("top_logprobs needs logprobs: true")
    return value


def _logprobs_asked(options: Mapping[str, Any]) -> int | None:
    """How many alternatives a token the request asked for (`top_logprobs`); None: it asked
    for no log probabilities at all."""
    if options.get("logprobs") is not True:
        return None
    top = options.get("top_logprobs")
    return top if isinstance(top, int) else 0


def _tools(tools: Any) -> types.Tool:
    """OpenAI's function tools as one Gemini `Tool`. A function's `strict` is accepted and not
    sent: Gemini has no switch for strict adherence to the declared schema."""
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    declarations = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise BadRequest(f"tools[{index}]: Gemini takes only function tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{index}].function.name is missing")
        declarations.append(
            types.FunctionDeclaration(
                name=name,
                description=function.get("description"),
                parameters_json_schema=function.get("parameters"),
            )
        )
    return types.Tool(function_declarations=declarations)


def _tool_choice(choice: Any) -> types.FunctionCallingConfig:
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return types.FunctionCallingConfig(mode=TOOL_CHOICE_MODES[choice])
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not name:
        raise BadRequest(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}'
        )
    return types.FunctionCallingConfig(
        mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=[name]
    )


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_mime_type": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        config: dict[str, Any] = {"response_mime_type": "application/json"}
        if schema is not None:
            config["response_json_schema"] = schema
        return config
    raise BadRequest('response_format.type must be "text", "json_object" or "json_schema"')


def _completion(
    request: CompletionRequest, reply: types.GenerateContentResponse, *, provider: str
) -> Completion:
    _refuse_blocked_prompt(reply, provider=provider)
    if not reply.candidates:
        raise MalformedResponse(f"{provider} answered with no candidates")
    top = _logprobs_asked(request.options)
    answers: dict[int, _Answer] = {}
    ids: set[str] = set()
    for candidate in reply.candidates:
        answer = answers.setdefault(_index(candidate), _Answer())
        answer.add(candidate, top=top, ids=ids, provider=provider)
    return _result(request, _in_order(answers, provider), reply.usage_metadata, reply.model_version)


def _embeddings(
    request: EmbeddingRequest, reply: types.EmbedContentResponse, *, provider: str
) -> Embeddings:
    """The vectors, one per input in order (`embeddings[i].values`), and the tokens: the
    usageMetadata's prompt count when there is one, else an estimate."""
    found = reply.embeddings or []
    if len(found) != len(request.inputs):
        raise MalformedResponse(
            f"{provider} answered with {len(found)} embeddings for {len(request.inputs)} inputs"
        )
    vectors = []
    for embedding in found:
        if not embedding.values:
            raise MalformedResponse(f"{provider} answered with an empty embedding")
        vectors.append(pack_floats(embedding.values))
    usage = reply.usage_metadata
    tokens = usage.prompt_token_count if usage is not None else None
    if tokens is None:
        return Embeddings(
            tuple(vectors), estimate_input_tokens(request.inputs), False, request.model
        )
    return Embeddings(tuple(vectors), tokens, True, request.model)


@dataclass(slots=True)
class _Answer:
    """One candidate (OpenAI's choice `index`), read from a whole reply or added up from the
    chunks of a stream: its text, function calls, finish reason (as Google names it), and
    its tokens' log probabilities in OpenAI's shape (None: none were asked for or given)."""

    pieces: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    finish: str | None = None
    logprobs: list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(
        self, candidate: types.Candidate, *, top: int | None, ids: set[str], provider: str
    ) -> tuple[str, list[ToolCall]]:
        """Add (a chunk of) the candidate; returns the text and the calls it added. `top` is
        how many alternatives a token were asked for (None: no log probabilities); `ids` the
        tool-call ids the reply used so far, in all its candidates."""
        self.finish = _finish(candidate, provider=provider) or self.finish
        text = _answer_text(candidate)
        if text:
            self.pieces.append(text)
        calls = [_unique(_tool_call(call), ids) for call in _function_calls(candidate)]
        self.calls += calls
        if top is not None and candidate.logprobs_result is not None:
            steps = _token_logprobs(candidate.logprobs_result, top)
            self.logprobs = (self.logprobs or []) + steps
        return text, calls

    def logprobs_object(self) -> dict[str, Any] | None:
        """OpenAI's `choices[].logprobs` (Gemini has no refusal, so no refusal tokens)."""
        return {"content": self.logprobs, "refusal": None} if self.logprobs is not None else None


class _StreamedAnswer:
    """What the chunks of a stream add up to, read as `_completion` reads a whole reply: the
    text, function calls and log probabilities of every chunk, for each candidate (a chunk
    carries those of the candidates it advances, each with its `index`), each candidate's
    last finish reason, and the last usage and model version. A function call arrives whole,
    in one chunk."""

    def __init__(self, request: CompletionRequest, *, provider: str) -> None:
        self._request = request
        self._provider = provider
        self._top = _logprobs_asked(request.options)
        self._answers: dict[int, _Answer] = {}
        self._ids: set[str] = set()  # the tool-call ids given so far, in all candidates
        self._candidates = False  # whether any chunk had one
        self._usage: types.GenerateContentResponseUsageMetadata | None = None
        self._model_version: str | None = None

    def add(self, chunk: types.GenerateContentResponse) -> list[Delta]:
        """What the chunk adds to the answers (maybe nothing): for each candidate, its text
        (candidate 0's as bare `str`, the others' as `ChoiceText`), then its calls."""
        _refuse_blocked_prompt(chunk, provider=self._provider)
        self._usage = chunk.usage_metadata or self._usage
        self._model_version = chunk.model_version or self._model_version
        if not chunk.candidates:
            return []
        self._candidates = True
        added: list[Delta] = []
        for candidate in chunk.candidates:
            choice = _index(candidate)
            answer = self._answers.setdefault(choice, _Answer())
            text, calls = answer.add(
                candidate, top=self._top, ids=self._ids, provider=self._provider
            )
            if text:
                added.append(text if choice == 0 else ChoiceText(choice, text))
            first = len(answer.calls) - len(calls)
            for number, call in enumerate(calls, start=first):
                added.append(
                    ToolCallDelta(
                        index=number,
                        id=call["id"],
                        name=call["function"]["name"],
                        arguments=call["function"]["arguments"],
                        choice=choice,
                    )
                )
        return added

    def completion(self) -> Completion:
        if not self._candidates:
            raise MalformedResponse(f"{self._provider} answered with no candidates")
        answers = _in_order(self._answers, self._provider)
        if any(answer.finish is None for answer in answers):  # cut off, though cleanly
            raise MalformedResponse(f"{self._provider} ended its stream before the answer did")
        return _result(self._request, answers, self._usage, self._model_version)


def _index(candidate: types.Candidate) -> int:
    """The candidate's `index`: Google's JSON leaves out a field at its default, so candidate 0
    may come without one."""
    return candidate.index or 0


def _in_order(answers: dict[int, _Answer], provider: str) -> list[_Answer]:
    """The candidates by index, which must be 0, 1, 2, ... with none missing: their places
    are the choices' indexes, streamed and whole."""
    if sorted(answers) != list(range(len(answers))):
        raise MalformedResponse(
            f"{provider} answered with candidates {', '.join(map(str, sorted(answers)))}"
        )
    return [answers[index] for index in range(len(answers))]


def _token_logprobs(result: types.LogprobsResult, top: int) -> list[dict[str, Any]]:
    """Gemini's `logprobsResult` as the items of OpenAI's `logprobs.content`: one per chosen
    token (`chosenCandidates`), with at most `top` of the alternatives Gemini gives for the
    same step (`topCandidates`, at the same position). `tokenId` has no OpenAI place."""
    tops = result.top_candidates or []
    steps = []
    for step, chosen in enumerate(result.chosen_candidates or []):
        alternatives = (tops[step].candidates or []) if step < len(tops) else []
        steps.append(
            _token_logprob(chosen)
            | {"top_logprobs": [_token_logprob(other) for other in alternatives[:top]]}
        )
    return steps


def _token_logprob(token: types.LogprobsResultCandidate) -> dict[str, Any]:
    """A token as OpenAI gives one: its text, log probability and UTF-8 bytes. A missing
    logProbability is 0.0: Google's JSON leaves out a field at its default."""
    text = token.token or ""
    return {"token": text, "logprob": token.log_probability or 0.0, "bytes": list(text.encode())}


def _refuse_blocked_prompt(reply: types.GenerateContentResponse, *, provider: str) -> None:
    feedback = reply.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        raise ContentFiltered(
            f"{provider} refused the prompt under its content policy "
            f"({_name(feedback.block_reason).lower()})"
        )


def _finish(candidate: types.Candidate, *, provider: str) -> str | None:
    """The candidate's finish reason as Google names it; a policy's is ContentFiltered."""
    finish = _name(candidate.finish_reason) if candidate.finish_reason else None
    if finish in FILTERED_FINISH_REASONS:
        raise ContentFiltered(
            f"{provider} withheld the answer under its content policy ({finish.lower()})"
        )
    return finish


def _answer_text(candidate: types.Candidate) -> str:
    parts = candidate.content.parts if candidate.content else None
    # Thought summaries are not the answer; they only appear when asked for, but still.
    return "".join(p.text for p in parts or [] if p.text and not p.thought)


def _function_calls(candidate: types.Candidate) -> list[types.FunctionCall]:
    parts = candidate.content.parts if candidate.content else None
    return [p.function_call for p in parts or [] if p.function_call is not None]


def _tool_call(call: types.FunctionCall) -> ToolCall:
    """A Gemini function call as an OpenAI tool call; Google's id if it gave one (newer
    models do), else one of OpenAI's form, made up."""
    return tool_call(call.id or _made_up_id(), call.name or "", arguments_text(call.args))


def _made_up_id() -> str:
    return "call_" + secrets.token_hex(12)


def _unique(call: ToolCall, ids: set[str]) -> ToolCall:
    """The call, with a made-up id if an earlier one of the reply had its id: a client
    answers each call by its id, and the candidates of one reply may each have made the
    same call under the same id."""
    if call["id"] in ids:
        call = tool_call(_made_up_id(), call["function"]["name"], call["function"]["arguments"])
    ids.add(call["id"])
    return call


def _result(
    request: CompletionRequest,
    answers: list[_Answer],
    usage: types.GenerateContentResponseUsageMetadata | None,
    model_version: str | None,
) -> Completion:
    """The Completion of the candidates (the first one's, with the others as its `choices`);
    the usage is the whole call's, every candidate's output included."""
    reasoning = 0
    if usage is not None and usage.prompt_token_count is not None:
        input_tokens = usage.prompt_token_count
        # Thinking tokens are billed as output. Google omits a count that is zero.
        reasoning = usage.thoughts_token_count or 0
        output_tokens = (usage.candidates_token_count or 0) + reasoning
        cached = usage.cached_content_token_count or 0
        reported = True
    else:
        input_tokens = estimate_prompt_tokens(request)
        output_tokens = estimate_tokens(
            "".join(
                answer.text
                + "".join(c["function"]["name"] + c["function"]["arguments"] for c in answer.calls)
                for answer in answers
            )
        )
        cached, reported = 0, False
    first, *others = answers
    return Completion(
        text=first.text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=reported,
        finish_reason=_finish_reason(first),
        upstream_model=model_version or request.model,
        cached_input_tokens=cached,
        tool_calls=tuple(first.calls),
        reasoning_tokens=reasoning,
        logprobs=first.logprobs_object(),
        choices=tuple(
            Choice(
                text=answer.text,
                finish_reason=_finish_reason(answer),
                tool_calls=tuple(answer.calls),
                logprobs=answer.logprobs_object(),
            )
            for answer in others
        ),
    )


def _finish_reason(answer: _Answer) -> str | None:
    """OpenAI's finish reason of the candidate."""
    if answer.finish == "STOP" and answer.calls:
        return "tool_calls"  # Gemini says STOP after function calls
    return FINISH_REASONS.get(answer.finish, answer.finish.lower()) if answer.finish else None


async def _to_contents(
    messages: list[Message], images: ImageFetcher | None
) -> tuple[list[types.Content], types.Content | None]:
    """Our chat messages as Gemini `contents` (see the module's docstring); system messages
    become `systemInstruction`. A message Gemini cannot be given is a `BadRequest`."""
    contents: list[types.Content] = []
    system: list[types.Part] = []
    names: dict[str, str] = {}  # tool call id → function name, from the assistant turns so far
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            system.append(types.Part(text=_text(message, index)))
        elif role == "user":
            parts = await _user_parts(message, images, index)
            contents.append(types.Content(role="user", parts=parts))
        elif role == "assistant":
            contents.append(types.Content(role="model", parts=_model_parts(message, names, index)))
        elif role == "tool":
            part = _tool_result(message, names, index)
            previous = contents[-1] if contents else None
            if index and messages[index - 1]["role"] == "tool" and previous and previous.parts:
                previous.parts.append(part)  # consecutive results: one content
            else:
                contents.append(types.Content(role="user", parts=[part]))
        else:
            raise BadRequest(f"messages[{index}]: Gemini takes no {role!r} turn")
    return contents, types.Content(parts=system) if system else None


async def _user_parts(
    message: Message, images: ImageFetcher | None, index: int
) -> list[types.Part]:
    content = message["content"]
    if not isinstance(content, list):
        return [types.Part(text=content or "")]
    parts: list[types.Part] = []
    for part in content:
        if part["type"] == "text":
            parts.append(types.Part(text=part["text"]))
        elif part["type"] == "image_url":
            mime_type, data = await _image(part["image_url"]["url"], images, index)
            parts.append(types.Part(inline_data=types.Blob(mime_type=mime_type, data=data)))
        else:
            raise BadRequest(f"messages[{index}]: Gemini takes no {part['type']!r} part")
    return parts


async def _image(url: str, images: ImageFetcher | None, index: int) -> tuple[str, bytes]:
    """An image part's media type and bytes: a data: URL decoded, any other fetched."""
    try:
        if url[:5].lower() == "data:":
            return parse_data_url(url)
        if images is None:
            raise BadRequest(
                f"messages[{index}]: images by URL are not available here; send the image "
                "inline, as a data:image/...;base64 URL"
            )
        return await images.fetch(url)
    except InvalidImage as exc:
        raise BadRequest(f"messages[{index}]: {exc}") from None


def _text(message: Message, index: int) -> str:
    """The text of a turn that can only hold text (all but a user's)."""
    content = message["content"]
    if isinstance(content, list) and any(part["type"] != "text" for part in content):
        raise BadRequest(f"messages[{index}]: a {message['role']} turn can only hold text parts")
    return message_text({"role": message["role"], "content": content})


def _model_parts(message: Message, names: dict[str, str], index: int) -> list[types.Part]:
    """An assistant turn: its text, then a `functionCall` part per tool call."""
    text = _text(message, index)
    calls = message.get("tool_calls") or []
    parts = [types.Part(text=text)] if text or not calls else []
    for call in calls:
        function = call["function"]
        args = arguments_object(call)
        if args is None:
            raise BadRequest(
                f"messages[{index}]: the arguments of tool call {call['id']!r} are not a JSON "
                "object"
            )
        names[call["id"]] = function["name"]
        parts.append(
            types.Part(
                function_call=types.FunctionCall(id=call["id"], name=function["name"], args=args)
            )
        )
    return parts


def _tool_result(message: Message, names: dict[str, str], index: int) -> types.Part:
    """A tool turn as a `functionResponse` part, named after the call it answers."""
    call_id = message.get("tool_call_id")
    name = names.get(call_id) if call_id is not None else None
    if call_id is None or name is None:
        raise BadRequest(
            f"messages[{index}]: tool_call_id {call_id!r} answers no tool call of an earlier "
            "assistant turn"
        )
    return types.Part(
        function_response=types.FunctionResponse(
            id=call_id, name=name, response={"result": _text(message, index)}
        )
    )


def _milliseconds(seconds: float) -> int:
    """The SDK's `HttpOptions.timeout` is whole milliseconds."""
    return max(1, math.ceil(seconds * 1000))


def _name(value: Any) -> str:
    """An SDK enum member, or the raw string of a value newer than this SDK."""
    return str(getattr(value, "value", value))


def map_gemini_error(exc: BaseException, *, provider: str) -> ProviderError | None:
    """Translate what the SDK or its transport raised into our error tree; None for what is
    not the upstream's doing (a bug here), which the caller re-raises. Messages never hold
    the API key: they are Google's error message or written here."""
    if isinstance(exc, errors.APIError):
        return _map_status(exc, provider=provider)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectionFailed(f"could not connect to {provider} in time")
    if isinstance(exc, TimeoutError):  # aiohttp's total deadline and socket read timeout
        return ProviderTimeout(f"{provider} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectionFailed(f"could not connect to {provider}")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return ConnectionFailed(f"the connection to {provider} was lost before its answer")
    if isinstance(exc, aiohttp.ClientError):
        return ConnectionFailed(f"could not reach {provider} ({type(exc).__name__})")
    if isinstance(exc, errors.UnknownApiResponseError | json.JSONDecodeError):
        return MalformedResponse(f"{provider} sent a response that is not JSON")
    if isinstance(exc, pydantic.ValidationError):
        return MalformedResponse(f"{provider} sent a response of an unexpected shape")
    return None


def _map_status(exc: errors.APIError, *, provider: str) -> ProviderError:
    status = exc.code
    vendor = str(exc.message or exc.status or f"HTTP {status}")[:500]
    message = f"{provider}: {vendor}"
    reasons = {d.get("reason") for d in _details(exc)}
    # A wrong key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID from Google.
    if status in (401, 403) or "API_KEY_INVALID" in reasons:
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({vendor})", status=status
        )
    if status == 429:
        return RateLimited(message, status=status, retry_after=_retry_after(exc))
    if status >= 500:
        return Unavailable(message, status=status, retry_after=_retry_after(exc))
    if status == 408:
        return ProviderTimeout(message, status=status)
    if CONTEXT_LENGTH.search(vendor):
        return ContextLengthExceeded(message, status=status)
    return BadRequest(message, status=status)


def _details(exc: errors.APIError) -> list[dict[str, Any]]:
    """The `error.details` list of Google's error body (google.rpc status details)."""
    body = exc.details
    inner = body.get("error", body) if isinstance(body, dict) else None
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_after(exc: errors.APIError) -> float | None:
    """Retry-After if sent, else the RetryInfo detail ("7s") Google usually sends on 429."""
    headers = getattr(exc.response, "headers", None)
    header = headers.get("retry-after") if headers is not None else None
    if (seconds := retry_after_seconds(header)) is not None:
        return seconds
    for detail in _details(exc):
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            return retry_after_seconds(delay.removesuffix("s"))
    return None
