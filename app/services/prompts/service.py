"""The /ai/prompts domain: submit, list, read and cancel prompts. Plain async functions."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from app.db.base import utcnow
from app.db.models import NewPrompt, PromptRequest, PromptStatus
from app.engine.idempotency import IdempotencyKeys, IdempotencyRecord, request_fingerprint
from app.engine.recorder import Recorder
from app.engine.runners import Dispatcher
from app.kit.errors import Conflict, InvalidInput, NotFound
from app.providers.registry import ModelRouter, Route
from app.services.prompt_types.cache import PromptTypeCache
from app.services.prompt_types.policy import apply_prompt_type
from app.services.prompts.pending import PendingGauge
from app.services.prompts.schemas import PromptCreate, PromptDetail, PromptOut, PromptPage


@dataclass(frozen=True, slots=True)
class PromptFilters:
    status: PromptStatus | None = None
    model: str | None = None
    prompt_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    prompt: NewPrompt | PromptRequest
    replayed: bool = False  # an Idempotency-Key replay: the prompt an earlier request created


SUBMIT_ENDPOINT = "POST /ai/prompts/"


async def submit_prompt(
    recorder: Recorder,
    *,
    user_id: uuid.UUID,
    data: PromptCreate,
    router: ModelRouter,
    dispatcher: Dispatcher,
    max_prompt_chars: int,
    idempotency_key: str | None = None,
    keys: IdempotencyKeys | None = None,
    prompt_types: PromptTypeCache,
    pending: PendingGauge,
) -> Submission:
    """Store the prompt as `pending`, commit, then dispatch it (never before the commit).

    With an `idempotency_key` (kept in `keys`), the user's same key with the same body
    replays the prompt it first created, as it stands now: nothing is stored or dispatched
    again (see idempotency.py).

    A defined `prompt_type` applies its current policy (app/services/prompt_types/policy.py) and the
    prompt records its version (`prompt_types` is the process's cache of the definitions).

    A user with MAX_PENDING_PER_USER prompts waiting already is refused (`pending`)."""

    async def create(idempotency: IdempotencyRecord | None) -> NewPrompt | PromptRequest:
        prompt = await prepare_prompt(
            user_id=user_id,
            data=data,
            router=router,
            max_prompt_chars=max_prompt_chars,
            prompt_types=prompt_types,
            pending=pending,
        )
        await recorder.create_prompt(prompt, idempotency=idempotency)
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
        if keys is None:
            raise ValueError("an idempotency_key needs the keys store")
        body = data.model_dump(mode="json", exclude_none=True)
        prompt, replayed = await keys.run_once(
            user_id=user_id,
            key=idempotency_key,
            fingerprint=request_fingerprint(SUBMIT_ENDPOINT, body),
            create=create,
            replay=replay,
        )
        if replayed:
            return Submission(prompt, replayed=True)
    await dispatcher.dispatch(prompt.id, user_id)
    return Submission(prompt)


async def prepare_prompt(
    *,
    user_id: uuid.UUID,
    data: PromptCreate,
    router: ModelRouter,
    max_prompt_chars: int,
    prompt_types: PromptTypeCache,
    pending: PendingGauge,
) -> NewPrompt:
    """The checked `pending` prompt that a submission stores, its prompt type's policy
    applied. Whatever is wrong with the request is raised here, before anything is written;
    last, the user's pending prompts are counted against their cap (`TooManyPending`)."""
    applied = apply_prompt_type(
        data,
        await prompt_types.get(data.prompt_type),
        router=router,
        max_prompt_chars=max_prompt_chars,
    )
    prompt = _new_prompt(
        user_id=user_id, data=applied.data, router=router, max_prompt_chars=max_prompt_chars
    )
    prompt.prompt_type_version = applied.version
    if applied.template_input is not None:
        prompt.parameters["template_input"] = applied.template_input
    await pending.admit(user_id)
    return prompt


def _new_prompt(
    *, user_id: uuid.UUID, data: PromptCreate, router: ModelRouter, max_prompt_chars: int
) -> NewPrompt:
    """A validated `pending` prompt, not yet stored."""
    if len(data.prompt_text) > max_prompt_chars:
        raise InvalidInput(
            f"prompt_text has {len(data.prompt_text):,} characters; the limit here is "
            f"{max_prompt_chars:,} (MAX_PROMPT_CHARS).",
            code="prompt_too_large",
            extra={"limit": max_prompt_chars},
        )
    if data.model is None:
        raise InvalidInput(
            f"model is required: prompt type '{data.prompt_type}' is not defined here, so it "
            "has no default model.",
            code="model_required",
        )
    route = router.resolve(data.model)
    fallbacks = router.fallbacks(route, data.fallbacks)
    for candidate in (route, *fallbacks):
        check_parameters(
            candidate, router, temperature=data.temperature, max_tokens=data.max_tokens
        )
    parameters = data.model_dump(
        include={"system_prompt", "temperature", "max_tokens", "timeout_seconds"},
        exclude_none=True,
    )
    if fallbacks:
        parameters["fallbacks"] = [f.model for f in fallbacks]
    return NewPrompt(
        id=uuid.uuid4(),
        user_id=user_id,
        model=data.model,
        prompt_type=data.prompt_type,
        prompt_text=data.prompt_text,
        created_at=utcnow(),
        provider=route.provider,
        upstream_model=route.upstream_model,
        parameters=parameters,
        meta=data.metadata,
    )


def check_parameters(
    route: Route, router: ModelRouter, *, temperature: float | None, max_tokens: int | None
) -> None:
    """Refuse what a provider cannot honour, rather than dropping it silently."""
    highest = router.providers[route.provider].max_temperature
    if temperature is not None and (highest is None or temperature > highest):
        accepted = "no temperature" if highest is None else f"at most {highest:g}"
        raise InvalidInput(
            f"temperature {temperature} cannot be honoured by {route.provider} "
            f"({accepted}) for model {route.model}.",
            code="unsupported_parameter",
            extra={"parameter": "temperature", "model": route.model},
        )
    limit = route.entry.max_output_tokens if route.entry else None
    if max_tokens is not None and limit is not None and max_tokens > limit:
        raise InvalidInput(
            f"max_tokens {max_tokens} is above the {limit} that model {route.model} can produce.",
            code="unsupported_parameter",
            extra={"parameter": "max_tokens", "model": route.model},
        )


def encode_cursor(prompt: PromptRequest) -> str:
    raw = f"{prompt.created_at.isoformat()}|{prompt.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, prompt_id = raw.partition("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("naive")
        return created_at, uuid.UUID(prompt_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "cursor is not one this API returned; pass next_cursor unchanged.",
            code="invalid_cursor",
        ) from None


async def list_prompts(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    filters: PromptFilters,
    limit: int,
    cursor: str | None,
) -> PromptPage:
    """The user's prompts, newest first, keyset-paginated on (created_at, id)."""
    p = PromptRequest
    query = select(p).where(p.user_id == user_id)
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
        next_cursor=encode_cursor(rows[-1]) if more else None,
    )


