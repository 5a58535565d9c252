"""Dispatchers hand a committed prompt to something that will execute it.

The embedded default is `EmbeddedRunner`, an asyncio worker pool inside the API process. A
dispatch is only a hint: the database row is the job, and the sweeper re-dispatches whatever a
dispatcher dropped, so `dispatch` never raises into the request that committed the prompt.

Cancellation goes through the database too (`Recorder.cancel`): every runner looks every
CANCEL_POLL_SECONDS for cancellations requested of the prompts it holds, whichever process
the request came through; `Dispatcher.cancel` only lets a runner in the requesting process
stop the prompt at once.

**Fair shares.** A prompt is dispatched with its owner (the user who submitted it). The runner
keeps one queue per owner and serves the owners round-robin (`FairQueue`), so a user with
thousands of prompts queued delays another user's new prompt by one turn, not by their whole
backlog: it starts as soon as a slot frees and the owners queued ahead of it have had one
prompt each. A runner with a cap on what it holds (`max_backlog`: a Celery worker) keeps the
cap fair too: when full, it still takes the prompt of an owner who has nothing here, and leaves
the others' extra prompts `pending` in the database (the broker message is not held up, so
nothing queues behind it), counting them per owner; once slots are free again it claims those
owners' oldest pending prompts from the database, round-robin, as many as there are free
slots (`_pull`). Memory stays bounded by the cap, plus one prompt per owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from app.engine.recorder import Recorder
from app.engine.records import Claim
from app.kit.dbapi import lost_connection

logger = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 1.0
CANCEL_WAIT_SECONDS = 2.0
# Pulling left-over prompts back from the database waits until this share of the slots is free
# (one query claims many), or until the runner has nothing at all to do.
PULL_FRACTION = 0.05

Owner = uuid.UUID | None
"""Whose prompt it is: the user who submitted it (None: not known, e.g. a message sent by an
older version). Capacity is shared fairly between owners."""


class Dispatcher(Protocol):
    async def dispatch(self, prompt_id: uuid.UUID, owner: Owner = None) -> bool:
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


_T = TypeVar("_T")


class FairQueue(Generic[_T]):
    """Items waiting for a runner's slot: one first-in-first-out queue per owner, the owners
    served in turn. An owner who has nothing queued joins the end of the turn order, so its
    item is taken after at most one item of each owner already waiting."""

    def __init__(self) -> None:
        self._queues: dict[Owner, deque[_T]] = {}
        self._turns: deque[Owner] = deque()  # owners with something queued, next first
        self._getters: deque[asyncio.Future[None]] = deque()
        self._size = 0
        self.idle = 0  # takers waiting in `get` for an item: a runner's free slots

    def __len__(self) -> int:
        return self._size

    def put(self, owner: Owner, item: _T) -> None:
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = deque()
            self._turns.append(owner)
        queue.append(item)
        self._size += 1
        self._wake_next()

    async def get(self) -> tuple[Owner, _T]:
        while not self._size:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            self.idle += 1
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled() and self._size:
                    self._wake_next()  # (it was woken for an item it will not take)
                raise
            finally:
                self.idle -= 1
        owner = self._turns.popleft()
        queue = self._queues[owner]
        item = queue.popleft()
        self._size -= 1
        if queue:
            self._turns.append(owner)
        else:
            del self._queues[owner]
        return owner, item

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def clear(self) -> None:
        self._queues.clear()
        self._turns.clear()
        self._size = 0


class EmbeddedRunner:
    """Claims and runs prompts on this process's event loop, at most `concurrency` at once.

    While it holds claims it renews their leases every third of the lease, so a claim expires
    (and the sweeper recovers the prompt) only when this process has stopped or lost the
    database. At shutdown, claims still running after a short grace are handed back.

    Each held prompt executes in a task of its own, so that a cancellation stops that prompt
    alone: its in-flight provider call is abandoned (and recorded by the executor), then the
    prompt ends `cancelled`. A cancelled prompt task is told apart from a shutdown by whether
    the worker awaiting it is itself being cancelled.

    Owners share the slots fairly, and with `max_backlog` so do they share the cap (see the
    module docstring).
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
        max_attempts: int = 3,
        cancel_poll_seconds: float = CANCEL_POLL_SECONDS,
    ) -> None:
        self._execute = execute
        self._recorder = recorder
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._grace = shutdown_grace_seconds
        self._queue: FairQueue[uuid.UUID] = FairQueue()
        self._known: set[uuid.UUID] = set()  # queued or running here: dispatch is idempotent
        self._owned: dict[Owner, int] = {}  # how many of `_known` each owner has
        self._held: dict[uuid.UUID, _Held] = {}  # claims this process holds
        # Claims made by a pull (`_pull`), queued and not started yet: no need to claim again.
        self._pulled: dict[uuid.UUID, Claim] = {}
        # Prompts left pending in the database because the runner was full, by owner.
        self._left: dict[uuid.UUID, int] = {}
        self._room_made = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._puller: asyncio.Task[None] | None = None
        self._cancel_poll = cancel_poll_seconds
        self._drained = asyncio.Event()  # set whenever no claim is held
        self._drained.set()
        self._max_backlog = max_backlog
        self._max_attempts = max_attempts

    async def dispatch(self, prompt_id: uuid.UUID, owner: Owner = None) -> bool:
        return self.dispatch_nowait(prompt_id, owner)

    def dispatch_nowait(self, prompt_id: uuid.UUID, owner: Owner = None) -> bool:
        """Queue the prompt; False if it is queued or running here already, or if the runner
        is full and its owner has prompts here already (it then stays `pending` in the
        database, and is pulled back once there is room)."""
        if prompt_id in self._known:
            return False
        full = self._max_backlog is not None and len(self._known) >= self._max_backlog
        if full and self._owned.get(owner):
            if owner is not None:  # (an unknown owner's prompt is the sweeper's to find)
                self._left[owner] = self._left.get(owner, 0) + 1
            return False
        self._admit(prompt_id, owner)
        return True

    def _admit(self, prompt_id: uuid.UUID, owner: Owner) -> None:
        self._known.add(prompt_id)
        self._owned[owner] = self._owned.get(owner, 0) + 1
        self._queue.put(owner, prompt_id)

    def _leave(self, prompt_id: uuid.UUID, owner: Owner) -> None:
        self._known.discard(prompt_id)
        left = self._owned.get(owner, 0) - 1
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)
        if self._left:
            self._room_made.set()

    @property
    def backlog(self) -> int:
        """Prompts queued or running here."""
        return len(self._known)

    @property
    def room(self) -> int | None:
        """How many more prompts fit under `max_backlog` (None: no limit). The sweeper hands a
        runner no more than that, so that an overloaded worker leaves old pending prompts in
        the database (for itself later, or another worker) instead of piling up work it cannot
        start."""
        if self._max_backlog is None:
            return None
        return max(0, self._max_backlog - len(self._known))

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"prompt-runner-{i}")
            for i in range(self._concurrency)
        ]
        self._renewer = asyncio.create_task(
            keep_leases(self._recorder, self._leased, lease_seconds=self._lease_seconds),
            name="prompt-lease-renewer",
        )
        self._watcher = asyncio.create_task(
            watch_cancellations(
                self._recorder, self._held.keys, self._stop_prompt, poll_seconds=self._cancel_poll
            ),
            name="prompt-cancel-watcher",
        )
        if self._max_backlog is not None:
            self._puller = asyncio.create_task(self._pull_left(), name="prompt-puller")

    def _leased(self) -> list[uuid.UUID]:
        """Every claim whose lease this runner keeps: running, or pulled and waiting."""
        return [*self._held, *self._pulled]

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
        for background in (self._renewer, self._watcher, self._puller):
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
            *(t for t in (self._renewer, self._watcher, self._puller) if t is not None),
            return_exceptions=True,
        )
        # Queued ids stay pending in the database; pulled claims are handed back with the rest.
        self._queue.clear()
        if self._held or self._pulled:
            claims = [held.claim for held in self._held.values()] + list(self._pulled.values())
            self._pulled.clear()
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
            owner, prompt_id = await self._queue.get()
            try:
                await self._run(prompt_id)
            finally:
                self._leave(prompt_id, owner)

    async def _run(self, prompt_id: uuid.UUID) -> None:
        claim = self._pulled.pop(prompt_id, None)
        if claim is None:
            try:
                claim = await self._recorder.claim(prompt_id, lease_seconds=self._lease_seconds)
            except Exception:
                logger.warning("could not claim prompt %s; the sweeper will retry", prompt_id)
                return
            if claim is None:  # (a pull may have claimed it meanwhile: then it runs here)
                claim = self._pulled.pop(prompt_id, None)
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
            if lost_connection(exc):
                # Its lease is no longer renewed: the sweeper recovers it once it expires.
                logger.warning("prompt %s: the database was lost; its lease will expire", prompt_id)
            else:
                await self._failed(claim, exc)
        self._held.pop(prompt_id, None)
        held.ended.set()
        if not self._held:
            self._drained.set()

    async def _failed(self, claim: Claim, exc: Exception) -> None:
        """Executing the prompt raised (a bug, or a stored row it cannot handle: provider
        failures are the executor's, and end in an outcome). Back to `pending`, this execution
        counted, for the sweeper to try again; after MAX_ATTEMPTS executions, `failed` with
        `internal_error`. The traceback is logged once, at its first execution."""
        prompt_id = claim.prompt_id
        if claim.fence == 1:
            logger.exception("executing prompt %s failed unexpectedly", prompt_id)
        else:
            logger.warning(
                "executing prompt %s failed unexpectedly again (%s, execution %d of %d)",
                prompt_id,
                type(exc).__name__,
                claim.fence,
                self._max_attempts,
            )
        try:
            if claim.fence >= self._max_attempts:
                await self._recorder.finish(
                    claim,
                    attempt=None,
                    error_code="internal_error",
                    error_message=f"Processing this prompt failed in each of its "
                    f"{claim.fence} executions ({type(exc).__name__}); it is not retried. The "
                    "server's log has the details.",
                )
            else:
                await self._recorder.release([claim], counted=True)
        except Exception:
            # Its lease is no longer renewed: the sweeper recovers it once it expires.
            logger.warning("could not record the failure of prompt %s", prompt_id)

    def _stop_prompt(self, prompt_id: uuid.UUID) -> None:
        held = self._held.get(prompt_id)
        if held is not None:
            _stop(held)

    async def _pull_left(self) -> None:
        """Forever: once slots are free and nothing queued here waits for them, claim back
        from the database the prompts that were left there while the runner was full, the
        owners in turn. Only as many as there are free slots: a claimed prompt is `running`,
        so it starts at once rather than waiting here with that status."""
        assert self._max_backlog is not None
        batch = max(1, int(self._concurrency * PULL_FRACTION))
        while True:
            await self._room_made.wait()
            self._room_made.clear()
            free = self._queue.idle - len(self._queue)  # slots that nothing here will take
            room = min(free, self._max_backlog - len(self._known))
            if not self._left or room <= 0 or (room < batch and self._held):
                continue
            try:
                await self._pull(room)
            except Exception as exc:
                # They are pending in the database: the next room, or a sweeper, finds them.
                logger.warning("could not pull waiting prompts; retrying", exc_info=_trace(exc))
                await asyncio.sleep(1.0)
                self._room_made.set()

    async def _pull(self, room: int) -> None:
        """Claim up to `room` left-over prompts, an equal share per owner (what an owner
        cannot use goes to the next). An owner served goes to the end of the order, so that
        when the room is smaller than the number of owners, the next pull starts with those
        this one did not reach."""
        owners = list(self._left)
        index = -1
        for index, owner in enumerate(owners):
            share = -(-room // (len(owners) - index))  # ceil: what is left, split evenly
            counted = self._left.get(owner, 0)
            claims = await self._recorder.claim_pending_of(
                owner, limit=share, lease_seconds=self._lease_seconds
            )
            room -= len(claims)
            new = 0
            for claim in claims:
                # A prompt queued here as an id (or being claimed by it) runs with this claim.
                self._pulled[claim.prompt_id] = claim
                if claim.prompt_id not in self._known:
                    self._admit(claim.prompt_id, owner)
                    new += 1
            now = self._left.pop(owner, 0)
            # Fewer than asked: the database had no more of its pending prompts, except any
            # left here while this claim ran.
            left = now - counted if len(claims) < share else now - new
            if left > 0:
                self._left[owner] = left
            if room <= 0:
                break
        if index == len(owners) - 1 and owners[0] in self._left:
            # Every owner was reached, and each went to the end in turn: the order is as it
            # was, and the first would get the rounded-up share every time (3 free slots, two
            # owners: 2 and 1, 2 and 1, ...). Its turn to come last.
            self._left[owners[0]] = self._left.pop(owners[0])
        if self._left:
            self._room_made.set()  # more to pull once this is under way


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
