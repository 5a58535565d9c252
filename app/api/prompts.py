"""/ai/prompts: submit, list, read, cancel and follow prompts (app/services/prompts)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.auth import CurrentScope, CurrentUser, WorkCaller
from app.api.deps import Filters, IdempotencyKeyHeader, ServicesDep, Session
from app.api.problems import problem_responses
from app.db.models import PromptStatus
from app.services.auth.scope import PromptScope
from app.services.prompts import live, service
from app.services.prompts.schemas import PromptCreate, PromptDetail, PromptOut, PromptPage

router = APIRouter(prefix="/ai/prompts", tags=["prompts"])


class HeldStream(StreamingResponse):
    """A stream that gives its slot back when it ends, however it ends (finished, client
    gone, server stopping)."""

    def __init__(self, content: Any, *, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def location(prompt_id: uuid.UUID) -> str:
    """Where a submitted prompt is read back (the `Location` of a 202)."""
    return f"{router.prefix}/{prompt_id}"


_SUBMIT_PROBLEMS = problem_responses(401, 409, 413, 422, 429, 503)
_SUBMIT_PROBLEMS[429]["description"] = (
    "`too_many_pending_prompts`: you have MAX_PENDING_PER_USER prompts waiting to run already; "
    "retry after `Retry-After` seconds, once some have started. Or a limit of your key, user "
    "or team has no room (README, *Rate limits and budgets*): `rate_limited` (requests or "
    "tokens per minute), `too_many_in_flight`, `budget_exceeded`; with `Retry-After` and the "
    "`RateLimit-Policy` / `RateLimit` headers, and the limit in `limit_name`, `scope`, `limit`."
)
_SUBMIT_PROBLEMS[409]["description"] = (
    "`idempotency_key_in_flight`: a concurrent request with this `Idempotency-Key` is still "
    "being recorded; retry after `Retry-After` seconds to get its result."
)
_SUBMIT_PROBLEMS[422]["description"] = (
    "Invalid input (`validation_error`, `invalid_text`, `unknown_model`, "
    "`provider_not_configured`, "
    "`unsupported_parameter`, `prompt_too_large`, `invalid_idempotency_key`, "
    "`idempotency_key_reused`: this key was first sent with a different request; "
    "`request_exceeds_limit`: the request alone counts more tokens than a tokens-per-minute "
    "limit allows, or may cost more than a whole budget)."
)


@router.post(
    "/",
    status_code=202,
    response_model=PromptOut,
    summary="Submit a prompt",
    response_description="Accepted: stored as `pending` and queued. Poll the `Location`.",
    responses={
        200: {
            "model": PromptDetail,
            "description": "With `Prefer: wait=N`: the prompt finished within N seconds.",
        },
        **_SUBMIT_PROBLEMS,
    },
)
async def create_prompt(
    data: PromptCreate,
    caller: WorkCaller,
    response: Response,
    services: ServicesDep,
    prefer: Annotated[
        str | None,
        Header(
            description="`wait=N` (RFC 7240): hold the request up to N seconds (at most "
            "`PREFER_WAIT_MAX_SECONDS`, 60 by default) and answer **200** with the finished "
            "prompt if it finishes meanwhile; otherwise **202** as usual. No polling: the "
            "server is told when the prompt finishes.",
        ),
    ] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> PromptOut | JSONResponse:
    """Store the prompt, queue it for execution and answer at once with **202**.

    The prompt is committed before this answers, so it is never lost; follow `Location`
    (`GET /ai/prompts/{id}`) until `status` is `completed`, `failed` or `cancelled`.

    With an `Idempotency-Key`, a retry of the same request (after a timeout, a dropped
    connection…) gets the same prompt back, again with **202**, its `Location` and the header
    `Idempotent-Replayed: true`: nothing is stored or run twice. A duplicate sent while the
    first is still being recorded usually waits for it; otherwise it gets a **409**
    `idempotency_key_in_flight` with `Retry-After`.

    With `Prefer: wait=N`, the answer waits until the prompt is final or N seconds have
    passed: **200** with the whole prompt (as `GET /ai/prompts/{id}`), or **202** if it is
    still running. Either way the header `Preference-Applied: wait=N` says it was honoured.
    """
    user = caller.user
    submission = await services.prompts.submit(caller, data, idempotency_key=idempotency_key)
    prompt = submission.prompt
    response.headers["Location"] = location(prompt.id)
    response.headers.update(submission.headers)
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    wait = live.prefer_wait(prefer, cap=services.settings.prefer_wait_max_seconds)
    streams = services.streams
    if wait is not None and streams.take(user.id):  # (at the cap: answered at once)
        try:
            response.headers["Preference-Applied"] = f"wait={wait:g}"
            detail = await live.wait_for_final(
                services.bus,
                services.sessions,
                scope=PromptScope.own(user.id),
                prompt_id=prompt.id,
                seconds=wait,
            )
        finally:
            streams.give_back(user.id)
        if detail is not None:
            return JSONResponse(
                detail.model_dump(mode="json"), status_code=200, headers=dict(response.headers)
            )
    return PromptOut.model_validate(prompt)


@router.get(
    "/",
    summary="List the prompts you can see",
    responses=problem_responses(401, 422, 503),
)
async def list_prompts(
    session: Session,
    scope: CurrentScope,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> PromptPage:
    """The prompts you can see, newest first, one page at a time: your own; those of the
    teams you own or view (`team_id` narrows the list to one team's); every prompt for an
    admin (`user_id` narrows it to one user's)."""
    return await service.list_prompts(
        session, scope=scope, filters=filters, limit=limit, cursor=cursor
    )


@router.get(
    "/{prompt_id}",
    summary="Read a prompt and its outcome",
    responses=problem_responses(401, 404, 422, 503),
)
async def get_prompt(session: Session, scope: CurrentScope, prompt_id: uuid.UUID) -> PromptDetail:
    """The prompt with its response (text, duration, tokens, cost) once `completed`, or its
    error (a stable `code` and a message) once `failed`, and every provider call made.
    Yours, your teams' (as their owner or viewer), or any for an admin: another team's
    prompt is a 404, as a missing one is."""
    return await service.get_prompt(session, scope=scope, prompt_id=prompt_id)


@router.post(
    "/{prompt_id}/cancel",
    summary="Cancel a prompt",
    response_description="Cancelled (`status` is `cancelled`): a pending prompt at once, a "
    "running one that this server could stop straight away.",
    responses={
        202: {
            "model": PromptDetail,
            "description": "Cancellation requested: the prompt is `running` on another "
            "process, which stops it within about a second. Poll `GET /ai/prompts/{id}`.",
        },
        **problem_responses(401, 403, 404, 409, 422, 503),
    },
)
async def cancel_prompt(
    scope: CurrentScope,
    prompt_id: uuid.UUID,
    response: Response,
    services: ServicesDep,
) -> PromptDetail:
    """Cancel a `pending` or `running` prompt.

    A pending prompt is cancelled at once and never runs (**200**). A running one is stopped
    by its runner: its provider call is abandoned (and listed in `attempts`, outcome
    `cancelled`) and it ends `cancelled` without a response, at once (**200**) or, when it
    runs on another process, within about a second (**202**, `cancel_requested_at` set).
    A prompt that finishes before its runner can stop it keeps its outcome.
    A prompt that is already `completed`, `failed` or `cancelled` is a **409**
    `already_finished`. Its maker, its team's owner or an admin may cancel it; a team's
    viewer gets a **403** `role_forbidden`.
    """
    detail = await services.prompts.cancel(scope=scope, prompt_id=prompt_id)
    if detail.status == PromptStatus.RUNNING:
        response.status_code = 202
    return detail


@router.get(
    "/{prompt_id}/events",
    summary="Follow a prompt live (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {
            # Before OpenAPI 3.2, a stream's schema describes each of its events.
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                        "required": ["data"],
                    }
                }
            },
            "description": '`event: status` (`{"id", "status"}`) at once and at every '
            'change; `event: delta` (`{"text"}`) with the answer as it is generated; '
            "`event: final` with the whole prompt (as `GET /ai/prompts/{id}`), then the "
            "stream ends. A comment line is sent every 15 s of silence.",
        },
        **problem_responses(401, 404, 422, 429, 503),
    },
)
async def prompt_events(
    user: CurrentUser,
    scope: CurrentScope,
    prompt_id: uuid.UUID,
    services: ServicesDep,
) -> StreamingResponse:
    """Status changes and, while it runs, the generated text, until the prompt is final.

    Works in both modes and through any API process. The text is streamed when the prompt's
    provider call starts after this stream was opened (otherwise its status changes and the
    final answer are sent): open it while the prompt is still `pending` to get the text. A
    prompt that is already final gets its `status` and `final` at once.

    Each user may hold MAX_STREAMS_PER_USER streams (and `Prefer: wait` submissions) open at
    once per API process; past that, **429** `too_many_streams`.
    """
    bus, sessions, streams = services.bus, services.sessions, services.streams
    await live.read(sessions, scope, prompt_id)  # a missing prompt is a 404, not a stream
    if not streams.take(user.id):
        raise streams.refuse()
    return HeldStream(
        live.event_stream(bus, sessions, scope=scope, prompt_id=prompt_id),
        release=lambda: streams.give_back(user.id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