async def get_prompt(
    session: AsyncSession, *, user_id: uuid.UUID, prompt_id: uuid.UUID
) -> PromptDetail:
    """One of the user's prompts. Someone else's is exactly as missing as a missing one.

    The prompt, its response and its attempts come from one statement (joined), so they agree
    even while the outcome is being committed: separate statements read separate snapshots
    on PostgreSQL, and a poll could see `running` with the response already there."""
    result = await session.execute(
        select(PromptRequest)
        .where(PromptRequest.id == prompt_id, PromptRequest.user_id == user_id)
        .options(joinedload(PromptRequest.response), joinedload(PromptRequest.attempt_log))
    )
    prompt = result.unique().scalar_one_or_none()
    if prompt is None:
        raise NotFound("No prompt with this id.")
    return PromptDetail.from_prompt(prompt)


async def cancel_prompt(
    session: AsyncSession,
    recorder: Recorder,
    *,
    user_id: uuid.UUID,
    prompt_id: uuid.UUID,
    dispatcher: Dispatcher,
) -> PromptDetail:
    """Cancel one of the user's prompts. A pending one is cancelled at once and never runs; a
    running one is stopped by its runner (at once when it runs in this process, within about
    a second elsewhere). Returns the prompt as it stands after that."""
    status = await recorder.cancel(prompt_id, user_id=user_id)
    if status is None:
        raise NotFound("No prompt with this id.")
    if status not in (PromptStatus.PENDING, PromptStatus.RUNNING):
        raise Conflict(
            f"This prompt is already {status}: only a pending or running prompt can be cancelled.",
            code="already_finished",
            extra={"prompt_status": status},
        )
    if status == PromptStatus.RUNNING:
        await dispatcher.cancel(prompt_id)
    return await get_prompt(session, user_id=user_id, prompt_id=prompt_id)
