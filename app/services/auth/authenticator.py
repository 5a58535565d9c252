"""Who a request's API key speaks for (a `Caller`: the key's user, and what the key itself asks
for), with the callers of recently verified keys kept in memory: the routes' dependency
(app/api/auth.py) and the fast paths both ask `Authenticator`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.db.models import User
from app.engine.ledger import Account
from app.kit.errors import Unauthorized
from app.services.auth import service
from app.services.auth.accounts import accounts_of
from app.services.auth.keys import hash_key


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified key: the user it belongs to, the key's own settings, and the user's roles in
    teams (what they may see: app/services/auth/scope.py)."""

    user: User
    key_prefix: str
    # The key's `drop_params`: leave out, rather than refuse, what a provider cannot honour.
    # None: the request decides, else the server's DROP_PARAMS.
    drop_params: bool | None = None
    key_id: uuid.UUID | None = None
    # The team the key's prompts are billed to and shown in; None: the user's own.
    team_id: uuid.UUID | None = None
    # The models the key may use (as requests name them); None: any.
    allowed_models: frozenset[str] | None = None
    # The user's teams, and their role in each (owner, member, viewer).
    roles: Mapping[uuid.UUID, str] = field(default_factory=dict)
    # The rate limits and budgets its requests are charged to: the key's, the user's (or the
    # server's default), the team's (app/services/limits). Empty for most callers: nothing
    # is checked.
    accounts: tuple[Account, ...] = ()


Lookup = Callable[[], Awaitable[tuple[Caller, datetime | None]]]


class KeyCache:
    """Callers of recently verified keys, so that a busy client does not cost a database round
    trip per request (about a quarter of a /v1 request's CPU, py-spy under `bench/gateways.py`).

    Only successful lookups are kept, each for AUTH_CACHE_SECONDS: a new key works at once,
    while revoking a key or disabling a user takes effect within that time in a process that
    had just seen the key (expiry is still checked on every request). 0 turns caching off.
    The cached `Caller`'s `User` is detached and read-only (its id, email and admin flag),
    and a key's settings changed take effect within the same time. Entries are
    keyed by the key's SHA-256, as in the database: no plaintext key is kept."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, Caller, datetime | None]] = {}
        self._pending: dict[str, asyncio.Future[tuple[Caller, datetime | None]]] = {}

    def get(self, plaintext: str) -> Caller | None:
        digest = hash_key(plaintext)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        cached_at, caller, expires_at = entry
        if time.monotonic() - cached_at > self._ttl or (
            expires_at is not None and expires_at <= utcnow()
        ):
            del self._entries[digest]
            return None
        return caller

    async def verify(self, plaintext: str, lookup: Lookup) -> Caller:
        """The key's caller from `lookup`, kept for next time. Requests that arrive with the same
        key while it is being looked up share that lookup: when an entry expires under load,
        one query refreshes it rather than one per request in flight."""
        digest = hash_key(plaintext)
        pending = self._pending.get(digest)
        if pending is None:
            pending = self._pending[digest] = asyncio.ensure_future(lookup())
            pending.add_done_callback(lambda _: self._pending.pop(digest, None))
        caller, expires_at = await asyncio.shield(pending)
        self.put(plaintext, caller, expires_at)
        return caller

    def forget(self, digest: str) -> None:
        """Drop the entry of the key whose SHA-256 is `digest` (revoked here: at once)."""
        self._entries.pop(digest, None)

    def clear(self) -> None:
        """Drop every entry (limits changed here: they apply at once in this process)."""
        self._entries.clear()

    def put(self, plaintext: str, caller: Caller, expires_at: datetime | None) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()  # a burst of distinct keys: start over rather than grow
        self._entries[hash_key(plaintext)] = (time.monotonic(), caller, expires_at)


class Authenticator:
    """Verifies API keys for a process (`Services.auth`)."""

    def __init__(self, sessions: SessionFactory, *, cache_seconds: float) -> None:
        self.sessions = sessions
        self.cache = KeyCache(cache_seconds)

    def known(self, plaintext: str) -> Caller | None:
        """The caller of a key this process verified recently, without a database round
        trip; None otherwise (the key may still be valid: `caller` looks it up)."""
        return self.cache.get(plaintext)

    async def caller(self, plaintext: str | None) -> Caller:
        """The key's owner and settings, or the `Unauthorized` that refuses it. The lookup
        runs in its own short transaction, so it never holds a lock (SQLite has one writer)
        while the handler records the prompt."""
        if plaintext and (cached := self.cache.get(plaintext)) is not None:
            return cached

        async def lookup() -> tuple[Caller, datetime | None]:
            async with self.sessions.begin() as session:
                user, key = await service.authenticate(session, plaintext=plaintext)
                roles = await service.roles_of(session, user_id=user.id)
                accounts = await accounts_of(
                    session, user_id=user.id, key_id=key.id, team_id=key.team_id
                )
            if key.team_id is not None and roles.get(key.team_id) not in service.MAKERS:
                raise Unauthorized(
                    f"API key {key.prefix}… is scoped to a team its user no longer makes "
                    "prompts in (removed, or now only a viewer).",
                    code="key_team_left",
                )
            caller = Caller(
                user,
                key.prefix,
                key.drop_params,
                key_id=key.id,
                team_id=key.team_id,
                allowed_models=(
                    frozenset(key.allowed_models) if key.allowed_models is not None else None
                ),
                roles=roles,
                accounts=accounts,
            )
            return caller, key.expires_at

        if not plaintext:
            caller, _ = await lookup()  # raises: no key
            return caller
        return await self.cache.verify(plaintext, lookup)
