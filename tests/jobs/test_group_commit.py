"""Group commit under concurrency, on each database: many claims and outcomes written in shared
transactions still give each caller exactly its own, durable, result."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError

from app.db.database import create_engine, create_session_factory
from app.db.models import NewPrompt, PromptAttempt, PromptRequest, PromptResponse, PromptStatus
from app.engine.recorder import Recorder
from tests.conftest import make_settings, migrate
from tests.records import new_prompt, openai_prompt, seed, successful_call

PROMPTS = 200


async def test_concurrent_claims_and_outcomes_each_get_their_own_result(fresh_database: str):
    await migrate(fresh_database)
    prompts = [openai_prompt(f"batch-{i}") for i in range(PROMPTS)]
    engine = create_engine(make_settings(fresh_database))
    sessions = create_session_factory(engine)
    await seed(sessions, prompts)
    recorder = Recorder(engine)
    try:
        # Every prompt asked for twice at once (a duplicate delivery): one claim each.
        ids = [p.id for p in prompts]
        claims = await asyncio.gather(
            *(recorder.claim(i, lease_seconds=30) for i in [*ids, *reversed(ids)])
        )
        held = [c for c in claims if c is not None]
        assert sorted(c.prompt_id for c in held) == sorted(ids)
        assert {c.fence for c in held} == {1}
        assert {c.upstream_model for c in held} == {p.upstream_model for p in prompts}

        # Half answer, half fail; one outcome names a prompt that does not exist, so its
        # batch fails: it alone gets the error, the others are written one at a time.
        stray = dataclasses.replace(held[0], prompt_id=uuid.uuid4())
        attempt, response = successful_call("batch")
        outcomes = await asyncio.gather(
            *(
                recorder.finish(c, attempt=attempt, response=response)
                if n % 2
                else recorder.finish(c, attempt=attempt, error_code="bad_request")
                for n, c in enumerate(held)
            ),
            recorder.finish(stray, attempt=attempt, response=response),
            return_exceptions=True,
        )
        assert outcomes[:-1] == [True] * PROMPTS
        assert isinstance(outcomes[-1], IntegrityError)
        # A second outcome for the same claim changes nothing.
        assert await recorder.finish(held[1], attempt=None, response=response) is False

        async with sessions() as session:
            statuses = dict(
                (
                    await session.execute(
                        select(PromptRequest.status, func.count()).group_by(PromptRequest.status)
                    )
                ).all()
            )
            responses = await session.scalar(select(func.count()).select_from(PromptResponse))
            attempts = await session.scalar(select(func.count()).select_from(PromptAttempt))
    finally:
        await recorder.aclose()
        await engine.dispose()
    half = PROMPTS // 2
    assert statuses == {PromptStatus.COMPLETED: half, PromptStatus.FAILED: half}
    assert responses == half and attempts == PROMPTS


async def test_new_prompts_and_lost_claims_in_shared_batches(fresh_database: str):
    """Prompts inserted together are stored whole (JSON columns, defaults); in an outcome batch,
    a claim that was lost still gets its attempt row, but neither a status nor a response."""
    await migrate(fresh_database)
    engine = create_engine(make_settings(fresh_database))
    sessions = create_session_factory(engine)
    owner = [openai_prompt("owner")]
    await seed(sessions, owner)
    recorder = Recorder(engine)
    try:
        new = [
            new_prompt(
                f"new-{i}",
                user_id=owner[0].user_id,
                parameters={"messages": [{"role": "user", "content": f"é {i}"}], "n": i},
                meta={"team": f"t{i}"},
            )
            for i in range(50)
        ]
        for prompt in new[::2]:  # left to their columns' defaults
            prompt.executions = None  # type: ignore[assignment]
            prompt.status = None  # type: ignore[assignment]
        await asyncio.gather(*(recorder.create_prompt(p) for p in new))
        claims = await asyncio.gather(*(recorder.claim(p.id, lease_seconds=30) for p in new))
        held = [c for c in claims if c is not None]
        assert len(held) == len(new)
        lost = [dataclasses.replace(c, fence=c.fence + 1) for c in held[:10]]
        attempt, response = successful_call("batch")
        finished = await asyncio.gather(
            *(recorder.finish(c, attempt=attempt, response=response) for c in lost + held[10:])
        )
        assert finished == [False] * 10 + [True] * (len(held) - 10)

        async with sessions() as session:
            stored = {
                p.id: p
                for p in await session.scalars(
                    select(PromptRequest).where(PromptRequest.id.in_([p.id for p in new]))
                )
            }
            with_response = set(await session.scalars(select(PromptResponse.prompt_id)))
            attempts = await session.scalar(select(func.count()).select_from(PromptAttempt))
    finally:
        await recorder.aclose()
        await engine.dispose()
    for i, prompt in enumerate(new):
        row = stored[prompt.id]
        assert row.parameters == {"messages": [{"role": "user", "content": f"é {i}"}], "n": i}
        assert row.meta == {"team": f"t{i}"} and row.executions == 1
    lost_ids = {c.prompt_id for c in lost}
    assert {p.id for p in new if stored[p.id].status == PromptStatus.RUNNING} == lost_ids
    assert with_response == {p.id for p in new} - lost_ids
    assert attempts == len(new)


def test_a_new_prompt_has_exactly_the_columns_of_a_stored_one():
    """`NewPrompt` stands in for `PromptRequest` until the row is written (`prompt_row`): a
    column added to one and not the other would be silently left to its default."""
    columns = {attribute.key for attribute in sa_inspect(PromptRequest).column_attrs}
    assert {f.name for f in dataclasses.fields(NewPrompt)} == columns
