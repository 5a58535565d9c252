"""The cap on how many prompts one user may have waiting to run (MAX_PENDING_PER_USER).

A user who submits faster than their prompts run grows a backlog. The runners share their
capacity fairly between users (app/engine/runners.py), so that backlog delays nobody else;
but it is still rows, broker messages and ids in a runner's memory, so past the cap a
submission is a 429 `too_many_pending_prompts` until some of them have started.

Counting the user's pending rows on every submission would cost the busiest request a
database round trip (the count costs about as much CPU as the rest of the submission). So
each API process keeps, per user, the count it last read and how many it has accepted since:
it reads the count again at most every REFRESH_SECONDS, in the background while the user is
far below the cap, and before answering once the estimate is past half of it. So the cap is
approximate by about a refresh: a user at it is refused, but one whose prompts have just
started may be refused until the next read shows it (a second at most: `Retry-After`), and
several API processes, or a submission racing the read, may let a few more through.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select

from app.db.database import SessionFactory
from app.db.models import IS_PENDING, PromptRequest
from app.kit.errors import AppError

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
MAX_USERS = 10_000  # users remembered; past that the process starts over (and reads again)


class TooManyPending(AppError):
    status_code = 429
    code = "too_many_pending_prompts"
    title = "Too many requests"


@dataclass(slots=True)
class _Count:
    pending: int = 0  # as last read
    accepted: int = 0  # accepted here since that read
    read_at: float = -math.inf
    reading: asyncio.Task[None] | None = None

    @property
    def estimate(self) -> int:
        return self.pending + self.accepted


class PendingGauge:
    def __init__(self, sessions: SessionFactory, *, limit: int) -> None:
        self._sessions = sessions
        self.limit = limit  # 0: no cap
        self._counts: dict[uuid.UUID, _Count] = {}

    async def admit(self, user_id: uuid.UUID) -> None:
        """Count one more prompt for the user, or raise `TooManyPending` at the cap."""
        if self.limit <= 0:
            return
        count = self._counts.get(user_id)
        if count is None:
            if len(self._counts) >= MAX_USERS:
                self._counts.clear()
            count = self._counts[user_id] = _Count()
        stale = time.monotonic() - count.read_at >= REFRESH_SECONDS
        if count.estimate * 2 >= self.limit:
            if stale:
                await self._read(user_id, count)
            if count.estimate >= self.limit:
                raise TooManyPending(
                    f"You have {count.estimate:,} prompts waiting to run, the most allowed "
                    f"(MAX_PENDING_PER_USER, {self.limit:,}); submit more once some have "
                    "started.",
                    extra={"limit": self.limit},
                    headers={"Retry-After": str(math.ceil(REFRESH_SECONDS))},
                )
        elif stale and count.reading is None:
            count.reading = asyncio.create_task(self._read_quietly(user_id, count))
        count.accepted += 1

    async def aclose(self) -> None:
        reading = [c.reading for c in self._counts.values() if c.reading is not None]
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)

    async def _read(self, user_id: uuid.UUID, count: _Count) -> None:
        accepted = count.accepted  # (accepted before the read: in the count, or about to be)
        count.read_at = time.monotonic()
        async with self._sessions() as session:
            pending = await session.scalar(
                select(func.count())
                .select_from(PromptRequest)
                .where(PromptRequest.user_id == user_id, IS_PENDING)
            )
        count.pending = int(pending or 0)
        count.accepted = max(0, count.accepted - accepted)

    async def _read_quietly(self, user_id: uuid.UUID, count: _Count) -> None:
        try:
            await self._read(user_id, count)
        except Exception as exc:  # the next submission tries again; an outage shows elsewhere
            logger.debug("could not count pending prompts (%s)", type(exc).__name__)
        finally:
            count.reading = None
