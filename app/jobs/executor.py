"""Executes one claimed prompt: the retry loop, the fallbacks and the circuit breaker, with
every provider call recorded as one attempt.

For each route in order (the prompt's model, then its fallbacks): call; on a retryable failure
wait as the RetryPolicy says and call again, up to RETRY_MAX_RETRIES; once a route's retries
are spent (or its provider's circuit is open, or it asks to wait longer than the cap), move to
the next route. A failure that is the request's own (bad request, context too long, filtered)
fails the prompt at once: another model would most likely refuse it too, and every extra call
costs. An authentication failure also moves on, since it says nothing about the request.

When the prompt's task is cancelled (its cancellation was requested, or the runner is
stopping), the provider call in flight is abandoned and recorded as an attempt. Writes of what
already happened (an answer, a failed call) are carried to their end before the cancellation
goes through: the call they record happened, and may be billed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from app.db.base import utcnow
from app.errors import InvalidInput
from app.prompts.recorder import AttemptRecord, Claim, Recorder, ResponseRecord
from app.providers.base import (
    AdapterFailed,
    AuthenticationFailed,
    Completion,
    CompletionRequest,
    Message,
    ProviderError,
    ProviderNotConfigured,
)
from app.providers.registry import ModelRouter, Route
from app.providers.resilience import CircuitBreaker, CircuitOpen, RetryPolicy

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Execution:
    """What executing a prompt needs, built once per process."""

    recorder: Recorder
    router: ModelRouter
    policy: RetryPolicy
    breaker: CircuitBreaker


def build_messages(claim: Claim) -> list[Message]:
    messages: list[Message] = []
    system = claim.parameters.get("system_prompt")
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": claim.prompt_text})
    return messages


def _routes(claim: Claim, router: ModelRouter) -> list[Route]:
    primary = router.route_for(claim.provider, claim.upstream_model, model=claim.model)
    routes = [primary]
    for name in claim.parameters.get("fallbacks", []):
        try:
            routes.append(router.resolve(name))
        except InvalidInput:  # the configuration changed since it was accepted
            logger.warning("fallback %s of prompt %s is no longer available", name, claim.prompt_id)
    return routes


async def execute_prompt(claim: Claim, *, execution: Execution) -> None:
    recorder, breaker = execution.recorder, execution.breaker
    calls = 0
    last: ProviderError | None = None
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
            try:
                completion = await provider.complete(request)
            except asyncio.CancelledError:
                # The call is abandoned, but it happened (and may be billed): it is recorded.
                await _carried_through(_record_abandoned(recorder, claim, route, started_at))
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
                await _carried_through(
                    _finish_success(recorder, claim, route, completion, started_at, started)
                )
                return
            breaker.record_failure(route.provider, error)
            last = error
            await _carried_through(
                recorder.record_attempt(
                    claim,
                    _failed_attempt(
                        route, started_at, "error", error.code, error.status, error.message
                    ),
                )
            )
            if not error.retryable and not isinstance(error, AuthenticationFailed):
                await _carried_through(_finish_failure(recorder, claim, error, calls))
                return
            retry += 1
            delay = execution.policy.delay(retry, error)
            if delay is None:
                break  # this route is spent: next fallback
            await asyncio.sleep(delay)
    assert last is not None
    await _carried_through(_finish_failure(recorder, claim, last, calls))


async def _carried_through(step: Coroutine[Any, Any, _T]) -> _T:
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


async def _record_abandoned(
    recorder: Recorder, claim: Claim, route: Route, started_at: datetime
) -> None:
    if await recorder.cancel_requested([claim.prompt_id]):
        outcome, message = "cancelled", "The call was abandoned: the prompt was cancelled."
    else:
        outcome, message = "abandoned", "The call was abandoned when its runner stopped."
    await recorder.record_attempt(
        claim, _failed_attempt(route, started_at, outcome, outcome, None, message)
    )


def _failed_attempt(
    route: Route,
    started_at: datetime,
    outcome: str,
    code: str,
    status: int | None,
    message: str,
) -> AttemptRecord:
    return AttemptRecord(
        provider=route.provider,
        model=route.upstream_model,
        started_at=started_at,
        ended_at=utcnow(),
        outcome=outcome,
        http_status=status,
        error_code=code,
        error_message=message,
        catalogue_version=route.price.version if route.price else None,
    )


async def _finish_failure(
    recorder: Recorder, claim: Claim, error: ProviderError, calls: int
) -> None:
    message = error.message
    if calls > 1:
        message = f"{message} (after {calls} provider calls)"
    await recorder.finish(claim, attempt=None, error_code=error.code, error_message=message)


async def _finish_success(
    recorder: Recorder,
    claim: Claim,
    route: Route,
    completion: Completion,
    started_at: datetime,
    started: float,
) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000)
    price = route.price
    # A model outside the catalogue has no price: its cost is recorded as 0, and the missing
    # catalogue version says why.
    cost = (
        price.cost(
            completion.input_tokens, completion.output_tokens, completion.cached_input_tokens
        )
        if price
        else Decimal(0)
    )
    estimated = not completion.usage_reported
    version = price.version if price else None
    await recorder.finish(
        claim,
        attempt=AttemptRecord(
            provider=route.provider,
            model=route.upstream_model,
            started_at=started_at,
            ended_at=utcnow(),
            outcome="success",
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_input_tokens=completion.cached_input_tokens,
            usage_estimated=estimated,
            cost_usd=cost,
            catalogue_version=version,
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
        ),
    )
