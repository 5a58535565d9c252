"""/v1/chat/completions and /v1/models on top of the prompt records (`ChatService`).

A chat completion is a prompt like any other (`prompt_type` `chat`, its messages stored in
`parameters["messages"]`, `prompt_text` the last user message), recorded and claimed before
any provider call, and run through the same executor as every prompt. Only who runs it
differs: the API process that received it, while its client waits (see app/engine/inline.py).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pydantic_core import to_json
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.database import SessionFactory
from app.db.models import NewPrompt, PromptRequest, PromptStatus
from app.engine.events import EventBus
from app.engine.executor import Outcome
from app.engine.idempotency import IdempotencyKeys, IdempotencyRecord, request_fingerprint
from app.engine.inline import InlineRunner
from app.engine.recorder import Recorder
from app.kit.errors import AppError, Conflict, NotFound
from app.providers.base import (
    Choice,
    Completion,
    Delta,
    ProviderError,
    message_text,
)
from app.providers.catalogue import ModelEntry
from app.providers.registry import ModelResolver
from app.services.auth.authenticator import Caller
from app.services.auth.scope import PromptScope
from app.services.chat.errors import UpstreamFailed
from app.services.chat.schemas import (
    UNSUPPORTED_FIELDS,
    ChatCompletionCreate,
    Model,
    ModelList,
)
from app.services.conversation import (
    NamedToolChoice,
    conversation,
    invalid,
    last_user,
    response_format_option,
    tool_options,
    unsupported,
)
from app.services.intake import Ask, Intake
from app.services.limits.governor import policy_headers
from app.services.prompts import live
from app.services.prompts.schemas import PromptDetail

CHAT_PROMPT_TYPE = "chat"
_FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls"})


class PromptCancelled(AppError):
    """The execution was stopped before it answered: its cancellation was requested through
    /ai/prompts/{id}/cancel, or this server is stopping."""

    status_code = 409
    code = "prompt_cancelled"
    title = "Cancelled"


@dataclass(slots=True)
class ChatRun:
    """A chat completion under way in this process: what it answers with comes off `events`
    in order, text deltas (`str`) and tool-call pieces (`ToolCallDelta`), with `n` > 1 the
    other answers' text (`ChoiceText`) too, then its `Outcome`."""

    prompt: NewPrompt | PromptRequest  # (a replay's is read back)
    stream: bool
    include_usage: bool
    task: asyncio.Task[Outcome] | None = None
    events: asyncio.Queue[Delta | None] = field(default_factory=asyncio.Queue)
    replayed: bool = False  # an Idempotency-Key replay: the answer an earlier request got
    # RateLimit-Policy / RateLimit, for a caller with limits (app/services/limits/governor.py)
    headers: dict[str, str] | None = None

    @property
    def legacy_functions(self) -> bool:
        """The request used the legacy `functions`: its answer's call is a `function_call`."""
        return bool(self.prompt.parameters.get("legacy_functions"))

    @property
    def dropped_params(self) -> list[str]:
        """The fields left out for the model asked for (`drop_params`)."""
        dropped: dict[str, list[str]] = self.prompt.parameters.get("dropped_params", {})
        return dropped.get(self.prompt.model, [])

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.prompt.id.hex}"

    @property
    def created(self) -> int:
        return int(self.prompt.created_at.timestamp())

    async def next_event(self) -> Delta | Outcome:
        """The next text delta or tool-call piece, or the outcome once the execution ended
        (its failure is raised as `UpstreamFailed`)."""
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


