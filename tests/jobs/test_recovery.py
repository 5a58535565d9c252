"""Nothing is lost or stuck, and nothing runs twice: start-up pickup, expired leases, the
attempt limit, fencing of stale claims, duplicate dispatches and hand-back at shutdown."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.db.base import utcnow
from app.db.database import create_engine, create_session_factory
from app.db.models import PromptAttempt, PromptRequest, PromptResponse, PromptStatus
from app.engine.recorder import Recorder
from app.engine.runners import EmbeddedRunner
from app.engine.sweeper import Sweeper
from tests.conftest import Api, make_settings, migrate, running_api
from tests.mocks.openai_server import MockOpenAI
from tests.records import openai_prompt, seed, successful_call


async def _seed(url: str, prompts: list[PromptRequest]) -> dict[str, str]:
    engine = create_engine(make_settings(url))
    try:
        return await seed(create_session_factory(engine), prompts)
    finally:
        await engine.dispose()


async def test_restart_picks_up_pending_and_orphaned_prompts(
    fresh_database: str, mock_openai: MockOpenAI
):
    await migrate(fresh_database)
    left_pending = openai_prompt("restart-pending")
    orphaned = openai_prompt(
        "restart-orphaned",
        status=PromptStatus.RUNNING,
        executions=1,
        started_at=utcnow() - timedelta(minutes=5),
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    exhausted = openai_prompt(
        "restart-exhausted",
        status=PromptStatus.RUNNING,
        executions=3,
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    headers = await _seed(fresh_database, [left_pending, orphaned, exhausted])

    # Re-dispatch of young pending rows is far off: only the start-up sweep can find them.
    settings = make_settings(
        fresh_database, mock_openai, redispatch_after_seconds=600, max_attempts=3
    )
    async with running_api(settings) as api:
        pending_done = await api.wait_final(headers, str(left_pending.id), timeout=10)
        orphan_done = await api.wait_final(headers, str(orphaned.id), timeout=10)
        exhausted_done = await api.wait_final(headers, str(exhausted.id), timeout=10)

    assert pending_done["status"] == "completed" and pending_done["executions"] == 1
    assert orphan_done["status"] == "completed" and orphan_done["executions"] == 2
    assert exhausted_done["status"] == "failed"
    assert exhausted_done["error"]["code"] == "attempts_exhausted"
    assert "3 executions" in exhausted_done["error"]["message"]
    assert mock_openai.calls_for("restart-exhausted") == []
    # The executions whose runner died are on the attempt log: they may have been billed.
    assert [a["outcome"] for a in orphan_done["attempts"]] == ["lost", "success"]
    assert [a["outcome"] for a in exhausted_done["attempts"]] == ["lost"]
    assert exhausted_done["attempts"][0]["error_code"] == "runner_lost"


async def test_a_stale_claim_cannot_finish_after_the_prompt_moved_on(fresh_database: str):
    await migrate(fresh_database)
    prompt = openai_prompt("fenced")
    await _seed(fresh_database, [prompt])
    engine = create_engine(make_settings(fresh_database))
    recorder = Recorder(engine)
    try:
        first = await recorder.claim(prompt.id, lease_seconds=0.05)
        assert first is not None
        assert await recorder.claim(prompt.id, lease_seconds=30) is None  # already running
        await asyncio.sleep(0.1)
        recovered = await recorder.recover_expired(max_attempts=5)
        assert recovered.requeued == [prompt.id] and recovered.failed == 0
        second = await recorder.claim(prompt.id, lease_seconds=30)
        assert second is not None and second.fence == first.fence + 1

        attempt, response = successful_call("fenced")
        assert await recorder.finish(first, attempt=attempt, response=response) is False
        assert await recorder.finish(second, attempt=attempt, response=response) is True
        assert await recorder.finish(second, attempt=None, response=response) is False

        async with create_session_factory(engine)() as session:
            row = await session.get(PromptRequest, prompt.id)
            responses = await session.scalar(
                select(func.count())
                .select_from(PromptResponse)
                .where(PromptResponse.prompt_id == prompt.id)
            )
            attempts = await session.scalar(
                select(func.count())
                .select_from(PromptAttempt)
                .where(PromptAttempt.prompt_id == prompt.id)
            )
    finally:
        await recorder.aclose()
        await engine.dispose()
    assert row is not None and row.status == PromptStatus.COMPLETED
    assert responses == 1  # only the current claim answered
    # Both provider calls are on the bill, and so is the execution whose lease expired.
    assert attempts == 3


async def test_duplicate_dispatch_across_processes_calls_the_provider_once(
    api: Api, database_url: str, mock_openai: MockOpenAI
):
    headers = await api.new_user()
    model = f"dup-{uuid.uuid4().hex[:8]}"
    # A second server on the same database stands in for another process.
    async with running_api(make_settings(database_url, mock_openai)) as other:
        created = await api.submit(headers, model=f"openai/slow-200-{model}")
        prompt_id = uuid.UUID(created["id"])
        await asyncio.gather(
            *(
                app.app.state.services.dispatcher.dispatch(prompt_id)
                for app in (api, other, api, other)
            )
        )
        done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed" and done["executions"] == 1
    assert len(mock_openai.calls_for(f"slow-200-{model}")) == 1


async def test_shutdown_hands_running_prompts_back(tmp_path, mock_openai: MockOpenAI):
    url = f"sqlite+aiosqlite:///{tmp_path / 'shutdown.db'}"
    await migrate(url)
    settings = make_settings(url, mock_openai, shutdown_grace_seconds=0.2)
    async with running_api(settings) as api:
        headers = await api.new_user()
        created = await api.submit(headers, model="openai/slow-5000")
        for _ in range(100):
            body = (await api.client.get(f"/ai/prompts/{created['id']}", headers=headers)).json()
            if body["status"] == "running":
                break
            await asyncio.sleep(0.02)
        assert body["status"] == "running"
    # Stopped mid-call: the prompt is pending again, its interrupted execution not counted.
    engine = create_engine(settings)
    async with create_session_factory(engine)() as session:
        row = await session.get(PromptRequest, uuid.UUID(created["id"]))
        attempts = (
            await session.scalars(
                select(PromptAttempt).where(PromptAttempt.prompt_id == uuid.UUID(created["id"]))
            )
        ).all()
    await engine.dispose()
    assert row is not None
    assert (
        row.status == PromptStatus.PENDING and row.executions == 0 and row.lease_expires_at is None
    )
    # The abandoned call is still on the record (it may be billed).
    assert [(a.outcome, a.error_code) for a in attempts] == [("abandoned", "abandoned")]


async def test_the_sweeper_hands_a_full_runner_no_more_than_it_has_room_for(fresh_database: str):
    """A worker at its backlog cap takes nothing more from the sweeper either: the old pending
    rows wait in the database (for this worker later, or another) instead of piling up here."""
    await migrate(fresh_database)
    old = utcnow() - timedelta(minutes=10)
    await _seed(fresh_database, [openai_prompt(f"room-{i}", created_at=old) for i in range(12)])
    engine = create_engine(make_settings(fresh_database))
    recorder = Recorder(engine)

    async def never(claim: object) -> None:
        raise AssertionError("the runner was not started: nothing executes")

    runner = EmbeddedRunner(
        never, recorder=recorder, concurrency=1, lease_seconds=30, max_backlog=5
    )
    sweeper = Sweeper(
        recorder, runner, interval_seconds=60, redispatch_after_seconds=1, max_attempts=3
    )
    try:
        first = await sweeper.sweep_once()
        assert (first.redispatched, runner.backlog, runner.room) == (5, 5, 0)
        assert (await sweeper.sweep_once()).redispatched == 0  # full: nothing more
    finally:
        await recorder.aclose()
        await engine.dispose()


async def test_a_prompt_whose_processing_raises_fails_after_its_attempts_with_one_traceback(
    fresh_database: str, mock_openai: MockOpenAI, caplog: pytest.LogCaptureFixture
):
    """A stored row the executor cannot handle (here: `messages` that are not a list of
    messages, as a hand edit or an old version could leave) is executed MAX_ATTEMPTS times,
    then `failed` with `internal_error` and a reason; the traceback is logged once. Before,
    it ran into its lease every time and ended `attempts_exhausted` blaming a lost runner,
    with a traceback each time."""
    await migrate(fresh_database)
    poisoned = openai_prompt("poisoned", parameters={"messages": "not a list of messages"})
    headers = await _seed(fresh_database, [poisoned])
    settings = make_settings(
        fresh_database, mock_openai, max_attempts=3, redispatch_after_seconds=0.2
    )
    caplog.set_level(logging.INFO)
    async with running_api(settings) as api:
        detail = await api.wait_final(headers, str(poisoned.id), timeout=20)

    assert detail["status"] == "failed" and detail["executions"] == 3
    assert detail["error"]["code"] == "internal_error"
    assert "3 executions" in detail["error"]["message"]
    mine = [
        r
        for r in caplog.records
        if r.name == "app.engine.runners" and str(poisoned.id) in r.getMessage()
    ]
    assert len(mine) == 3  # one line per execution
    assert sum(r.exc_info is not None for r in mine) == 1  # and one traceback
