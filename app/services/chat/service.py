"""/v1/chat/completions and /v1/models on top of the prompt records. Plain async functions.

A chat completion is a prompt like any other (`prompt_type` `chat`, its messages stored in
`parameters["messages"]`, `prompt_text` the last user message), recorded and claimed before
any provider call, and run through the same executor as every prompt. Only who runs it
differs: the API process that received it, while its client waits (see `runner.py`).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, NoReturn

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.db.models import NewPrompt, PromptRequest, PromptStatus
from app.engine.events import EventBus
from app.engine.executor import Outcome
from app.engine.idempotency import IdempotencyRecord
from app.engine.inline import InlineRunner
from app.engine.recorder import Recorder
from app.kit.errors import AppError, Conflict, InvalidInput, NotFound
from app.providers.base import Completion, Message, ProviderError
from app.providers.registry import ModelRouter
from app.services.chat.errors import UpstreamFailed
from app.services.chat.schemas import (
    UNSUPPORTED_FIELDS,
    ChatCompletion,
    ChatCompletionCreate,
    ChatMessage,
    Choice,
    Model,
    ModelList,
    ResponseMessage,
    Usage,
)
from app.services.prompt_types.cache import PromptTypeCache
from app.services.prompt_types.policy import apply_to_chat
from app.services.prompts import live
from app.services.prompts.schemas import PromptDetail
from app.services.prompts.service import check_parameters

CHAT_PROMPT_TYPE = "chat"
_FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls"})
_ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system turn
    "user": "user",
    "assistant": "assistant",
}


class PromptCancelled(AppError):
    """The execution was stopped before it answered: its cancellation was requested through
    /ai/prompts/{id}/cancel, or this server is stopping."""

    status_code = 409
    code = "prompt_cancelled"
    title = "Cancelled"


@dataclass(slots=True)
class ChatRun:
    """A chat completion under way in this process: what it answers with comes off `events`
    in order, text deltas (`str`) and then its `Outcome`."""

    prompt: NewPrompt | PromptRequest  # (a replay's is read back)
    stream: bool
    include_usage: bool
    task: asyncio.Task[Outcome] | None = None
    events: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.prompt.id.hex}"

    @property
    def created(self) -> int:
        return int(self.prompt.created_at.timestamp())

    async def next_event(self) -> str | Outcome:
        """The next text delta, or the outcome once the execution ended (its failure is
        raised as `UpstreamFailed`)."""
        item = await self.events.get()
        if item is not None:
            return item
        assert self.task is not None
        if self.task.cancelled():
            raise PromptCancelled(
                f"Prompt {self.prompt.id} was cancelled before it answered (its cancellation "
                "was requested, or the server is stopping)."
            )
        outcome = self.task.result()
        if outcome.error is not None:
            raise UpstreamFailed(outcome.error, message=outcome.error_message)
        return outcome

    async def cancel(self) -> None:
        """The client went away: abandon the call and wait until that is recorded."""
        if self.task is None:
            return
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def start_chat(
    recorder: Recorder,
    runner: InlineRunner,
    *,
    user_id: uuid.UUID,
    data: ChatCompletionCreate,
    router: ModelRouter,
    max_prompt_chars: int,
    prompt_types: PromptTypeCache,
    idempotency: IdempotencyRecord | None = None,
) -> ChatRun:
    """Check the chat, record it as a prompt already claimed by this process (with its
    idempotency key, in the same transaction) and start executing it."""
    prompt = await prepare_chat(
        user_id=user_id,
        data=data,
        router=router,
        max_prompt_chars=max_prompt_chars,
        prompt_types=prompt_types,
    )
    return await run_chat(recorder, runner, prompt=prompt, data=data, idempotency=idempotency)


async def run_chat(
    recorder: Recorder,
    runner: InlineRunner,
    *,
    prompt: NewPrompt,
    data: ChatCompletionCreate,
    idempotency: IdempotencyRecord | None = None,
) -> ChatRun:
    """Record a checked chat (`prepare_chat`) as claimed by this process and start it."""
    claim = await recorder.create_claimed(
        prompt, lease_seconds=runner.lease_seconds, idempotency=idempotency
    )
    options = data.stream_options
    run = ChatRun(
        prompt,
        stream=bool(data.stream),
        include_usage=bool(options and options.include_usage),
    )

    async def on_delta(text: str) -> None:
        run.events.put_nowait(text)

    run.task = runner.run(claim, on_delta=on_delta if run.stream else None)
    run.task.add_done_callback(lambda _: run.events.put_nowait(None))
    return run


@dataclass(frozen=True, slots=True)
class Replay:
    """A retry with the `Idempotency-Key` of an earlier chat: answer with what it created."""

    prompt_id: uuid.UUID


async def replay_chat(
    bus: EventBus,
    sessions: SessionFactory,
    *,
    user_id: uuid.UUID,
    replay: Replay,
    data: ChatCompletionCreate,
    wait_seconds: float,
) -> ChatRun:
    """The earlier chat's answer, as a finished `ChatRun` that the usual responses send (one
    chunk of text when streamed). A chat still running is waited for, up to `wait_seconds`;
    then it is a 409 `idempotency_key_in_flight`. Nothing is called or recorded again."""
    detail = await live.wait_for_final(
        bus, sessions, user_id=user_id, prompt_id=replay.prompt_id, seconds=wait_seconds
    )
    if detail is None:
        raise Conflict(
            "The request with this Idempotency-Key is still running; retry shortly to get "
            "its result.",
            code="idempotency_key_in_flight",
            headers={"Retry-After": "1"},
        )
    async with sessions() as session:
        prompt = await session.get(PromptRequest, replay.prompt_id)
    assert prompt is not None
    options = data.stream_options
    run = ChatRun(
        prompt, stream=bool(data.stream), include_usage=bool(options and options.include_usage)
    )
    run.task = asyncio.create_task(_recorded_outcome(detail))
    await asyncio.gather(run.task, return_exceptions=True)
    if run.stream and detail.response is not None:
        run.events.put_nowait(detail.response.response_text)
    run.events.put_nowait(None)
    return run


async def _recorded_outcome(detail: PromptDetail) -> Outcome:
    """The `Outcome` a finished prompt's record describes (cancelled: the task is cancelled,
    as a live one would be)."""
    if detail.status == PromptStatus.CANCELLED or (
        detail.response is None and detail.error is None
    ):
        raise asyncio.CancelledError
    if detail.response is None:
        assert detail.error is not None
        error_class = _ERRORS_BY_CODE.get(detail.error.code, ProviderError)
        return Outcome(None, error_class(detail.error.message), error_message=detail.error.message)
    answer = detail.response
    completion = Completion(
        text=answer.response_text,
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        usage_reported=not answer.usage_estimated,
        finish_reason=answer.finish_reason,
        upstream_model=answer.upstream_model,
    )
    return Outcome(completion, None, first_token_ms=answer.first_token_ms)


def _subclasses(cls: type[ProviderError]) -> list[type[ProviderError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]


_ERRORS_BY_CODE = {cls.code: cls for cls in reversed(_subclasses(ProviderError))}


async def prepare_chat(
    *,
    user_id: uuid.UUID,
    data: ChatCompletionCreate,
    router: ModelRouter,
    max_prompt_chars: int,
    prompt_types: PromptTypeCache,
) -> NewPrompt:
    """The prompt row for a chat request, after refusing what cannot be honoured, under the
    current policy of its prompt type (`chat` unless it names another), if defined: what
    `prompts.service.prepare_prompt` is to `/ai/prompts/`. Nothing is written."""
    refuse_unsupported(data)
    prompt_type = data.prompt_type or CHAT_PROMPT_TYPE
    policy = await prompt_types.get(prompt_type)
    messages = [_message(i, m) for i, m in enumerate(data.messages)]
    last = next((i for i in reversed(range(len(messages))) if messages[i]["role"] == "user"), None)
    if last is None:
        raise InvalidInput(
            "messages must contain at least one user message.",
            code="invalid_messages",
            extra={"parameter": "messages"},
        )
    applied = apply_to_chat(
        policy,
        prompt_type=prompt_type,
        text=messages[last]["content"],
        variables=data.variables,
        model=data.model,
        max_tokens=data.max_completion_tokens or data.max_tokens,
        router=router,
        max_prompt_chars=max_prompt_chars,
    )
    messages[last] = {"role": "user", "content": applied.text}
    total, limit = sum(len(m["content"]) for m in messages), applied.max_prompt_chars
    if total > limit:
        whose = f"prompt type '{prompt_type}'" if limit < max_prompt_chars else "MAX_PROMPT_CHARS"
        raise InvalidInput(
            f"The messages have {total:,} characters; the limit here is {limit:,} ({whose}).",
            code="prompt_too_large",
            extra={"limit": limit, "parameter": "messages"},
        )
    route = router.resolve(data.model)
    fallbacks = router.fallbacks(route, applied.fallbacks)
    max_tokens = applied.max_tokens
    for candidate in (route, *fallbacks):  # the same checks as /ai/prompts
        check_parameters(candidate, router, temperature=data.temperature, max_tokens=max_tokens)
    parameters: dict[str, Any] = {"messages": messages}
    if applied.system_instruction:  # sent before the conversation (executor.build_messages)
        parameters["system_prompt"] = applied.system_instruction
    if data.temperature is not None:
        parameters["temperature"] = data.temperature
    if max_tokens is not None:
        parameters["max_tokens"] = max_tokens
    if applied.timeout_seconds is not None:
        parameters["timeout_seconds"] = applied.timeout_seconds
    if fallbacks:
        parameters["fallbacks"] = [f.model for f in fallbacks]
    if data.user:
        parameters["user"] = data.user
    if data.stream:
        parameters["stream"] = True
    if applied.template_input is not None:
        parameters["template_input"] = applied.template_input
    return NewPrompt(
        id=uuid.uuid4(),
        user_id=user_id,
        model=data.model,
        prompt_type=prompt_type,
        prompt_type_version=applied.version,
        prompt_text=applied.text,
        created_at=utcnow(),
        provider=route.provider,
        upstream_model=route.upstream_model,
        parameters=parameters,
        meta=dict(data.metadata or {}),
    )


def refuse_unsupported(data: ChatCompletionCreate) -> None:
    """Refuse, by name, the OpenAI features that would change the answer and that this
    gateway cannot honour; tolerate the rest (see schemas)."""
    if data.n not in (None, 1):
        _unsupported("n", f"n={data.n}: only one choice per request (n=1) is supported.")
    extra = data.model_extra or {}
    for name, (harmless, feature) in UNSUPPORTED_FIELDS.items():
        value = extra.get(name)
        if value is not None and not harmless(value):
            _unsupported(name, f"'{name}' is not supported here ({feature}).")


def _unsupported(name: str, message: str) -> NoReturn:
    raise InvalidInput(
        f"{message} Supported: model, messages (text), temperature, max_tokens, "
        "max_completion_tokens, stream, stream_options.include_usage, n=1, user, metadata.",
        code="unsupported_parameter",
        extra={"parameter": name},
    )


def _message(index: int, message: ChatMessage) -> Message:
    where = f"messages[{index}]"
    role = _ROLES.get(message.role)
    if role is None:
        _unsupported(
            f"{where}.role", f"{where}: '{message.role}' messages (tools) are not supported."
        )
    if message.model_extra and message.model_extra.get("tool_calls"):
        _unsupported(f"{where}.tool_calls", f"{where}: tool calls are not supported.")
    content = message.content
    if content is None:
        raise InvalidInput(
            f"{where}.content is missing.", code="invalid_messages", extra={"parameter": where}
        )
    if not isinstance(content, str):
        for part in content:
            if part.type != "text" or part.text is None:
                _unsupported(
                    f"{where}.content",
                    f"{where}: content parts of type '{part.type}' are not supported (text only).",
                )
        content = "\n".join(part.text or "" for part in content)
    return {"role": role, "content": content}


def completion_body(run: ChatRun, outcome: Outcome) -> ChatCompletion:
    completion = outcome.completion
    assert completion is not None
    return ChatCompletion(
        id=run.completion_id,
        created=run.created,
        model=run.prompt.model,
        choices=[
            Choice(
                message=ResponseMessage(content=completion.text),
                finish_reason=finish_reason(completion),
            )
        ],
        usage=usage(completion),
    )


def finish_reason(completion: Completion) -> str:
    """Our adapters already speak OpenAI's vocabulary; anything else reads as `stop`."""
    reason = completion.finish_reason
    return reason if reason in _FINISH_REASONS else "stop"


def usage(completion: Completion) -> Usage:
    return Usage(
        prompt_tokens=completion.input_tokens,
        completion_tokens=completion.output_tokens,
        total_tokens=completion.input_tokens + completion.output_tokens,
    )


def list_models(router: ModelRouter) -> ModelList:
    """The catalogue models whose provider is configured here."""
    created = _catalogue_time(router.catalogue.version)
    return ModelList(
        data=[Model(id=e.name, created=created, owned_by=e.provider) for e in router.available()]
    )


def get_model(router: ModelRouter, model_id: str) -> Model:
    """One model of `list_models` (by its name or an alias)."""
    entry = router.catalogue.get(model_id)
    if entry is None or entry.provider not in router.providers:
        raise NotFound(
            f"The model '{model_id}' does not exist here; GET /v1/models lists those that do.",
            code="model_not_found",
        )
    created = _catalogue_time(router.catalogue.version)
    return Model(id=entry.name, created=created, owned_by=entry.provider)


def _catalogue_time(version: str) -> int:
    try:
        day = date.fromisoformat(version)
    except ValueError:
        return 0
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