class ChatService:
    """Starting chat completions: what `POST /v1/chat/completions` (its route and its fast
    path) does. One per process (`Services.chat`)."""

    def __init__(
        self,
        *,
        intake: Intake,
        recorder: Recorder,
        runner: InlineRunner,
        keys: IdempotencyKeys,
        bus: EventBus,
        sessions: SessionFactory,
        replay_wait_seconds: float,
    ) -> None:
        self.intake = intake
        self.recorder = recorder
        self.runner = runner
        self.keys = keys
        self.bus = bus
        self.sessions = sessions
        self.replay_wait_seconds = replay_wait_seconds

    async def start(
        self, caller: Caller, data: ChatCompletionCreate, *, idempotency_key: str | None = None
    ) -> ChatRun:
        """Check the chat (the intake raises whatever is wrong with it before anything is
        written), record it as a prompt already claimed by this process (with its
        idempotency key, in the same transaction) and start executing it.

        With an `idempotency_key`, a retry of the same body gets the first call's answer
        (`replayed`; waited for, up to `replay_wait_seconds`, if it is still running), and
        no second prompt or provider call."""
        user_id = caller.user.id
        ask = ask_for(caller, data)
        if idempotency_key is None:
            return await self._start(ask, data, None)

        async def start(record: IdempotencyRecord | None) -> ChatRun | Replay:
            return await self._start(ask, data, record)

        async def replay(_: AsyncSession, prompt_id: uuid.UUID) -> Replay:
            return Replay(prompt_id)

        fingerprint = request_fingerprint(
            "v1.chat.completions", data.model_dump(mode="json", exclude_none=True)
        )
        first, _ = await self.keys.run_once(
            user_id=user_id,
            key=idempotency_key,
            fingerprint=fingerprint,
            create=start,
            replay=replay,
        )
        if isinstance(first, Replay):
            run = await replay_chat(
                self.bus,
                self.sessions,
                user_id=user_id,
                replay=first,
                data=data,
                wait_seconds=self.replay_wait_seconds,
            )
            if caller.accounts:  # (not admitted again: the caller's policies alone)
                run.headers = policy_headers(caller.accounts)
            return run
        return first

    async def _start(
        self, ask: Ask, data: ChatCompletionCreate, idempotency: IdempotencyRecord | None
    ) -> ChatRun:
        prompt = await self.intake.admit(ask)
        try:
            claim = await self.recorder.create_claimed(
                prompt, lease_seconds=self.runner.lease_seconds, idempotency=idempotency
            )
        except BaseException:
            self.intake.undo(prompt)
            raise
        options = data.stream_options
        run = ChatRun(
            prompt,
            stream=bool(data.stream),
            include_usage=bool(options and options.include_usage),
        )
        if ask.grant is not None:
            run.headers = ask.grant.headers

        async def on_delta(piece: Delta) -> None:
            run.events.put_nowait(piece)

        run.task = self.runner.run(claim, on_delta=on_delta if run.stream else None)
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
        bus,
        sessions,
        scope=PromptScope.own(user_id),
        prompt_id=replay.prompt_id,
        seconds=wait_seconds,
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
        prompt,
        stream=bool(data.stream),
        include_usage=bool(options and options.include_usage),
        replayed=True,
    )
    run.task = asyncio.create_task(_recorded_outcome(detail))
    await asyncio.gather(run.task, return_exceptions=True)
    if run.stream and detail.response is not None and detail.response.response_text:
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
    if detail.error is not None:  # (failed, maybe with the answer that was not valid)
        error_class = _ERRORS_BY_CODE.get(detail.error.code, ProviderError)
        return Outcome(None, error_class(detail.error.message), error_message=detail.error.message)
    answer = detail.response
    assert answer is not None
    completion = Completion(
        text=answer.response_text,
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        usage_reported=not answer.usage_estimated,
        finish_reason=answer.finish_reason,
        upstream_model=answer.upstream_model,
        cached_input_tokens=answer.cached_input_tokens or 0,
        tool_calls=tuple(answer.tool_calls or ()),  # type: ignore[arg-type]
        refusal=answer.refusal,
        reasoning_tokens=answer.reasoning_tokens or 0,
        choices=tuple(
            Choice(
                text=choice.text,
                finish_reason=choice.finish_reason,
                tool_calls=tuple(choice.tool_calls or ()),  # type: ignore[arg-type]
                refusal=choice.refusal,
            )
            for choice in answer.choices or ()
        ),
    )
    return Outcome(completion, None, first_token_ms=answer.first_token_ms)


