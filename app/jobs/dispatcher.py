"""Dispatchers hand a committed prompt to something that will execute it.

The embedded default is `EmbeddedRunner`, an asyncio worker pool inside the API process. A
dispatch is only a hint: the database row is the job, and the sweeper re-dispatches whatever a
dispatcher dropped, so `dispatch` never raises into the request that committed the prompt.

Cancellation goes through the database too (`Recorder.cancel`): every runner looks every
CANCEL_POLL_SECONDS for cancellations requested of the prompts it holds, whichever process
the request came through; `Dispatcher.cancel` only lets a runner in the requesting process
stop the prompt at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.db.database import lost_connection
from app.prompts.batch_writes import Claim
from app.prompts.recorder import Recorder

logger = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 1.0
CANCEL_WAIT_SECONDS = 2.0


class Dispatcher(Protocol):
    async def dispatch(self, prompt_id: uuid.UUID) -> bool:
        """Hand the prompt on; False if it was already queued here or could not be handed on.
        Never raises."""
        ...

    @property
    def room(self) -> int | None:
        """How many more prompts it takes before it is full; None: no limit."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def cancel(self, prompt_id: uuid.UUID) -> None:
        """Its cancellation is committed: stop the prompt now if it runs in this process.
        (Runners elsewhere find the request in the database.) Never raises."""
        ...


@dataclass(slots=True)
class _Held:
    """A claim this process holds, and the task executing it."""

    claim: Claim
    task: asyncio.Task[None]
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class EmbeddedRunner:
    """Claims and runs prompts on this process's event loop, at most `concurrency` at once.

    While it holds claims it renews their leases every third of the lease, so a claim expires
    (and the sweeper recovers the prompt) only when this process has stopped or lost the
    database. At shutdown, claims still running after a short grace are handed back.

    Each held prompt executes in a task of its own, so that a cancellation stops that prompt
    alone: its in-flight provider call is abandoned (and recorded by the executor), then the
    prompt ends `cancelled`. A cancelled prompt task is told apart from a shutdown by whether
    the worker awaiting it is itself being cancelled.
    """

    def __init__(
        self,
        execute: Callable[[Claim], Coroutine[Any, Any, None]],
        *,
        recorder: Recorder,
        concurrency: int,
        lease_seconds: float,
        shutdown_grace_seconds: float = 5.0,
        max_backlog: int | None = None,
        cancel_poll_seconds: float = CANCEL_POLL_SECONDS,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self._execute = execute
        self._recorder = recorder
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._grace = shutdown_grace_seconds
        self._queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        self._known: set[uuid.UUID] = set()  # queued or running here: dispatch is idempotent
        self._held: dict[uuid.UUID, _Held] = {}  # claims this process holds
        self._workers: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._cancel_poll = cancel_poll_seconds
        self._drained = asyncio.Event()  # set whenever no claim is held
        self._drained.set()
        self._max_backlog = max_backlog
        self._on_room = on_room

    async def dispatch(self, prompt_id: uuid.UUID) -> bool:
        return self.dispatch_nowait(prompt_id)

    def dispatch_nowait(self, prompt_id: uuid.UUID) -> bool:
        if prompt_id in self._known:
            return False
        self._known.add(prompt_id)
        self._queue.put_nowait(prompt_id)
        return True

    @property
    def backlog(self) -> int:
        """Prompts queued or running here."""
        return len(self._known)

    @property
    def room(self) -> int | None:
        """How many more prompts fit under `max_backlog` (None: no limit). A Celery worker
        takes its next task only while there is room, and so does the sweeper, so that an
        overloaded worker slows down (the broker and the database keep the rest) instead of
        piling up work it cannot start. `on_room` is called whenever a prompt leaves."""
        if self._max_backlog is None:
            return None
        return max(0, self._max_backlog - len(self._known))

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"prompt-runner-{i}")
            for i in range(self._concurrency)
        ]
        self._renewer = asyncio.create_task(
            keep_leases(self._recorder, self._held.keys, lease_seconds=self._lease_seconds),
            name="prompt-lease-renewer",
        )
        self._watcher = asyncio.create_task(
            watch_cancellations(
                self._recorder, self._held.keys, self._stop_prompt, poll_seconds=self._cancel_poll
            ),
            name="prompt-cancel-watcher",
        )

    async def cancel(self, prompt_id: uuid.UUID) -> None:
        """Stop the prompt if this process runs it, and wait (briefly) until it has ended, so
        that the caller can read its final status."""
        held = self._held.get(prompt_id)
        if held is None:
            return  # not here: queued ones are no longer claimable, others are elsewhere
        _stop(held)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held.ended.wait(), CANCEL_WAIT_SECONDS)

    async def stop(self) -> None:
        for background in (self._renewer, self._watcher):
            if background is not None:
                background.cancel()
        # Queued prompts stay pending in the database; only running ones need handing back.
        if self._held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self._grace)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.gather(
            *(t for t in (self._renewer, self._watcher) if t is not None), return_exceptions=True
        )
        if self._held:
            claims = [held.claim for held in self._held.values()]
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
                if self._on_room is not None:
                    self._on_room()

    async def _run(self, prompt_id: uuid.UUID) -> None:
        try:
            claim = await self._recorder.claim(prompt_id, lease_seconds=self._lease_seconds)
        except Exception:
            logger.warning("could not claim prompt %s; the sweeper will retry", prompt_id)
            return
        if claim is None:
            return  # finished, cancelled, or another runner has it
        task = asyncio.create_task(self._execute(claim), name=f"prompt-{prompt_id}")
        held = self._held[prompt_id] = _Held(claim, task)
        self._drained.clear()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # shutdown: stays held, so stop() hands it back
            # Only this prompt's task was cancelled: its cancellation was requested.
            try:
                await self._recorder.finish_cancelled(claim)
            except Exception:
                # Its lease is no longer renewed: once it expires, the sweeper cancels it.
                logger.warning("could not record the cancellation of prompt %s", prompt_id)
        except Exception as exc:
            # Its lease is no longer renewed: the sweeper recovers it once the lease expires.
            if lost_connection(exc):
                logger.warning("prompt %s: the database was lost; its lease will expire", prompt_id)
            else:
                logger.exception("executing prompt %s failed unexpectedly", prompt_id)
        self._held.pop(prompt_id, None)
        held.ended.set()
        if not self._held:
            self._drained.set()

    def _stop_prompt(self, prompt_id: uuid.UUID) -> None:
        held = self._held.get(prompt_id)
        if held is not None:
            _stop(held)


