"""Prompt records written straight to a database, as a stopped process would have left them,
for the tests of claims, leases, the sweeper and cancellation."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.db.models import NewPrompt, PromptRequest, PromptStatus
from app.engine.records import AttemptRecord, ResponseRecord
from app.services.auth import service as auth_service


def openai_prompt(upstream: str, **fields: Any) -> PromptRequest:
    """A pending prompt for `openai/<upstream>` (the mock decides its behaviour by the name),
    to store with `seed`, which sets its owner."""
    return PromptRequest(**_values(upstream, fields))


def new_prompt(upstream: str, **fields: Any) -> NewPrompt:
    """The same as a submission makes it, for `Recorder.create_prompt`."""
    return NewPrompt(**_values(upstream, fields))


def _values(upstream: str, fields: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "model": f"openai/{upstream}",
        "prompt_type": "text",
        "prompt_text": "a prompt written by the test",
        "status": PromptStatus.PENDING,
        "created_at": utcnow(),
        "provider": "openai",
        "upstream_model": upstream,
        "parameters": {},
        "meta": {},
        "executions": 0,
    }
    values.update(fields)
    return values


async def seed(sessions: SessionFactory, prompts: list[PromptRequest]) -> dict[str, str]:
    """Store the prompts as a new user's; return the headers of that user's key."""
    async with sessions() as session:
        user = await auth_service.create_user(session, email=f"{uuid.uuid4().hex[:10]}@example.com")
        _, key = await auth_service.create_api_key(session, user=user)
        for prompt in prompts:
            prompt.user_id = user.id
            session.add(prompt)
        await session.commit()
    return {"Authorization": f"Bearer {key}"}


def successful_call(model: str) -> tuple[AttemptRecord, ResponseRecord]:
    """An attempt and the answer it produced, as the executor would record them."""
    now = utcnow()
    attempt = AttemptRecord(
        provider="openai", model=model, started_at=now, ended_at=now, outcome="success"
    )
    response = ResponseRecord(
        response_text="answer",
        duration_ms=1,
        provider="openai",
        upstream_model=model,
        input_tokens=1,
        output_tokens=1,
        usage_estimated=False,
        cost_usd=Decimal(0),
        finish_reason="stop",
        catalogue_version=None,
    )
    return attempt, response