def _subclasses(cls: type[ProviderError]) -> list[type[ProviderError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]


_ERRORS_BY_CODE = {cls.code: cls for cls in reversed(_subclasses(ProviderError))}


def ask_for(caller: Caller, data: ChatCompletionCreate) -> Ask:
    """What a chat request asks for, for the intake, after refusing what cannot be honoured
    by any provider: its prompt type is `chat` unless it names another, and a defined type's
    template wraps its last user message. The conversation and the options are put in the
    gateway's own (OpenAI) shape, checked (tool schemas, tool turns, images); whether the
    chosen provider can honour them is the intake's question. The key's `drop_params` applies
    to a request that does not say."""
    refuse_unsupported(data)
    messages = conversation(data.messages)
    last = last_user(messages)
    options = chat_options(data)
    return Ask(
        user_id=caller.user.id,
        api_key_id=caller.key_id,
        team_id=caller.team_id,
        allowed_models=caller.allowed_models,
        accounts=caller.accounts,
        model=data.model,
        prompt_type=data.prompt_type or CHAT_PROMPT_TYPE,
        text=message_text(messages[last]),
        variables=data.variables,
        temperature=data.temperature,
        max_tokens=data.max_completion_tokens or data.max_tokens,
        metadata=dict(data.metadata or {}),
        messages=messages,
        last=last,
        passthrough=_passthrough(data),
        options=options,
        drop_params=data.drop_params if data.drop_params is not None else caller.drop_params,
        queued=False,
    )


def _passthrough(data: ChatCompletionCreate) -> dict[str, Any]:
    """Stored with the parameters: whether it was streamed, and whether it used the legacy
    `functions` (its answer then has a `function_call` rather than `tool_calls`)."""
    passthrough: dict[str, Any] = {}
    if data.stream:
        passthrough["stream"] = True
    if data.functions:
        passthrough["legacy_functions"] = True
    return passthrough


def refuse_unsupported(data: ChatCompletionCreate) -> None:
    """Refuse, by name, the OpenAI features that would change the answer and that no provider
    here carries; tolerate the rest (see schemas)."""
    extra = data.model_extra or {}
    for name, (harmless, feature) in UNSUPPORTED_FIELDS.items():
        value = extra.get(name)
        if value is not None and not harmless(value):
            unsupported(name, f"'{name}' is not supported here ({feature}).")


# The request's fields that `chat_options` reads.
_OPTION_FIELDS = (
    "tools", "functions", "tool_choice", "function_call", "parallel_tool_calls",
    "response_format", "stop", "top_p", "seed", "frequency_penalty", "presence_penalty",
    "logprobs", "top_logprobs", "logit_bias", "reasoning_effort", "user", "n",
)  # fmt: skip


def chat_options(data: ChatCompletionCreate) -> dict[str, Any]:
    """The request's fields of the translation matrix (app/providers/fidelity.py), in
    OpenAI's shape, checked; the legacy `functions`/`function_call` as `tools`/`tool_choice`.
    Fields left at their default are left out: they ask for nothing."""
    fields = data.__dict__
    if all(fields[name] is None for name in _OPTION_FIELDS):  # (most requests: no garbage)
        return {}
    if data.functions is not None and data.tools is not None:
        invalid("functions", "Give tools or the legacy functions, not both.", "invalid_tools")
    choice: Any = data.tool_choice
    if data.function_call is not None:  # the legacy form
        name = getattr(data.function_call, "name", None)
        choice = data.function_call if name is None else NamedToolChoice.for_function(name)
    options: dict[str, Any] = {}
    if data.tools is not None or data.functions is not None or choice is not None:
        options = tool_options(
            data.tools if data.tools is not None else data.functions,
            choice,
            data.parallel_tool_calls,
            where="tools" if data.tools is not None else "functions",
        )
    if data.response_format is not None:
        options.update(response_format_option(data.response_format))
    stop = [data.stop] if isinstance(data.stop, str) else data.stop
    if stop:
        if len(stop) > 4:
            invalid("stop", "At most 4 stop sequences.", "invalid_stop")
        options["stop"] = stop
    for name in ("top_p", "seed", "frequency_penalty", "presence_penalty", "reasoning_effort"):
        value = getattr(data, name)
        if value is not None:
            options[name] = value
    if data.logprobs:
        options["logprobs"] = True
    if data.top_logprobs:
        if not data.logprobs:
            invalid("top_logprobs", "top_logprobs needs logprobs: true.", "invalid_logprobs")
        options["top_logprobs"] = data.top_logprobs
    if data.logit_bias:
        options["logit_bias"] = data.logit_bias
    if data.user:
        options["user"] = data.user
    if data.n is not None and data.n > 1:
        options["n"] = data.n
    return options


def completion_json(run: ChatRun, outcome: Outcome) -> bytes:
    """The `chat.completion` (schemas.ChatCompletion) of a finished run, as JSON. Built as
    plain data and encoded once: pydantic models cost every /v1 answer about 6 µs more (the
    nested usage details most)."""
    completion = outcome.completion
    assert completion is not None
    choices = [_choice_json(run, 0, completion)]
    if completion.choices:
        choices += [_choice_json(run, i, c) for i, c in enumerate(completion.choices, 1)]
    return to_json(
        {
            "id": run.completion_id,
            "object": "chat.completion",
            "created": run.created,
            "model": run.prompt.model,
            "choices": choices,
            "usage": usage(completion),
        }
    )


def _choice_json(run: ChatRun, index: int, answer: Completion | Choice) -> dict[str, Any]:
    return {
        "index": index,
        "message": response_message(run, answer),
        "finish_reason": finish_reason(run, answer),
        "logprobs": answer.logprobs if isinstance(answer.logprobs, dict) else None,
    }


def response_message(run: ChatRun, completion: Completion | Choice) -> dict[str, Any]:
    """The assistant's message (schemas.ResponseMessage): its text (None when it only called
    tools or refused), its tool calls (as a legacy `function_call` for a request that used
    `functions`) and its refusal."""
    calls = completion.tool_calls
    text = completion.text
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not (calls or completion.refusal) else None,
        "refusal": completion.refusal,
    }
    if calls:
        if run.legacy_functions:
            message["function_call"] = dict(calls[0]["function"])
        else:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": dict(c["function"])} for c in calls
            ]
    return message


