"""Each process's copy of the prompt types: its own changes at once, others' within the TTL."""

from __future__ import annotations

import asyncio

from app.services.prompt_types.cache import PromptTypeCache
from tests.conftest import Api
from tests.prompt_types.helpers import define, unique


async def test_another_process_sees_a_change_within_the_ttl(api: Api):
    admin = await api.new_user(is_admin=True)
    name = unique()
    await define(api, admin, name, system_instruction="v1")
    other = PromptTypeCache(api.sessions, ttl_seconds=0.3)  # as another process holds it
    first = await other.get(name)
    assert first is not None and first.version == 1

    await define(api, admin, name, system_instruction="v2")
    mine = await api.app.state.services.prompt_types.get(name)
    assert mine is not None and mine.version == 2  # this process: at once
    stale = await other.get(name)
    assert stale is not None and stale.version == 1  # the other: not yet
    await asyncio.sleep(0.35)
    fresh = await other.get(name)
    assert fresh is not None and fresh.version == 2 and fresh.system_instruction == "v2"
    assert await other.get(unique("undefined")) is None


async def test_concurrent_lookups_share_one_load(api: Api):
    loads = 0

    def sessions():  # type: ignore[no-untyped-def]
        nonlocal loads
        loads += 1
        return api.sessions()

    cache = PromptTypeCache(sessions)  # type: ignore[arg-type]
    results = await asyncio.gather(*(cache.get(unique("undefined")) for _ in range(20)))
    assert results == [None] * 20 and loads == 1
    await cache.get(unique("undefined"))
    assert loads == 1  # within the TTL: no query at all
