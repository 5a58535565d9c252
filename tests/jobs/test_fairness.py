"""One user's flood never delays another user's new prompt by more than a bounded amount: the
runners serve owners in turn (app/engine/runners.py), embedded and in a Celery worker, where a
full worker leaves the flood's surplus in the database and pulls it back as room frees up.

The bound these tests hold: with every slot busy with user A's prompts, user B's one prompt
starts at the next free slot, so it finishes within about two of A's calls plus the overheads
(BOUND_SECONDS here, where A's backlog takes about FLOOD / CONCURRENCY * CALL_SECONDS, 5 s).
Before, the runner served first in, first out, and B waited for A's whole backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db.database import create_engine, create_session_factory
from app.db.models import PromptRequest, PromptStatus
from app.engine.recorder import Recorder
from app.engine.records import Claim
from app.engine.runners import EmbeddedRunner, FairQueue
from app.services.auth import service as auth_service
from tests.conftest import (
    Api,
    celery_worker,
    make_settings,
    migrate,
    running_api,
    throwaway_database,
)
from tests.jobs.services import RedisServer
from tests.mocks.openai_server import MockOpenAI
from tests.records import new_prompt

FLOOD = 2000
CONCURRENCY = 8
CALL_SECONDS = 0.02
BOUND_SECONDS = 1.5


async def test_the_queue_serves_owners_in_turn():
    queue: FairQueue[str] = FairQueue()
    for i in range(5):
        queue.put("a", f"a{i}")
    queue.put("b", "b0")
    queue.put("c", "c0")
    queue.put("b", "b1")
    taken = [await queue.get() for _ in range(len(queue))]
    assert [item for _, item in taken] == ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]


@contextlib.asynccontextmanager
async def _flood_api(mode: str, mock: MockOpenAI, workdir: Path) -> AsyncIterator[Api]:
    """An app of its own (its runner must see only this test's prompts), its runner (or its
    Celery worker) running CONCURRENCY prompts at once."""
    common: dict[str, Any] = {
        "runner_concurrency": CONCURRENCY,
        "worker_concurrency": CONCURRENCY,
        "local_model_enabled": False,
        "webhook_poll_seconds": 60,
    }
    if mode == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'flood.db'}"
        await migrate(url)
        async with running_api(make_settings(url, mock, **common)) as api:
            yield api
        return
    async with throwaway_database("pm_flood") as url:
        if mode == "postgresql":
            async with running_api(make_settings(url, mock, **common)) as api:
                yield api
            return
        redis = RedisServer(workdir).start()
        try:
            settings = make_settings(url, mock, celery_broker_url=redis.url, **common)
            with celery_worker(settings, workdir / "worker.log"):
                async with running_api(settings) as api:
                    yield api
        finally:
            redis.stop()


async def _not_final(api: Api, user_id: uuid.UUID) -> int:
    async with api.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(PromptRequest)
            .where(
                PromptRequest.user_id == user_id,
                PromptRequest.status.in_([PromptStatus.PENDING, PromptStatus.RUNNING]),
            )
        )
    return int(count or 0)


async def _user_id(api: Api, headers: dict[str, str]) -> uuid.UUID:
    created = await api.submit(headers, model="gpt-4o-mini", prompt_text="who am i")
    async with api.sessions() as session:
        prompt = await session.get(PromptRequest, uuid.UUID(created["id"]))
    assert prompt is not None
    return prompt.user_id


@pytest.mark.parametrize("mode", ["sqlite", "postgresql", "celery"])
async def test_a_flood_does_not_delay_another_users_prompt(
    mode: str, mock_openai: MockOpenAI, tmp_path: Path
):
    slow = f"openai/slow-{int(CALL_SECONDS * 1000)}-flood-{uuid.uuid4().hex[:6]}"
    async with _flood_api(mode, mock_openai, tmp_path) as api:
        a, b = await api.new_user(), await api.new_user()
        a_id = await _user_id(api, a)
        body = {"model": slow, "prompt_type": "text", "prompt_text": "flood"}

        async def submit_many(count: int) -> None:
            for _ in range(count):
                response = await api.client.post("/ai/prompts/", json=body, headers=a)
                assert response.status_code == 202, response.text

        await asyncio.gather(*(submit_many(FLOOD // 20) for _ in range(20)))
        behind = await _not_final(api, a_id)
        assert behind > FLOOD // 2  # the flood is there, most of it still waiting

        started = time.monotonic()
        response = await api.client.post(
            "/ai/prompts/",
            json={**body, "prompt_text": "me first"},
            headers={**b, "Prefer": "wait=20"},
        )
        elapsed = time.monotonic() - started
        waiting = await _not_final(api, a_id)

        print(f"{mode}: B answered in {elapsed:.2f} s, {waiting} of A's prompts still to run")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        assert elapsed < BOUND_SECONDS, f"B waited {elapsed:.2f} s behind A's flood"
        assert waiting > FLOOD // 4, "A's backlog had drained: the test proved nothing"

        # Nothing of A's is lost or stuck: every prompt of the flood completes.
        deadline = time.monotonic() + 60
        while (left := await _not_final(api, a_id)) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        assert left == 0
        async with api.sessions() as session:
            statuses = dict(
                (
                    await session.execute(
                        select(PromptRequest.status, func.count())
                        .where(PromptRequest.user_id == a_id)
                        .group_by(PromptRequest.status)
                    )
                ).all()
            )
        assert statuses == {"completed": FLOOD + 1}


async def test_a_full_runner_holds_a_bounded_number_and_pulls_the_rest_back_fairly(
    fresh_database: str,
):
    """A Celery worker's runner (`max_backlog`): a flood beyond the cap is not held in memory
    but left pending in the database, another owner's prompt is still taken at once, and the
    left-over prompts are claimed back (each executed exactly once) as room frees up, two
    flooding owners in turn."""
    await migrate(fresh_database)
    engine = create_engine(make_settings(fresh_database))
    recorder = Recorder(engine)
    cap, per_owner = 16, 300
    executed: list[uuid.UUID] = []
    peak = 0

    async def execute(claim: Claim) -> None:
        nonlocal peak
        peak = max(peak, runner.backlog)
        executed.append(claim.prompt_id)
        await asyncio.sleep(0.002)
        await recorder.finish(claim, attempt=None, error_code="done", error_message="done")

    runner = EmbeddedRunner(
        execute, recorder=recorder, concurrency=4, lease_seconds=30, max_backlog=cap
    )
    async with create_session_factory(engine)() as session:
        users = [
            await auth_service.create_user(session, email=f"{uuid.uuid4().hex[:10]}@x.org")
            for _ in range(3)
        ]
        await session.commit()
    a, c, b = (user.id for user in users)
    flood = {
        owner: [new_prompt("flood", user_id=owner) for _ in range(per_owner)] for owner in (a, c)
    }
    for prompts in flood.values():
        for prompt in prompts:
            await recorder.create_prompt(prompt)
    lone = new_prompt("lone", user_id=b)
    await recorder.create_prompt(lone)
    try:
        await runner.start()
        for first, second in zip(flood[a], flood[c], strict=True):  # (as messages would)
            runner.dispatch_nowait(first.id, a)
            runner.dispatch_nowait(second.id, c)
        assert runner.backlog <= cap  # the rest stayed in the database
        assert runner.dispatch_nowait(lone.id, b)  # a new owner is taken even when full
        deadline = time.monotonic() + 60
        while len(executed) < 2 * per_owner + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await runner.stop()
        await recorder.aclose()
        await engine.dispose()

    assert sorted(executed) == sorted([p.id for p in [*flood[a], *flood[c], lone]])
    assert peak <= cap + 1
    assert executed.index(lone.id) < cap + 4  # B's one prompt ran among the first few
    owners = {p.id: owner for owner, prompts in flood.items() for p in prompts}
    first_half = [owners[i] for i in executed[:per_owner] if i in owners]
    assert abs(first_half.count(a) - first_half.count(c)) <= cap  # the two floods in turn