def finish_reason(run: ChatRun, completion: Completion | Choice) -> str:
    """Our adapters already speak OpenAI's vocabulary; anything else reads as `stop`. An
    answer with tool calls ends `tool_calls` (`function_call` for the legacy `functions`)."""
    if completion.tool_calls:
        return "function_call" if run.legacy_functions else "tool_calls"
    reason = completion.finish_reason
    return reason if reason in _FINISH_REASONS and reason != "tool_calls" else "stop"


def usage(completion: Completion) -> dict[str, Any]:
    """OpenAI's `usage` (schemas.Usage), with the cached and reasoning tokens."""
    return {
        "prompt_tokens": completion.input_tokens,
        "completion_tokens": completion.output_tokens,
        "total_tokens": completion.input_tokens + completion.output_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": completion.reasoning_tokens},
    }


def list_models(router: ModelResolver) -> ModelList:
    """The catalogue models whose provider is configured here."""
    created = _catalogue_time(router.catalogue.version)
    return ModelList(data=[_model(e, created) for e in router.available()])


def get_model(router: ModelResolver, model_id: str) -> Model:
    """One model of `list_models` (by its name or an alias)."""
    entry = router.catalogue.get(model_id)
    if entry is None or entry.provider not in router.providers:
        raise NotFound(
            f"The model '{model_id}' does not exist here; GET /v1/models lists those that do.",
            code="model_not_found",
        )
    return _model(entry, _catalogue_time(router.catalogue.version))


def _model(entry: ModelEntry, created: int) -> Model:
    return Model(
        id=entry.name,
        created=created,
        owned_by=entry.provider,
        capabilities=list(entry.capabilities) if entry.capabilities is not None else None,
        context_window=entry.context_window,
        max_output_tokens=entry.max_output_tokens,
    )


def _catalogue_time(version: str) -> int:
    try:
        day = date.fromisoformat(version)
    except ValueError:
        return 0
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
