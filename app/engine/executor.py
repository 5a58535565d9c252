"""Executes one claimed prompt: the retry loop, the fallbacks and the circuit breaker, with
every provider call recorded as one attempt.

For each route in order (the prompt's model, then its fallbacks): call; on a retryable failure
wait as the RetryPolicy says and call again, up to RETRY_MAX_RETRIES; once a route's retries
are spent (or its provider's circuit is open, or it asks to wait longer than the cap), move to
the next route. A failure that is the request's own (bad request, context too long, filtered)
fails the prompt at once: another model would most likely refuse it too, and every extra call
costs. An authentication failure also moves on, since it says nothing about the request.

One loop serves two callers: the background runners (`execute_prompt`, which only records)
and a client that waits for the answer (`run_prompt`, used by /v1/chat/completions, which
also returns the `Outcome` and can stream). A streamed execution hands each piece of text to
`on_delta` as it arrives; it retries and falls back only while nothing has been handed on, as
text already shown to a client cannot be taken back: a failure after that ends the prompt.

An embedding prompt (`POST /v1/embeddings`, see app/engine/embedding_prompts.py) runs through
the same loop, simplified: one route (its model: another model's vectors could not be compared
with the client's others, so there are no fallbacks), retried as above, each call an attempt,
never streamed; its `Outcome` carries the vectors.

When the prompt's task is cancelled (its cancellation was requested, its client went away, or
the runner is stopping), the provider call in flight is abandoned (a stream is closed, which
closes its upstream connection) and recorded as an attempt. Writes of what already happened
(an answer, a failed call) are carried to their end before the cancellation goes through: the
call they record happened, and may be billed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from app.db.base import utcnow
from app.engine.embedding_prompts import inputs_of, is_embedding, summary
from app.engine.events import EventBus, PromptEvent
from app.engine.recorder import Recorder
from app.engine.records import AttemptRecord, Claim, ResponseRecord
from app.kit.errors import InvalidInput
from app.kit.jsonschemas import violation
from app.kit.text import scrub
from app.providers import fidelity
from app.providers.base import (
    NO_OPTIONS,
    AdapterFailed,
    AuthenticationFailed,
    BadRequest,
    Choice,
    ChoiceText,
    Completion,
    CompletionRequest,
    Delta,
    Embedder,
    EmbeddingRequest,
    Embeddings,
    MalformedResponse,
    Message,
    Provider,
    ProviderError,
    ProviderNotConfigured,
    ToolCall,
    ToolCallDelta,
    estimate_prompt_tokens,
    estimate_tokens,
    tool_call,
)
from app.providers.catalogue import Price
from app.providers.registry import ModelResolver, Route
from app.providers.resilience import CircuitBreaker, CircuitOpen, RetryPolicy

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DeltaSink = Callable[[Delta], Awaitable[None]]
"""Receives each piece of a streamed answer (text, or a piece of a tool call; with `n` > 1 the
other answers' pieces too), in order, as it arrives."""

_OPTION_FIELDS = frozenset(fidelity.OPTION_FIELDS)
_NO_OPTIONS: dict[str, Any] = {}  # (never changed)


@dataclass(frozen=True, slots=True)
class Execution:
    """What executing a prompt needs, built once per process."""

    recorder: Recorder
    router: ModelResolver
    policy: RetryPolicy
    breaker: CircuitBreaker
    bus: EventBus


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execution ended, for a caller that answers a waiting client. Everything in it is
    already recorded (the claim permitting)."""

    completion: Completion | None  # the answer; None when the prompt failed
    error: ProviderError | None  # why it failed; None when it completed
    first_token_ms: int | None = None  # streamed answers: from the call's start to its first text
    error_message: str | None = None  # the failure as recorded (with how many calls were made)
    embeddings: Embeddings | None = None  # an embedding prompt's vectors (`completion` is None)


@dataclass(slots=True)
class _Streamed:
    """A streamed call: where its text goes, and what has been handed on so far."""

    on_delta: DeltaSink
    started: float
    parts: list[str] = field(default_factory=list)  # the text, and tool calls' arguments
    first_at: float | None = None

    def add(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.parts.append(text)

    @property
    def first_token_ms(self) -> int | None:
        return None if self.first_at is None else round((self.first_at - self.started) * 1000)


def build_messages(claim: Claim) -> list[Message]:
    """The conversation to send: a chat prompt's stored `messages` (system, user and assistant
    turns, as /v1/chat/completions received them), else `prompt_text` as the one user turn;
    `system_prompt`, if any, first."""
    messages: list[Message] = []
    system = claim.parameters.get("system_prompt")
    if system:
        messages.append({"role": "system", "content": system})
    stored = claim.parameters.get("messages")
    if stored:
        # (stored in the gateway's shape: providers/base.py Message)
        if stored.__class__ is not list:
            raise TypeError("the prompt's stored messages are not a list of messages")
        for message in stored:
            if message.__class__ is not dict or "role" not in message:
                raise TypeError("the prompt's stored messages are not a list of messages")
        messages.extend(stored)
    else:
        messages.append({"role": "user", "content": claim.prompt_text})
    return messages


def _routes(claim: Claim, router: ModelResolver) -> list[Route]:
    primary = router.route_for(claim.provider, claim.upstream_model, model=claim.model)
    routes = [primary]
    for name in claim.parameters.get("fallbacks", []):
        try:
            routes.append(router.resolve(name))
        except InvalidInput:  # the configuration changed since it was accepted
            logger.warning("fallback %s of prompt %s is no longer available", name, claim.prompt_id)
    return routes


def options_of(claim: Claim) -> dict[str, Any]:
    """The prompt's fields of the translation matrix (tools, response_format, stop, ...),
    stored among its parameters by their OpenAI names."""
    parameters = claim.parameters
    for name in parameters:  # (a few keys; no set made for a plain prompt)
        if name in _OPTION_FIELDS:
            return {name: parameters[name] for name in fidelity.OPTION_FIELDS if name in parameters}
    return _NO_OPTIONS


def _options_for(claim: Claim, route: Route, provider: Provider, options: dict[str, Any]) -> Any:
    """What `provider` is sent of the options: those its column of the matrix forwards or
    translates, less those left out for this model at submission (`drop_params`)."""
    if not options:
        return NO_OPTIONS
    sent = fidelity.sent_options(provider.kind, options)
    for name in claim.parameters.get("dropped_params", {}).get(route.model, ()):
        sent.pop(name, None)
    return sent


async def execute_prompt(claim: Claim, *, execution: Execution) -> None:
    """Execute a prompt a runner claimed; everything that happens is recorded. When someone
    follows its text (`GET /ai/prompts/{id}/events`), the call is streamed and each piece of
    text published as it arrives; otherwise the cheaper non-streamed call is made."""
    bus, prompt_id = execution.bus, claim.prompt_id
    on_delta: DeltaSink | None = None
    if await bus.watched(prompt_id):

        async def on_delta(piece: Delta) -> None:
            if isinstance(piece, str):  # (tool calls and other answers are shown with it)
                await bus.publish([PromptEvent(prompt_id, "delta", text=piece)])

    await run_prompt(claim, execution=execution, on_delta=on_delta)


async def run_prompt(
    claim: Claim,
    *,
    execution: Execution,
    on_delta: DeltaSink | None = None,
    cancelled_outcome: str | None = None,
) -> Outcome:
    """Execute a claimed prompt, record everything, and return how it ended.

    With `on_delta`, each call is streamed and its text handed on as it arrives. A cancelled
    call is recorded with the outcome `cancelled_outcome`; None asks the database: `cancelled`
    if the prompt's cancellation was requested, else `abandoned` (its runner stopped).
    """
    if is_embedding(claim.parameters):
        return await _run_embedding(claim, execution=execution, cancelled_outcome=cancelled_outcome)
    recorder, breaker = execution.recorder, execution.breaker
    calls = 0
    last: ProviderError | None = None
    options = options_of(claim)
    for route in _routes(claim, execution.router):
        provider = execution.router.providers.get(route.provider)
        if provider is None:
            last = ProviderNotConfigured(f"The '{route.provider}' provider is not configured here.")
            continue
        request = CompletionRequest(
            model=route.upstream_model,
            messages=build_messages(claim),
            temperature=claim.parameters.get("temperature"),
            max_tokens=claim.parameters.get("max_tokens"),
            timeout=claim.parameters.get("timeout_seconds") or route.timeout,
            options=_options_for(claim, route, provider, options),
        )
        retry = 0
        while True:
            if not breaker.allow(route.provider):
                wait = breaker.retry_in(route.provider)
                last = CircuitOpen(
                    f"{route.provider} failed repeatedly; calls to it are paused for "
                    f"another {wait:.0f} s."
                )
                break
            calls += 1
            started_at, started = utcnow(), time.perf_counter()
            streamed = _Streamed(on_delta, started) if on_delta is not None else None
            try:
                if streamed is None:
                    completion = await provider.complete(request)
                else:
                    completion = await _stream_call(provider, request, streamed)
            except asyncio.CancelledError:
                # The call is abandoned, but it happened (and may be billed): it is recorded.
                await carried_through(
                    _record_abandoned(
                        recorder, claim, route, started_at, request, streamed, cancelled_outcome
                    )
                )
                raise
            except ProviderError as exc:
                error: ProviderError = exc
            except Exception as exc:
                logger.exception("provider %s raised unexpectedly", route.provider)
                error = AdapterFailed(
                    f"The {route.provider} adapter failed unexpectedly ({type(exc).__name__})."
                )
            else:
                breaker.record_success(route.provider)
                completion = _valid_text(completion)
                first_token_ms = streamed.first_token_ms if streamed else None
                await carried_through(
                    _finish_success(
                        recorder, claim, route, completion, started_at, started, first_token_ms
                    )
                )
                return Outcome(completion, None, first_token_ms)
            breaker.record_failure(route.provider, error)
            last = error
            cut_short = streamed if streamed is not None and streamed.parts else None
            await carried_through(
                recorder.record_attempt(
                    claim,
                    _failed_attempt(
                        route,
                        started_at,
                        "error",
                        error.code,
                        error.status,
                        error.message,
                        # Text came before the failure: it was generated, and is billed.
                        usage=_estimated_usage(route, request, cut_short) if cut_short else None,
                    ),
                )
            )
            if cut_short:
                # Text already reached the client: another call would repeat or contradict it.
                return await carried_through(_finish_failure(recorder, claim, error, calls))
            if not error.retryable and not isinstance(error, AuthenticationFailed):
                return await carried_through(_finish_failure(recorder, claim, error, calls))
            retry += 1
            delay = execution.policy.delay(retry, error)
            if delay is None:
                break  # this route is spent: next fallback
            await asyncio.sleep(delay)
    assert last is not None
    return await carried_through(_finish_failure(recorder, claim, last, calls))


async def _run_embedding(
    claim: Claim, *, execution: Execution, cancelled_outcome: str | None
) -> Outcome:
    """`run_prompt` for an embedding prompt: its one route, retried as a chat's would be
    (the circuit breaker and `RetryPolicy` alike), every call recorded as an attempt."""
    recorder, breaker = execution.recorder, execution.breaker
    route = execution.router.route_for(claim.provider, claim.upstream_model, model=claim.model)
    provider = execution.router.providers.get(route.provider)
    if provider is None:
        error: ProviderError = ProviderNotConfigured(
            f"The '{route.provider}' provider is not configured here."
        )
        return await carried_through(_finish_failure(recorder, claim, error, 0))
    if not isinstance(provider, Embedder):
        error = BadRequest(f"The '{route.provider}' provider has no embeddings API.")
        return await carried_through(_finish_failure(recorder, claim, error, 0))
    parameters = claim.parameters
    request = EmbeddingRequest(
        model=route.upstream_model,
        inputs=inputs_of(claim.prompt_text, parameters),
        dimensions=parameters.get("dimensions"),
        user=parameters.get("user"),
        timeout=parameters.get("timeout_seconds") or route.timeout,
    )
    calls = retry = 0
    while True:
        if not breaker.allow(route.provider):
            wait = breaker.retry_in(route.provider)
            error = CircuitOpen(
                f"{route.provider} failed repeatedly; calls to it are paused for "
                f"another {wait:.0f} s."
            )
            return await carried_through(_finish_failure(recorder, claim, error, calls))
        calls += 1
        started_at, started = utcnow(), time.perf_counter()
        try:
            embeddings = _valid_embeddings(await provider.embed(request), request, route)
        except asyncio.CancelledError:
            await carried_through(
                _record_abandoned(recorder, claim, route, started_at, None, None, cancelled_outcome)
            )
            raise
        except ProviderError as exc:
            error = exc
        except Exception as exc:
            logger.exception("provider %s raised unexpectedly", route.provider)
            error = AdapterFailed(
                f"The {route.provider} adapter failed unexpectedly ({type(exc).__name__})."
            )
        else:
            breaker.record_success(route.provider)
            await carried_through(
                _finish_embedding(recorder, claim, route, embeddings, started_at, started)
            )
            return Outcome(None, None, embeddings=embeddings)
        breaker.record_failure(route.provider, error)
        await carried_through(
            recorder.record_attempt(
                claim,
                _failed_attempt(
                    route, started_at, "error", error.code, error.status, error.message
                ),
            )
        )
        if not error.retryable:
            return await carried_through(_finish_failure(recorder, claim, error, calls))
        retry += 1
        delay = execution.policy.delay(retry, error)
        if delay is None:
            return await carried_through(_finish_failure(recorder, claim, error, calls))
        await asyncio.sleep(delay)


def _valid_embeddings(
    embeddings: Embeddings, request: EmbeddingRequest, route: Route
) -> Embeddings:
    """One vector per input, all of one size, and the size asked for (a compatible server
    may ignore `dimensions`: its vectors are then refused, not passed on as if honoured)."""
    provider = route.provider
    if len(embeddings.vectors) != len(request.inputs):
        raise MalformedResponse(
            f"{provider} answered with {len(embeddings.vectors)} embeddings for "
            f"{len(request.inputs)} inputs"
        )
    sizes = {len(vector) for vector in embeddings.vectors}
    if len(sizes) != 1 or 0 in sizes or sizes.pop() % 4:
        raise MalformedResponse(f"{provider} answered with embeddings of different sizes")
    if request.dimensions is not None and embeddings.dimensions != request.dimensions:
        raise BadRequest(
            f"{provider} answered with {embeddings.dimensions} dimensions, not the "
            f"{request.dimensions} asked for: model {route.model} cannot shorten its vectors"
        )
    return embeddings


async def _stream_call(
    provider: Provider, request: CompletionRequest, streamed: _Streamed
) -> Completion:
    """One streamed call: hand each delta on, return the final `Completion`. The stream is
    always closed on the way out, so an abandoned call closes its upstream connection."""
    iterator = provider.stream(request)
    try:
        async for item in iterator:
            if isinstance(item, Completion):
                return item
            if isinstance(item, ToolCallDelta):
                item = dataclasses.replace(item, arguments=scrub(item.arguments))
                streamed.add(item.arguments or item.name or "")
                await streamed.on_delta(item)
            elif isinstance(item, ChoiceText):
                item = ChoiceText(item.choice, scrub(item.text))
                streamed.add(item.text)
                await streamed.on_delta(item)
            elif item:
                item = scrub(item)
                streamed.add(item)
                await streamed.on_delta(item)
        raise MalformedResponse(f"The {provider.name} stream ended without its final answer.")
    finally:
        await _aclose(iterator)


def _valid_text(completion: Completion) -> Completion:
    """The answer with any lone surrogate replaced (app/kit/text.py): an upstream's JSON can spell
    one, and then neither the database nor an answer's JSON could encode the text."""
    text = scrub(completion.text)
    if completion.tool_calls or completion.choices:
        return dataclasses.replace(
            completion,
            text=text,
            tool_calls=_valid_calls(completion.tool_calls),
            choices=tuple(
                dataclasses.replace(c, text=scrub(c.text), tool_calls=_valid_calls(c.tool_calls))
                for c in completion.choices
            ),
        )
    return completion if text is completion.text else dataclasses.replace(completion, text=text)


