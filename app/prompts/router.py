from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.auth.dependencies import CurrentUser
from app.db.database import Session
from app.errors import problem_responses
from app.models import PromptStatus
from app.prompts import service
from app.prompts.dependencies import (
    DispatcherDep,
    Filters,
    MaxPromptChars,
    RecorderDep,
    RouterDep,
)
from app.prompts.schemas import PromptCreate, PromptDetail, PromptOut, PromptPage

router = APIRouter(prefix="/ai/prompts", tags=["prompts"])


@router.post(
    "/",
    status_code=202,
    summary="Submit a prompt",
    response_description="Accepted: stored as `pending` and queued. Poll the `Location`.",
    responses=problem_responses(401, 413, 422, 503),
)
async def create_prompt(
    data: PromptCreate,
    user: CurrentUser,
    response: Response,
    recorder: RecorderDep,
    model_router: RouterDep,
    dispatcher: DispatcherDep,
    max_prompt_chars: MaxPromptChars,
) -> PromptOut:
    """Store the prompt, queue it for execution and answer at once with **202**.

    The prompt is committed before this answers, so it is never lost; follow `Location`
    (`GET /ai/prompts/{id}`) until `status` is `completed`, `failed` or `cancelled`.
    """
    prompt = await service.submit_prompt(
        recorder,
        user_id=user.id,
        data=data,
        router=model_router,
        dispatcher=dispatcher,
        max_prompt_chars=max_prompt_chars,
    )
    response.headers["Location"] = f"{router.prefix}/{prompt.id}"
    return PromptOut.model_validate(prompt)


@router.get(
    "/",
    summary="List your prompts",
    responses=problem_responses(401, 422, 503),
)
async def list_prompts(
    session: Session,
    user: CurrentUser,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> PromptPage:
    """Your prompts only, newest first, one page at a time."""
    return await service.list_prompts(
        session, user_id=user.id, filters=filters, limit=limit, cursor=cursor
    )


@router.get(
    "/{prompt_id}",
    summary="Read a prompt and its outcome",
    responses=problem_responses(401, 404, 422, 503),
)
async def get_prompt(session: Session, user: CurrentUser, prompt_id: uuid.UUID) -> PromptDetail:
    """The prompt with its response (text, duration, tokens, cost) once `completed`, or its
    error (a stable `code` and a message) once `failed`, and every provider call made."""
    return await service.get_prompt(session, user_id=user.id, prompt_id=prompt_id)


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
        **problem_responses(401, 404, 409, 422, 503),
    },
)
async def cancel_prompt(
    session: Session,
    user: CurrentUser,
    prompt_id: uuid.UUID,
    response: Response,
    recorder: RecorderDep,
    dispatcher: DispatcherDep,
) -> PromptDetail:
    """Cancel a `pending` or `running` prompt.

    A pending prompt is cancelled at once and never runs (**200**). A running one is stopped
    by its runner: its provider call is abandoned (and listed in `attempts`, outcome
    `cancelled`) and it ends `cancelled` without a response, at once (**200**) or, when it
    runs on another process, within about a second (**202**, `cancel_requested_at` set).
    A prompt that finishes before its runner can stop it keeps its outcome.
    A prompt that is already `completed`, `failed` or `cancelled` is a **409**
    `already_finished`.
    """
    detail = await service.cancel_prompt(
        session, recorder, user_id=user.id, prompt_id=prompt_id, dispatcher=dispatcher
    )
    if detail.status == PromptStatus.RUNNING:
        response.status_code = 202
    return detail
