"""The sweeper: the safety net that makes a dropped dispatch or a dead runner harmless.

Each pass (at start-up, then every SWEEP_INTERVAL_SECONDS) it
1. returns `running` prompts whose lease expired to `pending`, or fails them with
   `attempts_exhausted` after MAX_ATTEMPTS executions, so a poison prompt cannot loop forever,
   or ends them `cancelled` if their cancellation was requested (never runs them again);
2. dispatches again `pending` prompts older than REDISPATCH_AFTER_SECONDS (all of them at
   start-up: a pending row left by a previous process has nobody running it), taken in turns
   across their owners, so one user's backlog does not hold up another user's prompt here
   either.
3. settles the limits ledger's leftover reservations (app/engine/ledger.py, `sweep`);
4. deletes a batch of expired idempotency keys.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from app.db.base import utcnow
from app.engine.recorder import Recorder
from app.engine.runners import Dispatcher
from app.kit.dbapi import lost_connection

logger = logging.getLogger(__name__)

BATCH = 1000


@dataclass(frozen=True, slots=True)
class SweepReport:
    requeued: int
    failed: int
    cancelled: int
    redispatched: int


class Sweeper:
    def __init__(
        self,
        recorder: Recorder,
        dispatcher: Dispatcher,
        *,
        interval_seconds: float,
        redispatch_after_seconds: float,
        max_attempts: int,
    ) -> None:
        self._recorder = recorder
        self._dispatcher = dispatcher
        self._interval = interval_seconds
        self._redispatch_after = redispatch_after_seconds
        self._max_attempts = max_attempts
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self, *, redispatch_after_seconds: float | None = None) -> SweepReport:
        recovered = await self._recorder.recover_expired(max_attempts=self._max_attempts)
        requeued = [(i, recovered.owners.get(i)) for i in recovered.requeued]
        age = (
            self._redispatch_after if redispatch_after_seconds is None else redispatch_after_seconds
        )
        # A full runner takes nothing more: the rows wait in the database for the next pass.
        room = self._dispatcher.room
        limit = BATCH if room is None else min(BATCH, room)
        due = (
            await self._recorder.due_pending(
                created_before=utcnow() - timedelta(seconds=age), limit=limit
            )
            if limit > 0
            else []
        )
        dispatched = 0
        # Requeued rows are pending and old too: those beyond the room wait for a later pass.
        owners = dict([*requeued, *due])
        for prompt_id in list(owners)[:limit]:
            dispatched += await self._dispatcher.dispatch(prompt_id, owners[prompt_id])
        # Expired idempotency keys: one bounded DELETE per pass (an expired key is already
        # ignored by lookups; this only keeps the table small).
        # Reservations in the limits ledger left by a settle step that was lost (a process
        # stopped between a prompt's end and its settling), or by a prompt never recorded.
        settled = await self._recorder.ledger.sweep()
        if settled:
            logger.info("sweep: %d prompts' reservations settled or released", settled)
        purged = await self._recorder.purge_idempotency_keys()
        if purged:
            logger.info("sweep: %d expired idempotency keys deleted", purged)
        report = SweepReport(
            requeued=len(requeued),
            failed=recovered.failed,
            cancelled=recovered.cancelled,
            redispatched=dispatched,
        )
        # Prompts already queued here are not dispatched again, so a long local queue does
        # not make every pass report the same rows.
        if requeued or recovered.failed or recovered.cancelled or dispatched:
            logger.info("sweep: %s", report)
        return report

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="prompt-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        first = True
        while True:
            try:
                await self.sweep_once(redispatch_after_seconds=0 if first else None)
                first = False
            except Exception as exc:
                if lost_connection(exc):
                    logger.warning("sweep failed: the database is unreachable; will retry")
                else:
                    logger.warning("sweep failed; will retry", exc_info=True)
            await asyncio.sleep(self._interval)
