"""The /ai/prompts domain: submit and cancel prompts (`PromptService`), list and read them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from app.db.database import SessionFactory
from app.db.models import NewPrompt, PromptRequest, PromptStatus
from app.engine.idempotency import IdempotencyKeys, IdempotencyRecord, request_fingerprint
from app.engine.recorder import Recorder
from app.engine.runners import Dispatcher
from app.kit.cursors import decode_cursor, encode_cursor
from app.kit.errors import Conflict, Forbidden, NotFound
from app.providers.base import message_text
from app.services.auth.authenticator import Caller
from app.services.auth.scope import PromptScope
from app.services.conversation import (
    conversation,
    last_user,
    response_format_option,
    tool_options,
)
from app.services.intake import Ask, Intake
from app.services.limits.governor import policy_headers
from app.services.prompts.schemas import PromptCreate, PromptDetail, PromptOut, PromptPage


@dataclass(frozen=True, slots=True)
class PromptFilters:
    status: PromptStatus | None = None
    user_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    model: str | None = None
    prompt_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    prompt: NewPrompt | PromptRequest
    replayed: bool = False  # an Idempotency-Key replay: the prompt an earlier request created
    # RateLimit-Policy / RateLimit, for a caller with limits (app/services/limits/governor.py)
    headers: dict[str, str] = field(default_factory=dict)


SUBMIT_ENDPOINT = "POST /ai/prompts/"


def ask_for(caller: Caller, data: PromptCreate) -> Ask:
    """What a `POST /ai/prompts/` body asks for, for the intake: its text, or a conversation
    (checked as /v1/chat/completions checks one), with its tools and response format."""
    ask = Ask(
        user_id=caller.user.id,
        api_key_id=caller.key_id,
        team_id=caller.team_id,
        allowed_models=caller.allowed_models,
        accounts=caller.accounts,
        model=data.model,
        prompt_type=data.prompt_type,
        text=data.prompt_text or "",
        variables=data.variables,
        system_prompt=data.system_prompt,
        temperature=data.temperature,
        max_tokens=data.max_tokens,
        timeout_seconds=data.timeout_seconds,
        fallbacks=data.fallbacks,
        metadata=data.metadata,
        drop_params=caller.drop_params,  # (the key's: /ai/prompts has no field of its own)
    )
    if data.messages is not None:
        messages = conversation(data.messages)
        last = last_user(messages)
        ask.messages, ask.last, ask.text = messages, last, message_text(messages[last])
    options: dict[str, Any] = {}
    if data.tools is not None or data.tool_choice is not None:
        options = tool_options(data.tools, data.tool_choice, None)
    if data.response_format is not None:
        options.update(response_format_option(data.response_format))
    if options:
        ask.options = options
        if "response_format" in options:
            # The answer is parsed and checked against the schema (executor.py).
            ask.passthrough["structured_output"] = True
    return ask


class PromptService:
    """Submitting and cancelling prompts: what `POST /ai/prompts/` (its route and its fast
    path) and `POST /ai/prompts/{id}/cancel` do. One per process (`Services.prompts`)."""

    def __init__(
        self,
        *,
        intake: Intake,
        recorder: Recorder,
        dispatcher: Dispatcher,
        keys: IdempotencyKeys,
        sessions: SessionFactory,
    ) -> None:
        self.intake = intake
        self.recorder = recorder
        self.dispatcher = dispatcher
        self.keys = keys
        self.sessions = sessions

    async def submit(
        self, caller: Caller, data: PromptCreate, *, idempotency_key: str | None = None
    ) -> Submission:
        """Store the prompt as `pending`, commit, then dispatch it (never before the commit).

        Everything wrong with the request is raised by the intake (app/services/intake.py)
        before anything is written. With an `idempotency_key`, the user's same key with the
        same body replays the prompt it first created, as it stands now: nothing is stored
        or dispatched again (see app/engine/idempotency.py)."""
        user_id = caller.user.id

        headers: dict[str, str] = {}

        async def create(idempotency: IdempotencyRecord | None) -> NewPrompt | PromptRequest:
            ask = ask_for(caller, data)
            prompt = await self.intake.admit(ask)
            try:
                await self.recorder.create_prompt(prompt, idempotency=idempotency)
            except BaseException:
                self.intake.undo(prompt)
                raise
            if ask.grant is not None:
                headers.update(ask.grant.headers)
            return prompt

        async def replay(session: AsyncSession, prompt_id: uuid.UUID) -> PromptRequest | None:
            prompt: PromptRequest | None = await session.scalar(
                select(PromptRequest).where(
                    PromptRequest.id == prompt_id, PromptRequest.user_id == user_id
                )
            )
            return prompt

        if idempotency_key is None:
            prompt = await create(None)
        else:
            body = data.model_dump(mode="json", exclude_none=True)
            prompt, replayed = await self.keys.run_once(
                user_id=user_id,
                key=idempotency_key,
                fingerprint=request_fingerprint(SUBMIT_ENDPOINT, body),
                create=create,
                replay=replay,
            )
            if replayed:  # (not admitted again: a caller with limits is told its policies)
                policies = policy_headers(caller.accounts) if caller.accounts else {}
                return Submission(prompt, replayed=True, headers=policies)
        await self.dispatcher.dispatch(prompt.id, user_id)  # (never raises: see Dispatcher)
        return Submission(prompt, headers=headers)

    async def cancel(self, *, scope: PromptScope, prompt_id: uuid.UUID) -> PromptDetail:
        """Cancel a prompt the scope sees and may cancel (its maker's, its team owner's, an
        admin's; a viewer only reads). A pending one is cancelled at once and never runs; a
        running one is stopped by its runner (at once when it runs in this process, within
        about a second elsewhere). Returns the prompt as it stands after that."""
        p = PromptRequest
        # Each read in a short session of its own: the one after the cancel sees it (a
        # SQLite transaction would keep reading the snapshot of its first statement).
        async with self.sessions() as session:
            seen = (
                await session.execute(
                    select(p.user_id, p.team_id).where(p.id == prompt_id, scope.visible())
                )
            ).first()
        if seen is None:
            raise NotFound("No prompt with this id.")
        if not scope.may_cancel(seen.user_id, seen.team_id):
            raise Forbidden(
                "Only the prompt's maker, its team's owner or an admin can cancel it: a "
                "team's viewer only reads.",
                code="role_forbidden",
            )
        status = await self.recorder.cancel(prompt_id, user_id=seen.user_id)
        if status is None:
            raise NotFound("No prompt with this id.")
        if status not in (PromptStatus.PENDING, PromptStatus.RUNNING):
            raise Conflict(
                f"This prompt is already {status}: only a pending or running prompt can be "
                "cancelled.",
                code="already_finished",
                extra={"prompt_status": status},
            )
        if status == PromptStatus.RUNNING:
            await self.dispatcher.cancel(prompt_id)
        async with self.sessions() as session:
            return await get_prompt(session, scope=scope, prompt_id=prompt_id)


async def list_prompts(
    session: AsyncSession,
    *,
    scope: PromptScope,
    filters: PromptFilters,
    limit: int,
    cursor: str | None,
) -> PromptPage:
    """The prompts the scope sees (its own; its teams' as their owner or viewer; all for an
    admin), newest first, keyset-paginated on (created_at, id)."""
    p = PromptRequest
    query = select(p).where(scope.visible())
    if filters.user_id is not None:
        query = query.where(p.user_id == filters.user_id)
    if filters.team_id is not None:
        query = query.where(p.team_id == filters.team_id)
    if filters.status is not None:
        query = query.where(p.status == filters.status)
    if filters.model is not None:
        query = query.where(p.model == filters.model)
    if filters.prompt_type is not None:
        query = query.where(p.prompt_type == filters.prompt_type)
    if filters.created_after is not None:
        query = query.where(p.created_at > filters.created_after)
    if filters.created_before is not None:
        query = query.where(p.created_at < filters.created_before)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(
            or_(p.created_at < created_at, and_(p.created_at == created_at, p.id < last_id))
        )
    rows = list(
        await session.scalars(query.order_by(p.created_at.desc(), p.id.desc()).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return PromptPage(
        items=[PromptOut.model_validate(row) for row in rows],
        next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
    )


async def get_prompt(
    session: AsyncSession, *, scope: PromptScope, prompt_id: uuid.UUID
) -> PromptDetail:
    """A prompt the scope sees. One it does not (another user's, another team's) is exactly as
    missing as a missing one.

    The prompt, its response and its attempts come from one statement (joined), so they agree
    even while the outcome is being committed: separate statements read separate snapshots
    on PostgreSQL, and a poll could see `running` with the response already there."""
    result = await session.execute(
        select(PromptRequest)
        .where(PromptRequest.id == prompt_id, scope.visible())
        .options(joinedload(PromptRequest.response), joinedload(PromptRequest.attempt_log))
    )
    prompt = result.unique().scalar_one_or_none()
    if prompt is None:
        raise NotFound("No prompt with this id.")
    return PromptDetail.from_prompt(prompt)