def _valid_calls(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    return tuple(
        tool_call(
            scrub(call["id"]), scrub(call["function"]["name"]), scrub(call["function"]["arguments"])
        )
        for call in calls
    )


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def carried_through(step: Coroutine[Any, Any, _T]) -> _T:
    """Run a recording step to its end even if the task is cancelled meanwhile, then let the
    cancellation through (the runner then ends the prompt, or hands it back)."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise  # the step itself was cancelled
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


@dataclass(frozen=True, slots=True)
class _Usage:
    """Estimated token counts of a call that ended before the provider reported any."""

    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


def _estimated_usage(route: Route, request: CompletionRequest, streamed: _Streamed) -> _Usage:
    """A streamed call cut short read the prompt and generated the text received so far (and
    the provider bills both), but never reported its usage: estimate it."""
    input_tokens = estimate_prompt_tokens(request)
    output_tokens = estimate_tokens("".join(streamed.parts))
    return _Usage(input_tokens, output_tokens, _cost(route.price, input_tokens, output_tokens))


def _cost(price: Price | None, input_tokens: int, output_tokens: int, cached: int = 0) -> Decimal:
    # A model outside the catalogue has no price: its cost is recorded as 0, and the missing
    # catalogue version says why.
    return price.cost(input_tokens, output_tokens, cached) if price else Decimal(0)


async def _record_abandoned(
    recorder: Recorder,
    claim: Claim,
    route: Route,
    started_at: datetime,
    request: CompletionRequest | None,  # (None: an embedding call, never streamed)
    streamed: _Streamed | None,
    outcome: str | None,
) -> None:
    if outcome is None:
        cancelled = await recorder.cancel_requested([claim.prompt_id])
        outcome = "cancelled" if cancelled else "abandoned"
    if outcome == "cancelled":
        message = "The call was abandoned: the prompt was cancelled."
    else:
        message = "The call was abandoned when its runner stopped."
    # A stream had the prompt read, and maybe some text generated: estimate what it cost.
    usage = (
        _estimated_usage(route, request, streamed)
        if streamed is not None and request is not None
        else None
    )
    await recorder.record_attempt(
        claim, _failed_attempt(route, started_at, outcome, outcome, None, message, usage=usage)
    )


def _failed_attempt(
    route: Route,
    started_at: datetime,
    outcome: str,
    code: str,
    status: int | None,
    message: str,
    *,
    usage: _Usage | None = None,
) -> AttemptRecord:
    return AttemptRecord(
        provider=route.provider,
        model=route.upstream_model,
        started_at=started_at,
        ended_at=utcnow(),
        outcome=outcome,
        http_status=status,
        error_code=code,
        error_message=scrub(message),
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        usage_estimated=usage is not None,
        cost_usd=usage.cost_usd if usage else None,
        catalogue_version=route.price.version if route.price else None,
    )


async def _finish_failure(
    recorder: Recorder, claim: Claim, error: ProviderError, calls: int
) -> Outcome:
    message = scrub(error.message)
    if calls > 1:
        message = f"{message} (after {calls} provider calls)"
    await recorder.finish(claim, attempt=None, error_code=error.code, error_message=message)
    return Outcome(None, error, error_message=message)


async def _finish_success(
    recorder: Recorder,
    claim: Claim,
    route: Route,
    completion: Completion,
    started_at: datetime,
    started: float,
    first_token_ms: int | None,
) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000)
    output_json, problem = structured_output(claim, completion)
    price = route.price
    cost = _cost(
        price, completion.input_tokens, completion.output_tokens, completion.cached_input_tokens
    )
    estimated = not completion.usage_reported
    version = price.version if price else None
    await recorder.finish(
        claim,
        attempt=_success_attempt(
            route,
            started_at,
            cost,
            estimated,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_input_tokens=completion.cached_input_tokens,
            reasoning_tokens=completion.reasoning_tokens,
        ),
        response=ResponseRecord(
            response_text=completion.text,
            duration_ms=duration_ms,
            provider=route.provider,
            upstream_model=completion.upstream_model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            usage_estimated=estimated,
            cost_usd=cost,
            finish_reason=completion.finish_reason,
            catalogue_version=version,
            time_to_first_token_ms=first_token_ms,
            cached_input_tokens=completion.cached_input_tokens,
            reasoning_tokens=completion.reasoning_tokens,
            tool_calls=[dict(call) for call in completion.tool_calls]
            if completion.tool_calls
            else None,
            refusal=completion.refusal,
            output_json=output_json,
            choices=[choice_record(c) for c in completion.choices] if completion.choices else None,
        ),
        error_code="invalid_structured_output" if problem else None,
        error_message=problem,
    )


def _success_attempt(
    route: Route,
    started_at: datetime,
    cost: Decimal,
    estimated: bool,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> AttemptRecord:
    """The attempt that answered (a chat's or an embedding's), as billed."""
    return AttemptRecord(
        provider=route.provider,
        model=route.upstream_model,
        started_at=started_at,
        ended_at=utcnow(),
        outcome="success",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        reasoning_tokens=reasoning_tokens,
        usage_estimated=estimated,
        cost_usd=cost,
        catalogue_version=route.price.version if route.price else None,
    )


def choice_record(choice: Choice) -> dict[str, Any]:
    """One more answer (`n` > 1) as the response keeps it (`prompt_responses.choices`)."""
    return {
        "text": choice.text,
        "finish_reason": choice.finish_reason,
        "tool_calls": [dict(call) for call in choice.tool_calls] or None,
        "refusal": choice.refusal,
    }


def structured_output(claim: Claim, completion: Completion) -> tuple[Any, str | None]:
    """A structured-output prompt's answer parsed, and checked against its schema: (the
    value, None), or (None, what is wrong). Other prompts, and an answer that calls tools
    instead, have none: (None, None). Only /ai/prompts asks for this (`structured_output`):
    /v1 hands the text to its client as OpenAI does."""
    if not claim.parameters.get("structured_output") or completion.tool_calls:
        return None, None
    try:
        value = json.loads(completion.text)
    except ValueError:
        return None, "The answer is not valid JSON; its text is kept in the response."
    spec = claim.parameters.get("response_format", {}).get("json_schema")
    if spec is not None and (why := violation(spec["schema"], value)) is not None:
        return None, f"The answer does not match the schema '{spec['name']}': {why}."
    return value, None


async def _finish_embedding(
    recorder: Recorder,
    claim: Claim,
    route: Route,
    embeddings: Embeddings,
    started_at: datetime,
    started: float,
) -> None:
    """The call's attempt, the prompt's response (a summary, not the vectors) and its status,
    in one transaction, as for an answer; input tokens only."""
    duration_ms = round((time.perf_counter() - started) * 1000)
    price = route.price
    cost = _cost(price, embeddings.input_tokens, 0)
    estimated = not embeddings.usage_reported
    version = price.version if price else None
    await recorder.finish(
        claim,
        attempt=_success_attempt(
            route,
            started_at,
            cost,
            estimated,
            input_tokens=embeddings.input_tokens,
            output_tokens=0,
        ),
        response=ResponseRecord(
            response_text=summary(len(embeddings.vectors), embeddings.dimensions),
            duration_ms=duration_ms,
            provider=route.provider,
            upstream_model=scrub(embeddings.upstream_model),
            input_tokens=embeddings.input_tokens,
            output_tokens=0,
            usage_estimated=estimated,
            cost_usd=cost,
            finish_reason=None,
            catalogue_version=version,
        ),
    )
