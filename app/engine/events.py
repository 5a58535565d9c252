"""Live prompt events: status changes and generated text, pushed to whoever waits for them.

`POST /ai/prompts/` with `Prefer: wait=N` and `GET /ai/prompts/{id}/events` wait on these
rather than polling the database. Whoever changes a prompt's status publishes it after the
commit (the recorder); an executor that streams publishes the text as it arrives.

- Embedded mode: everything happens in one process, so `LocalBus` hands events to in-memory
  queues.
- Celery mode: a prompt runs in a worker while its waiter sits in an API process, so `RedisBus`
  publishes on Redis pub/sub (channel `pm:prompt:<id>`, EVENTS_REDIS_URL, by default the
  broker's Redis). Each process keeps one subscriber connection and fans messages out to its
  local waiters.

Events are a fast path, not the record: a waiter subscribes first and then reads the prompt's
state from the database once, so an event published before it subscribed is never missed; a
lost event (Redis restarting) costs a waiter its wait (it answers with the current state),
never a prompt.

Text deltas are published only for prompts someone watches when their provider call starts
(`watched`), so unwatched prompts keep the cheaper non-streamed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic_core import to_json

from app.kit.group_commit import GroupCommit

if TYPE_CHECKING:
    from redis.asyncio import Connection

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "pm:prompt:"
WATCH_PREFIX = "pm:watch:"
WATCH_TTL_SECONDS = 60
QUEUE_LIMIT = 1000  # events buffered per waiter before the oldest deltas are dropped
PUBLISH_DELAY_SECONDS = 0.001  # see RedisBus._send


@dataclass(frozen=True, slots=True)
class PromptEvent:
    """`status` carries the new status; `delta` carries generated text."""

    prompt_id: uuid.UUID
    kind: str  # "status" | "delta"
    status: str | None = None
    text: str | None = None

    def to_json(self) -> bytes:
        return to_json({"p": self.prompt_id, "k": self.kind, "s": self.status, "t": self.text})

    @classmethod
    def from_json(cls, raw: str | bytes) -> PromptEvent:
        data: dict[str, Any] = json.loads(raw)
        return cls(uuid.UUID(data["p"]), data["k"], data.get("s"), data.get("t"))


class Subscription:
    """The events of one prompt, for one waiter."""

    def __init__(self, *, follow_text: bool) -> None:
        self.follow_text = follow_text
        self._queue: asyncio.Queue[PromptEvent] = asyncio.Queue(QUEUE_LIMIT)

    def put(self, event: PromptEvent) -> None:
        if self._queue.full():  # a waiter that does not read: lose text, never block
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(event)

    async def get(self) -> PromptEvent:
        """The next event (bound the wait with `asyncio.timeout`)."""
        return await self._queue.get()


class EventBus(Protocol):
    async def publish(self, events: Sequence[PromptEvent]) -> None:
        """Never raises: events are a fast path. Sent in order, but not necessarily before
        this returns (the caller's work never waits on the bus)."""
        ...

    def subscribe(
        self, prompt_id: uuid.UUID, *, follow_text: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Events of the prompt from now on; `follow_text` asks for its text as it is
        generated (honoured if its provider call has not started yet)."""
        ...

    async def watched(self, prompt_id: uuid.UUID) -> bool:
        """Whether someone follows this prompt's text (see the module docstring)."""
        ...

    async def aclose(self) -> None: ...


class _Fanout:
    """Local waiters by prompt id: what both buses deliver to."""

    def __init__(self) -> None:
        self.waiters: dict[uuid.UUID, set[Subscription]] = {}

    def deliver(self, event: PromptEvent) -> None:
        for subscription in self.waiters.get(event.prompt_id, ()):
            subscription.put(event)

    def followed(self, prompt_id: uuid.UUID) -> bool:
        return any(s.follow_text for s in self.waiters.get(prompt_id, ()))

    @contextlib.contextmanager
    def joined(self, prompt_id: uuid.UUID, *, follow_text: bool) -> Iterator[Subscription]:
        subscription = Subscription(follow_text=follow_text)
        self.waiters.setdefault(prompt_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            waiting = self.waiters.get(prompt_id)
            if waiting is not None:
                waiting.discard(subscription)
                if not waiting:
                    del self.waiters[prompt_id]


class LocalBus:
    """Embedded mode: publisher and waiters share the process."""

    def __init__(self) -> None:
        self._fanout = _Fanout()

    async def publish(self, events: Sequence[PromptEvent]) -> None:
        for event in events:
            self._fanout.deliver(event)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, prompt_id: uuid.UUID, *, follow_text: bool = False
    ) -> AsyncIterator[Subscription]:
        with self._fanout.joined(prompt_id, follow_text=follow_text) as subscription:
            yield subscription

    async def watched(self, prompt_id: uuid.UUID) -> bool:
        return self._fanout.followed(prompt_id)

    async def aclose(self) -> None:
        pass


class RedisBus:
    """Celery mode: Redis pub/sub between workers and API processes."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis  # only in Celery mode

        self._redis = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._fanout = _Fanout()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._outbox: list[PromptEvent] = []
        self._lookups = GroupCommit(self._watched_many)
        self._sender: asyncio.Task[None] | None = None
        self._publisher: Connection | None = None

    async def publish(self, events: Sequence[PromptEvent]) -> None:
        """Queued for the sender, which writes everything queued meanwhile, in order, at once:
        awaiting a round trip per event cost a request its latency and about 4 % of its CPU
        (py-spy, `bench/gateways.py`)."""
        self._outbox.extend(events)
        if self._outbox and self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="prompt-events-out")

    async def _send(self) -> None:
        """PUBLISH on a connection of its own on which Redis sends no replies (CLIENT REPLY
        OFF): nothing to wait for or read back, which costs less CPU per request than a
        redis-py pipeline and its replies (bench/results/design.md). What cannot be sent
        (Redis down) is dropped with a warning, and the next batch reconnects: events are a
        fast path.

        It starts PUBLISH_DELAY_SECONDS after the first event: the commit that produced it has
        just woken its waiters, and their answers go out first (publishing straight away was
        spent before the answer: bench/results/design.md); what is published meanwhile joins
        the same write."""
        try:
            await asyncio.sleep(PUBLISH_DELAY_SECONDS)
            while self._outbox:
                events, self._outbox = self._outbox, []
                try:
                    connection = await self._publishing()
                    commands = [
                        ("PUBLISH", f"{CHANNEL_PREFIX}{event.prompt_id}", event.to_json())
                        for event in events
                    ]
                    await connection.send_packed_command(
                        connection.pack_commands(commands), check_health=False
                    )
                except Exception as exc:
                    logger.warning("could not publish %d prompt events (%s)", len(events), exc)
                    await self._drop_publisher()
        finally:
            self._sender = None

    async def _publishing(self) -> Connection:
        if self._publisher is None:
            connection = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await connection.connect()
                # (no reply to this one either)
                await connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)
            except BaseException:
                await connection.disconnect()
                raise
            self._publisher = connection
        return self._publisher

    async def _drop_publisher(self) -> None:
        connection, self._publisher = self._publisher, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, prompt_id: uuid.UUID, *, follow_text: bool = False
    ) -> AsyncIterator[Subscription]:
        channel = f"{CHANNEL_PREFIX}{prompt_id}"
        with self._fanout.joined(prompt_id, follow_text=follow_text) as subscription:
            first = len(self._fanout.waiters[prompt_id]) == 1
            try:
                if follow_text:
                    await self._watch(prompt_id)
                if first:
                    async with self._lock:
                        await self._pubsub.subscribe(channel)
                        if self._reader is None or self._reader.done():
                            self._reader = asyncio.create_task(self._read(), name="prompt-events")
                yield subscription
            finally:
                if (
                    prompt_id not in self._fanout.waiters
                    or len(self._fanout.waiters[prompt_id]) == 1
                ):
                    with contextlib.suppress(Exception):
                        async with self._lock:
                            await self._pubsub.unsubscribe(channel)

    async def _watch(self, prompt_id: uuid.UUID) -> None:
        """Mark the prompt's text followed, for whichever worker runs it to see."""
        with contextlib.suppress(Exception):
            await self._redis.set(f"{WATCH_PREFIX}{prompt_id}", b"1", ex=WATCH_TTL_SECONDS)

    async def watched(self, prompt_id: uuid.UUID) -> bool:
        return await self._lookups.submit(prompt_id)

    async def _watched_many(self, prompt_ids: Sequence[uuid.UUID]) -> list[bool]:
        """One pipeline for every prompt asked about meanwhile: a worker starting a thousand
        executions at once would otherwise want a thousand connections (the pool has 100)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for prompt_id in prompt_ids:
                    pipe.exists(f"{WATCH_PREFIX}{prompt_id}")
                return [bool(found) for found in await pipe.execute()]
        except Exception:
            return [False] * len(prompt_ids)

    async def aclose(self) -> None:
        await self._lookups.aclose()
        if self._sender is not None:  # what is queued still goes out
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._drop_publisher()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("prompt events: lost the Redis subscription (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                continue
            try:
                self._fanout.deliver(PromptEvent.from_json(message["data"]))
            except (ValueError, KeyError, TypeError):
                logger.warning("prompt events: ignored a malformed message")
