"""Idempotency keys: a request retried with the same `Idempotency-Key` gets the original
result instead of creating a second prompt (and paying for a second provider call).

Plain async functions on a session or a session factory, with nothing of FastAPI in them, so
any endpoint that creates prompts can use them (`POST /ai/prompts/` today):

1. `check_key` validates the header value; `request_fingerprint` hashes the endpoint name and
   the parsed body, so "the same request" means the same fingerprint.
2. `IdempotencyKeys.run_once` looks the user's key up first. An unexpired key sent with the
   same request is a replay: `replay(session, prompt_id)` loads what it created, and nothing
   is created again. Sent with another request, it is a 422 `idempotency_key_reused`.
   Otherwise `create(record)` runs, and must write the key row with `insert_key` in the same
   transaction as the prompt (`Recorder.create_prompt(prompt, idempotency=record)` does): a
   committed prompt always has its key, and a key never points at nothing.
3. Requests racing with one key all miss the lookup; the primary key (user_id, key) lets one
   insert win and the others fail with an IntegrityError, after which each looks again and
   replays the winner. PostgreSQL makes a losing insert wait for the winner's commit and
   SQLite serialises writers, so the winner is visible by then; should it not be, the answer
   is a 409 `idempotency_key_in_flight` with `Retry-After: 1`.

Keys are per user: one user's key never meets another's. A key lives `ttl_seconds`
(IDEMPOTENCY_KEY_TTL_SECONDS); an expired one counts as absent, `insert_key` replaces it, and
the sweeper deletes expired rows in bounded batches (`purge_expired_keys`).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.db.models import IdempotencyKey
from app.kit.errors import Conflict, InvalidInput

T = TypeVar("T")

_KEYS: Table = IdempotencyKey.__table__  # type: ignore[assignment]
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
PURGE_BATCH = 10_000


def check_key(key: str) -> str:
    """An `Idempotency-Key` is 1 to 255 printable ASCII characters (a UUID is a good choice)."""
    if _VALID_KEY.fullmatch(key) is None:
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 printable ASCII characters; a random UUID "
            "per logical request is a good choice.",
            code="invalid_idempotency_key",
        )
    return key


def request_fingerprint(endpoint: str, body: Any) -> str:
    """SHA-256 hex of the endpoint name and a canonical JSON of the (JSON-able) body: keys
    sorted, no whitespace. Hash the parsed body, so that requests that mean the same thing
    (field order, spacing, an omitted optional field or its explicit null) match."""
    canonical = json.dumps(
        {"endpoint": endpoint, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """One user's key as sent with one request, and how long to keep it."""

    user_id: uuid.UUID
    key: str
    fingerprint: str
    ttl_seconds: float


async def find_key(session: AsyncSession, record: IdempotencyRecord) -> uuid.UUID | None:
    """The prompt that this unexpired key created for this same request; None if the user has
    no such key (or it expired). A key sent with another request is a 422."""
    row = (
        await session.execute(
            select(_KEYS.c.fingerprint, _KEYS.c.prompt_id).where(
                _KEYS.c.user_id == record.user_id,
                _KEYS.c.key == record.key,
                _KEYS.c.expires_at > utcnow(),
            )
        )
    ).first()
    if row is None:
        return None
    if row.fingerprint != record.fingerprint:
        raise InvalidInput(
            "This Idempotency-Key was already used with a different request. Send the "
            "original request unchanged to get its result, or use a new key for a new request.",
            code="idempotency_key_reused",
        )
    prompt_id: uuid.UUID = row.prompt_id
    return prompt_id


async def insert_key(
    session: AsyncSession | AsyncConnection, record: IdempotencyRecord, *, prompt_id: uuid.UUID
) -> None:
    """Write the key row in the caller's transaction, after the prompt row it points at,
    replacing an expired row of the same key. If the key is taken (live) meanwhile, the
    insert fails with an IntegrityError: the caller rolls back and `run_once` replays."""
    now = utcnow()
    await session.execute(
        delete(_KEYS).where(
            _KEYS.c.user_id == record.user_id,
            _KEYS.c.key == record.key,
            _KEYS.c.expires_at <= now,
        )
    )
    await session.execute(
        insert(_KEYS).values(
            user_id=record.user_id,
            key=record.key,
            fingerprint=record.fingerprint,
            prompt_id=prompt_id,
            created_at=now,
            expires_at=now + timedelta(seconds=record.ttl_seconds),
        )
    )


async def purge_expired_keys(session: AsyncSession, *, limit: int = PURGE_BATCH) -> int:
    """Delete up to `limit` expired keys, oldest first (one statement, on the expires_at
    index). Returns how many went."""
    expired = (
        select(_KEYS.c.prompt_id)
        .where(_KEYS.c.expires_at <= utcnow())
        .order_by(_KEYS.c.expires_at)
        .limit(limit)
    )
    result = await session.execute(delete(_KEYS).where(_KEYS.c.prompt_id.in_(expired)))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _key_taken(exc: IntegrityError) -> bool:
    # SQLite: "UNIQUE constraint failed: idempotency_keys.user_id, …";
    # PostgreSQL: 'duplicate key value violates unique constraint "pk_idempotency_keys"'.
    return _KEYS.name in str(exc.orig)


@dataclass(frozen=True, slots=True)
class IdempotencyKeys:
    """Where a process keeps idempotency keys (a session factory) and for how long."""

    sessions: SessionFactory
    ttl_seconds: float

    async def run_once(
        self,
        *,
        user_id: uuid.UUID,
        key: str,
        fingerprint: str,
        create: Callable[[IdempotencyRecord], Awaitable[T]],
        replay: Callable[[AsyncSession, uuid.UUID], Awaitable[T | None]],
    ) -> tuple[T, bool]:
        """`create(record)` once per (user, key, request); every other call with them
        returns `replay(session, prompt_id)` of what it created. Returns (result, replayed).

        Raises 422 `invalid_idempotency_key` for a malformed key, 422
        `idempotency_key_reused` for a key first sent with another request, and 409
        `idempotency_key_in_flight` when a concurrent request won the key but its result
        cannot be read yet."""
        record = IdempotencyRecord(user_id, check_key(key), fingerprint, self.ttl_seconds)
        found = await self._replay(record, replay)
        if found is not None:
            return found, True
        try:
            return await create(record), False
        except IntegrityError as exc:
            if not _key_taken(exc):
                raise
        # Lost the race for the key: the winner has committed (see the module docstring).
        found = await self._replay(record, replay)
        if found is not None:
            return found, True
        raise Conflict(
            "A request with this Idempotency-Key is still being processed; retry shortly to "
            "get its result.",
            code="idempotency_key_in_flight",
            headers={"Retry-After": "1"},
        )

    async def _replay(
        self,
        record: IdempotencyRecord,
        replay: Callable[[AsyncSession, uuid.UUID], Awaitable[T | None]],
    ) -> T | None:
        # A short transaction of its own: on SQLite it must not hold the write lock while the
        # prompt is recorded on another connection.
        async with self.sessions() as session:
            prompt_id = await find_key(session, record)
            return None if prompt_id is None else await replay(session, prompt_id)
