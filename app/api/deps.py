"""The /ai/prompts route dependencies. Every one is `async def`, even those that only read
`app.state`: FastAPI runs a plain `def` dependency on a thread of its pool, and those hops cost
about a fifth of a /v1 request's CPU (measured with py-spy, `bench/gateways.py`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from app.db.database import SessionFactory
from app.db.models import PromptStatus
from app.engine.events import EventBus
from app.engine.idempotency import IdempotencyKeys
from app.engine.recorder import Recorder
from app.engine.runners import Dispatcher
from app.kit.settings import Settings
from app.kit.text import Text
from app.providers.registry import ModelRouter
from app.services.prompts.live import StreamSlots
from app.services.prompts.pending import PendingGauge
from app.services.prompts.service import PromptFilters


def _utc(value: datetime | None) -> datetime | None:
    """Timestamps without an offset are taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def prompt_filters(
    status: Annotated[
        PromptStatus | None, Query(description="Only prompts in this status.")
    ] = None,
    model: Annotated[Text | None, Query(max_length=200, description="Exact model name.")] = None,
    prompt_type: Annotated[Text | None, Query(max_length=64)] = None,
    created_after: Annotated[
        datetime | None, Query(description="ISO 8601; without an offset, UTC.")
    ] = None,
    created_before: Annotated[datetime | None, Query(description="ISO 8601; exclusive.")] = None,
) -> PromptFilters:
    return PromptFilters(
        status=status,
        model=model,
        prompt_type=prompt_type,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
    )


async def get_recorder(request: Request) -> Recorder:
    recorder: Recorder = request.app.state.recorder
    return recorder


async def get_bus(request: Request) -> EventBus:
    bus: EventBus = request.app.state.bus
    return bus


async def get_sessions(request: Request) -> SessionFactory:
    sessions: SessionFactory = request.app.state.sessions
    return sessions


async def get_model_router(request: Request) -> ModelRouter:
    router: ModelRouter = request.app.state.model_router
    return router


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def get_pending(request: Request) -> PendingGauge:
    pending: PendingGauge = request.app.state.pending
    return pending


async def get_stream_slots(request: Request) -> StreamSlots:
    streams: StreamSlots = request.app.state.streams
    return streams


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_idempotency_keys(request: Request) -> IdempotencyKeys:
    """Where this app keeps idempotency keys, and for how long."""
    return IdempotencyKeys(
        sessions=request.app.state.sessions,
        ttl_seconds=request.app.state.settings.idempotency_key_ttl_seconds,
    )


IDEMPOTENCY_KEY_HEADER = Header(
    alias="Idempotency-Key",
    description="Makes retries safe: 1 to 255 printable ASCII characters (e.g. a UUID), one "
    "per logical request. The same key with the same body within "
    "`IDEMPOTENCY_KEY_TTL_SECONDS` (default 24 h) answers what it first created (with "
    "`Idempotent-Replayed: true`) instead of creating another; with a different body it is "
    "a 422 (`idempotency_key_reused`; a 400 under /v1). Keys are per user.",
)


async def get_max_prompt_chars(request: Request) -> int:
    return int(request.app.state.settings.max_prompt_chars)


Filters = Annotated[PromptFilters, Depends(prompt_filters)]
RecorderDep = Annotated[Recorder, Depends(get_recorder)]
BusDep = Annotated[EventBus, Depends(get_bus)]
SessionsDep = Annotated[SessionFactory, Depends(get_sessions)]
RouterDep = Annotated[ModelRouter, Depends(get_model_router)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
MaxPromptChars = Annotated[int, Depends(get_max_prompt_chars)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PendingDep = Annotated[PendingGauge, Depends(get_pending)]
StreamSlotsDep = Annotated[StreamSlots, Depends(get_stream_slots)]
IdempotencyKeysDep = Annotated[IdempotencyKeys, Depends(get_idempotency_keys)]
IdempotencyKeyHeader = Annotated[str | None, IDEMPOTENCY_KEY_HEADER]
