"""The routes' shared dependencies: the process's `Services`, the list filters, the
`Idempotency-Key` header. Every one is `async def`, even those that only read `app.state`:
FastAPI runs a plain `def` dependency on a thread of its pool, and those hops cost about a
fifth of a /v1 request's CPU (py-spy under `bench/gateways.py`; docs/architecture.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import PromptStatus
from app.kit.text import Text
from app.services.container import Services
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
    user_id: Annotated[
        uuid.UUID | None, Query(description="Only this user's prompts (of those you can see).")
    ] = None,
    team_id: Annotated[
        uuid.UUID | None,
        Query(description="Only the prompts made with keys of this team (of those you can see)."),
    ] = None,
) -> PromptFilters:
    return PromptFilters(
        status=status,
        user_id=user_id,
        team_id=team_id,
        model=model,
        prompt_type=prompt_type,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
    )


async def get_services(request: Request) -> Services:
    """The process's services, built in the app's lifespan (app/main.py): the one way the
    routes reach them (the fast paths read the same object)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


IDEMPOTENCY_KEY_HEADER = Header(
    alias="Idempotency-Key",
    description="Makes retries safe: 1 to 255 printable ASCII characters (e.g. a UUID), one "
    "per logical request. The same key with the same body within "
    "`IDEMPOTENCY_KEY_TTL_SECONDS` (default 24 h) answers what it first created (with "
    "`Idempotent-Replayed: true`) instead of creating another; with a different body it is "
    "a 422 (`idempotency_key_reused`; a 400 under /v1). Keys are per user.",
)


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request (the rule in app/db/database.py): committed when the
    handler returns, rolled back if it raises. Declared with `scope="function"` (see
    `Session`) so the commit happens before the response is sent, and a client never reads
    back something that is not yet committed."""
    async with services.sessions.begin() as session:
        yield session


Filters = Annotated[PromptFilters, Depends(prompt_filters)]
IdempotencyKeyHeader = Annotated[str | None, IDEMPOTENCY_KEY_HEADER]
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
