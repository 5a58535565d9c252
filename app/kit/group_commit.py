"""Group commit: many callers' writes in one transaction, each caller woken once it is durable.

A process executing hundreds of prompts at once would otherwise spend most of its CPU and its
database's on per-prompt transactions (the ORM claim and finish took most of a worker's CPU:
bench/results/design.md). Here a caller queues its item and waits; one flusher
writes everything queued in one transaction and resolves every waiter from its result.

The flusher starts as soon as the first item arrives and runs again at once if more came in
while it was writing: a lone caller pays one transaction and no timer, and under load the
batches grow by themselves (docs/architecture.md, "The hot path"). Durability is unchanged:
a waiter is woken only after the commit.

The same shape serves the broker (`CeleryDispatcher` publishes the prompts committed during
one publish together, in the next message) and Redis (`RedisBus.watched` asks about all the
prompts starting meanwhile in one pipeline).

A failed batch fails only its own items' waiters. When the failure is not a lost database
(that would fail every item alike), its items are written again one at a time, so that one bad
item cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from app.kit.dbapi import lost_connection

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

MAX_BATCH = 500


class GroupCommit(Generic[In, Out]):
    """Queues items for `write`, which receives a batch and returns one result per item, in
    order, after committing them all.

    `orphaned` is called with the result of an item whose waiter was cancelled while its
    batch was being written: what was committed for nobody (a claim, say) can be undone.
    """

    def __init__(
        self,
        write: Callable[[Sequence[In]], Awaitable[Sequence[Out]]],
        *,
        orphaned: Callable[[Out], Awaitable[None]] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._write = write
        self._orphaned = orphaned
        self._max_batch = max_batch
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_all(), name="group-commit")
        return await future

    async def aclose(self) -> None:
        """Wait until everything queued so far is written."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                # A waiter cancelled before its batch started is simply not written.
                batch = [(item, future) for item, future in batch if not future.cancelled()]
                if batch:
                    await self._flush(batch)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:  # the loop is closing: nobody will wait any longer
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and not lost_connection(exc):
                logger.warning(
                    "a batch of %d writes failed (%s); writing them one at a time",
                    len(batch),
                    type(exc).__name__,
                )
                for one in batch:
                    await self._flush([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
            elif self._orphaned is not None:
                try:
                    await self._orphaned(result)
                except Exception:
                    logger.warning("could not undo a write whose caller had gone", exc_info=True)
