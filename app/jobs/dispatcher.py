"""Dispatchers hand a committed prompt to something that will execute it.

The embedded default is `EmbeddedRunner`, an asyncio worker pool inside the API process. A
dispatch is only a hint: the database row is the job, and the sweeper re-dispatches whatever a
dispatcher dropped, so `dispatch` never raises into the request that committed the prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from app.prompts.recorder import Claim, Recorder

logger = logging.getLogger(__name__)


class Dispatcher(Protocol):
    async def dispatch(self, prompt_id: uuid.UUID) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class EmbeddedRunner:
    """Claims and runs prompts on this process's event loop, at most `concurrency` at once.

    While it holds claims it renews their leases every third of the lease, so a claim expires
    (and the sweeper recovers the prompt) only when this process has stopped or lost the
    database. At shutdown, claims still running after a short grace are handed back.
    """

    def __init__(
        self,
        execute: Callable[[Claim], Awaitable[None]],
        *,
        recorder: Recorder,
        concurrency: int,
        lease_seconds: float,
        shutdown_grace_seconds: float = 5.0,
        max_backlog: int | None = None,
    ) -> None:
        self._execute = execute
        self._recorder = recorder
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._grace = shutdown_grace_seconds
        self._queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        self._known: set[uuid.UUID] = set()  # queued or running here: dispatch is idempotent
        self._held: dict[uuid.UUID, Claim] = {}  # claims this process holds
        self._workers: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()  # set whenever no claim is held
        self._drained.set()
        self._max_backlog = max_backlog
        self._room = asyncio.Condition()

    async def dispatch(self, prompt_id: uuid.UUID) -> None:
        if prompt_id not in self._known:
            self._known.add(prompt_id)
            self._queue.put_nowait(prompt_id)

    async def wait_for_room(self) -> None:
        """Wait while `max_backlog` prompts are queued or running here. A Celery worker calls
        this before taking its next task, so an overloaded worker slows down (the broker keeps
        the rest) instead of piling up work it cannot start."""
        limit = self._max_backlog
        if limit is None:
            return
        async with self._room:
            await self._room.wait_for(lambda: len(self._known) < limit)

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"prompt-runner-{i}")
            for i in range(self._concurrency)
        ]
        self._renewer = asyncio.create_task(self._renew(), name="prompt-lease-renewer")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        # Queued prompts stay pending in the database; only running ones need handing back.
        if self._held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self._grace)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._renewer is not None:
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self._held:
            claims = list(self._held.values())
            try:
                await self._recorder.release(claims)
                logger.info("handed back %d running prompts at shutdown", len(claims))
            except Exception:
                logger.warning(
                    "could not hand back %d prompts; their leases will expire", len(claims)
                )
        self._workers.clear()

    async def _work(self) -> None:
        while True:
            prompt_id = await self._queue.get()
            try:
                await self._run(prompt_id)
            finally:
                self._known.discard(prompt_id)
                if self._max_backlog is not None:
                    async with self._room:
                        self._room.notify()

    async def _run(self, prompt_id: uuid.UUID) -> None:
        try:
            claim = await self._recorder.claim(prompt_id, lease_seconds=self._lease_seconds)
        except Exception:
            logger.warning("could not claim prompt %s; the sweeper will retry", prompt_id)
            return
        if claim is None:
            return  # finished, or another runner has it
        self._held[prompt_id] = claim
        self._drained.clear()
        try:
            await self._execute(claim)
        except asyncio.CancelledError:
            raise  # shutdown: stays held, so stop() hands it back
        except Exception:
            # Its lease is no longer renewed: the sweeper recovers it once the lease expires.
            logger.exception("executing prompt %s failed unexpectedly", prompt_id)
        self._held.pop(prompt_id, None)
        if not self._held:
            self._drained.set()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                await self._recorder.renew_leases(
                    list(self._held), lease_seconds=self._lease_seconds
                )
            except Exception:
                logger.warning("could not renew leases; retrying", exc_info=True)
