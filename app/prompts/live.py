"""Waiting for a prompt: `Prefer: wait=N` on submit, and the `/events` stream.

Both subscribe to the prompt's events first and only then read its state from the database,
so a change committed in between is seen either in that read or as an event. After that they
wait on events, not on the database: one read at the start, one when the prompt finishes (for
the full detail), and one every KEEPALIVE_SECONDS of silence on a stream (which also catches an
event that Redis lost, or a prompt run by another API process in embedded mode).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from app.db.database import SessionFactory
from app.prompts import service
from app.prompts.events import EventBus
from app.prompts.recorder import FINAL_STATUSES
from app.prompts.schemas import PromptDetail

KEEPALIVE_SECONDS = 15.0


def prefer_wait(header: str | None, *, cap: float) -> float | None:
    """`wait=N` of a `Prefer` header (RFC 7240), capped; None when absent. As the RFC asks,
    a preference that cannot be read is ignored, not an error."""
    for preference in (header or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            return min(seconds, cap) if seconds > 0 else None
    return None


async def read(sessions: SessionFactory, user_id: uuid.UUID, prompt_id: uuid.UUID) -> PromptDetail:
    async with sessions() as session:
        return await service.get_prompt(session, user_id=user_id, prompt_id=prompt_id)


async def wait_for_final(
    bus: EventBus,
    sessions: SessionFactory,
    *,
    user_id: uuid.UUID,
    prompt_id: uuid.UUID,
    seconds: float,
) -> PromptDetail | None:
    """The prompt's detail once it is final, or None if it is not within `seconds`."""
    deadline = time.monotonic() + seconds
    async with bus.subscribe(prompt_id) as subscription:
        detail = await read(sessions, user_id, prompt_id)
        if detail.status in FINAL_STATUSES:
            return detail
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    event = await subscription.get()
            except TimeoutError:
                break
            if event.kind == "status" and event.status in FINAL_STATUSES:
                return await read(sessions, user_id, prompt_id)
    return None


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(
    bus: EventBus,
    sessions: SessionFactory,
    *,
    user_id: uuid.UUID,
    prompt_id: uuid.UUID,
) -> AsyncIterator[bytes]:
    """Server-sent events: `status` at once and at every change, `delta` with the text as it is
    generated (when the prompt's provider call starts after the stream opened), and `final`
    with the whole PromptDetail, after which the stream ends. (The route reads the prompt
    once before, so that a missing one is a 404 rather than an empty stream.)"""
    async with bus.subscribe(prompt_id, follow_text=True) as subscription:
        detail = await read(sessions, user_id, prompt_id)
        yield _sse("status", {"id": str(prompt_id), "status": detail.status})
        while detail.status not in FINAL_STATUSES:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    event = await subscription.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                latest = await read(sessions, user_id, prompt_id)
                if latest.status != detail.status:
                    yield _sse("status", {"id": str(prompt_id), "status": latest.status})
                detail = latest
                continue
            if event.kind == "delta" and event.text:
                yield _sse("delta", {"text": event.text})
            elif event.kind == "status" and event.status != detail.status:
                yield _sse("status", {"id": str(prompt_id), "status": event.status})
                detail = (
                    await read(sessions, user_id, prompt_id)
                    if event.status in FINAL_STATUSES
                    else detail.model_copy(update={"status": event.status})
                )
        yield _sse("final", detail.model_dump(mode="json"))