async def keep_leases(
    recorder: Recorder, held: Callable[[], Collection[uuid.UUID]], *, lease_seconds: float
) -> None:
    """Forever: every third of the lease, renew the leases of the prompts `held()` names, so
    that only a process that stopped (or lost the database) lets its claims expire."""
    while True:
        await asyncio.sleep(lease_seconds / 3)
        prompt_ids = list(held())
        if not prompt_ids:
            continue
        try:
            await recorder.renew_leases(prompt_ids, lease_seconds=lease_seconds)
        except Exception as exc:
            logger.warning("could not renew leases; retrying", exc_info=_trace(exc))


async def watch_cancellations(
    recorder: Recorder,
    held: Callable[[], Collection[uuid.UUID]],
    stop: Callable[[uuid.UUID], None],
    *,
    poll_seconds: float,
) -> None:
    """Forever: `stop` each prompt `held()` names whose cancellation was requested, through
    whichever process (the request is in the database)."""
    while True:
        await asyncio.sleep(poll_seconds)
        prompt_ids = list(held())
        if not prompt_ids:
            continue
        try:
            requested = await recorder.cancel_requested(prompt_ids)
        except Exception as exc:
            logger.warning("could not look for cancellations; retrying", exc_info=_trace(exc))
            continue
        for prompt_id in requested:
            stop(prompt_id)


def _stop(held: _Held) -> None:
    """Cancel a prompt's task once: a second cancel would interrupt its recording."""
    if not held.task.done() and not held.task.cancelling():
        held.task.cancel()


def _trace(exc: BaseException) -> BaseException | bool:
    """A lost database connection is expected during an outage: one line, no traceback."""
    return False if lost_connection(exc) else exc
