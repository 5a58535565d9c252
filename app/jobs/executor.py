"""Executes one claimed prompt: call its provider once, record the attempt and the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from app.db.base import utcnow
from app.prompts.recorder import AttemptRecord, Claim, Recorder, ResponseRecord
from app.providers.base import Completion, CompletionRequest, Message, ProviderError
from app.providers.registry import ModelRouter, Route

logger = logging.getLogger(__name__)


def build_messages(claim: Claim) -> list[Message]:
    messages: list[Message] = []
    system = claim.parameters.get("system_prompt")
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": claim.prompt_text})
    return messages


async def execute_prompt(claim: Claim, *, recorder: Recorder, router: ModelRouter) -> None:
    provider = router.providers.get(claim.provider)
    if provider is None:
        await recorder.finish(
            claim,
            attempt=None,
            error_code="provider_not_configured",
            error_message=f"The '{claim.provider}' provider is not configured on this server.",
        )
        return
    route = router.route_for(claim.provider, claim.upstream_model)
    request = CompletionRequest(
        model=claim.upstream_model,
        messages=build_messages(claim),
        temperature=claim.parameters.get("temperature"),
        max_tokens=claim.parameters.get("max_tokens"),
    )
    started_at = utcnow()
    started = time.perf_counter()
    try:
        completion = await provider.complete(request)
    except asyncio.CancelledError:
        # The runner is stopping: the call is abandoned, but it happened and may be billed.
        abandoned = AttemptRecord(
            provider=claim.provider,
            model=claim.upstream_model,
            started_at=started_at,
            ended_at=utcnow(),
            outcome="abandoned",
            error_code="abandoned",
            error_message="The call was abandoned when its runner stopped.",
        )
        await asyncio.shield(recorder.record_attempt(claim, abandoned))
        raise
    except ProviderError as exc:
        code, message, status = exc.code, exc.message, exc.status
    except Exception as exc:
        logger.exception("provider %s raised unexpectedly", claim.provider)
        code, status = "internal_error", None
        message = f"The {claim.provider} adapter failed unexpectedly ({type(exc).__name__})."
    else:
        await _record_success(claim, route, completion, started_at, started, recorder)
        return
    attempt = AttemptRecord(
        provider=claim.provider,
        model=claim.upstream_model,
        started_at=started_at,
        ended_at=utcnow(),
        outcome="error",
        http_status=status,
        error_code=code,
        error_message=message,
    )
    await recorder.finish(claim, attempt=attempt, error_code=code, error_message=message)


async def _record_success(
    claim: Claim,
    route: Route,
    completion: Completion,
    started_at: datetime,
    started: float,
    recorder: Recorder,
) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000)
    cost = route.cost(completion.input_tokens, completion.output_tokens)
    estimated = not completion.usage_reported
    await recorder.finish(
        claim,
        attempt=AttemptRecord(
            provider=claim.provider,
            model=claim.upstream_model,
            started_at=started_at,
            ended_at=utcnow(),
            outcome="success",
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            usage_estimated=estimated,
            cost_usd=cost,
        ),
        response=ResponseRecord(
            response_text=completion.text,
            duration_ms=duration_ms,
            provider=claim.provider,
            upstream_model=completion.upstream_model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            usage_estimated=estimated,
            cost_usd=cost,
            finish_reason=completion.finish_reason,
        ),
    )
