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
from app.engine.events import EventBus
from app.engine.recorder import FINAL_STATUSES
from app.kit.errors import AppError
from app.services.auth.scope import PromptScope
from app.services.prompts import service
from app.services.prompts.schemas import PromptDetail

KEEPALIVE_SECONDS = 15.0


class TooManyStreams(AppError):
    status_code = 429
    code = "too_many_streams"
    title = "Too many requests"


class StreamSlots:
    """What each user holds open in this process while waiting for prompts: `/events` streams
    and `Prefer: wait` submissions, at most MAX_STREAMS_PER_USER at once (0: no cap). Each one
    holds a connection, a subscription and its queue of events; without a cap one key could
    open thousands (file handles and memory that every other user shares). Past the cap a
    stream is a 429 `too_many_streams`, and a `Prefer: wait` is not honoured (the submission
    answers 202 at once, as RFC 7240 allows)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[uuid.UUID, int] = {}

    def held(self, user_id: uuid.UUID) -> int:
        return self._held.get(user_id, 0)

    def take(self, user_id: uuid.UUID) -> bool:
        held = self._held.get(user_id, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[user_id] = held + 1
        return True

    def give_back(self, user_id: uuid.UUID) -> None:
        held = self._held.get(user_id, 0) - 1
        if held > 0:
            self._held[user_id] = held
        else:
            self._held.pop(user_id, None)

    def refuse(self) -> TooManyStreams:
        return TooManyStreams(
            f"You have {self.limit} event streams and waits open here already, the most "
            "allowed (MAX_STREAMS_PER_USER); close one first.",
            extra={"limit": self.limit},
            headers={"Retry-After": "1"},
        )


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


async def read(sessions: SessionFactory, scope: PromptScope, prompt_id: uuid.UUID) -> PromptDetail:
    async with sessions() as session:
        return await service.get_prompt(session, scope=scope, prompt_id=prompt_id)


async def wait_for_final(
    bus: EventBus,
    sessions: SessionFactory,
    *,
    scope: PromptScope,
    prompt_id: uuid.UUID,
    seconds: float,
) -> PromptDetail | None:
    """The prompt's detail once it is final, or None if it is not within `seconds`."""
    deadline = time.monotonic() + seconds
    async with bus.subscribe(prompt_id) as subscription:
        detail = await read(sessions, scope, prompt_id)
        if detail.status in FINAL_STATUSES:
            return detail
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    event = await subscription.get()
            except TimeoutError:
                break
            if event.kind == "status" and event.status in FINAL_STATUSES:
                return await read(sessions, scope, prompt_id)
    return None


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(
    bus: EventBus,
    sessions: SessionFactory,
    *,
    scope: PromptScope,
    prompt_id: uuid.UUID,
) -> AsyncIterator[bytes]:
    """Server-sent events: `status` at once and at every change, `delta` with the text as it is
    generated (when the prompt's provider call starts after the stream opened), and `final`
    with the whole PromptDetail, after which the stream ends. (The route reads the prompt
    once before, so that a missing one is a 404 rather than an empty stream.)"""
    async with bus.subscribe(prompt_id, follow_text=True) as subscription:
        detail = await read(sessions, scope, prompt_id)
        yield _sse("status", {"id": str(prompt_id), "status": detail.status})
        while detail.status not in FINAL_STATUSES:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    event = await subscription.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                latest = await read(sessions, scope, prompt_id)
                if latest.status != detail.status:
                    yield _sse("status", {"id": str(prompt_id), "status": latest.status})
                detail = latest
                continue
            if event.kind == "delta" and event.text:
                yield _sse("delta", {"text": event.text})
            elif event.kind == "status" and event.status != detail.status:
                yield _sse("status", {"id": str(prompt_id), "status": event.status})
                detail = (
                    await read(sessions, scope, prompt_id)
                    if event.status in FINAL_STATUSES
                    else detail.model_copy(update={"status": event.status})
                )
        yield _sse("final", detail.model_dump(mode="json"))
