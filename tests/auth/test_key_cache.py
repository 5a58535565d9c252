"""KeyCache: a verified key is trusted for AUTH_CACHE_SECONDS, and requests that arrive with the
same key while it is being looked up share one lookup (no stampede on the database when an
entry expires under load)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest

from app.db.base import utcnow
from app.db.models import User
from app.kit.errors import Unauthorized
from app.services.auth.authenticator import Caller, KeyCache

KEY = "pm_test-key"


def _user() -> User:
    return User(id=uuid.uuid4(), email="cache@example.com", is_admin=False)


class Lookups:
    def __init__(self, user: User, *, expires_at: datetime | None = None) -> None:
        self.caller = Caller(user, "pm_test-ke", drop_params=True)
        self.expires_at, self.count = expires_at, 0
        self.fail: Exception | None = None

    async def __call__(self) -> tuple[Caller, datetime | None]:
        self.count += 1
        await asyncio.sleep(0.05)  # a database round trip
        if self.fail is not None:
            raise self.fail
        return self.caller, self.expires_at


async def test_concurrent_requests_share_one_lookup_then_hit_the_cache():
    cache, lookup = KeyCache(60), Lookups(_user())
    callers = await asyncio.gather(*(cache.verify(KEY, lookup) for _ in range(50)))
    assert lookup.count == 1
    assert {c.user.id for c in callers} == {lookup.caller.user.id}
    assert cache.get(KEY) is lookup.caller
    assert cache.get("pm_other-key") is None


async def test_a_failed_lookup_fails_its_waiters_and_is_not_kept():
    cache, lookup = KeyCache(60), Lookups(_user())
    lookup.fail = Unauthorized("Invalid API key.", code="invalid_api_key")
    results = await asyncio.gather(
        *(cache.verify(KEY, lookup) for _ in range(5)), return_exceptions=True
    )
    assert lookup.count == 1
    assert all(isinstance(r, Unauthorized) for r in results)
    assert cache.get(KEY) is None
    lookup.fail = None
    assert await cache.verify(KEY, lookup) is lookup.caller
    assert lookup.count == 2


async def test_entries_expire_with_the_cache_time_and_with_the_key():
    cache, lookup = KeyCache(0.1), Lookups(_user())
    await cache.verify(KEY, lookup)
    assert cache.get(KEY) is lookup.caller
    await asyncio.sleep(0.15)
    assert cache.get(KEY) is None  # AUTH_CACHE_SECONDS passed: looked up again

    expiring = Lookups(_user(), expires_at=utcnow() + timedelta(milliseconds=100))
    cache = KeyCache(60)
    await cache.verify(KEY, expiring)
    assert cache.get(KEY) is expiring.caller
    await asyncio.sleep(0.15)
    assert cache.get(KEY) is None  # the key itself expired: never trusted past that


@pytest.mark.parametrize("ttl", [0, -1])
async def test_a_cache_time_of_zero_keeps_nothing(ttl: float):
    cache, lookup = KeyCache(ttl), Lookups(_user())
    await cache.verify(KEY, lookup)
    await cache.verify(KEY, lookup)
    assert lookup.count == 2 and cache.get(KEY) is None
