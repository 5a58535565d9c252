"""The group-commit writers' own PostgreSQL connection: a lost connection is reported as the
app's 503 error and replaced, a refused statement keeps it, and recording goes on either way."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.db.database import create_engine, create_session_factory
from app.db.dedicated import DedicatedConnection
from app.engine.recorder import Recorder
from tests.conftest import make_settings, throwaway_database
from tests.records import new_prompt, openai_prompt, seed


async def _backend(connection: DedicatedConnection) -> int:
    rows = await connection.fetch("SELECT pg_backend_pid()")
    return int(rows[0][0])


async def test_a_connection_lost_mid_statement_is_an_operational_error_then_replaced():
    async with throwaway_database("pm_dedicated") as url:
        engine = create_engine(make_settings(url))
        connection = DedicatedConnection(engine)
        admin = await asyncpg.connect(url.replace("+asyncpg", "", 1), timeout=10)
        try:
            first = await _backend(connection)
            sleeping = asyncio.create_task(connection.fetch("SELECT pg_sleep(5)"))
            while not await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", first
            ):
                await asyncio.sleep(0.01)
            await admin.execute("SELECT pg_terminate_backend($1)", first)
            with pytest.raises(OperationalError) as lost:
                await sleeping
            assert lost.value.connection_invalidated
            assert "pg_sleep" in str(lost.value)  # the statement, never its values
            second = await _backend(connection)  # reconnected by itself
            assert second != first
        finally:
            await connection.aclose()
            await admin.close()
            await engine.dispose()


async def test_a_refused_statement_keeps_the_connection_and_says_integrity_error():
    async with throwaway_database("pm_dedicated") as url:
        engine = create_engine(make_settings(url))
        connection = DedicatedConnection(engine)
        try:
            before = await _backend(connection)
            with pytest.raises(IntegrityError):
                await connection.fetch(
                    "INSERT INTO prompt_responses (id, prompt_id) VALUES ($1, $2)",
                    uuid.uuid4(),
                    uuid.uuid4(),  # no such prompt
                )
            assert await _backend(connection) == before
        finally:
            await connection.aclose()
            await engine.dispose()


async def test_the_recorder_writes_again_after_its_connections_were_cut():
    """What a request sees: the write during the cut fails as a lost connection (503), and
    the next one is recorded without anything restarting."""
    async with throwaway_database("pm_dedicated") as url:
        engine = create_engine(make_settings(url))
        recorder = Recorder(engine)
        admin = await asyncpg.connect(url.replace("+asyncpg", "", 1), timeout=10)
        try:
            owner = openai_prompt("owner")
            await seed(create_session_factory(engine), [owner])
            await recorder.create_prompt(new_prompt("before", user_id=owner.user_id))
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            after = new_prompt("after", user_id=owner.user_id)
            for _ in range(2):  # at most one write finds the dead connection
                try:
                    await recorder.create_prompt(after)
                    break
                except OperationalError:
                    continue
            stored = await admin.fetchval(
                "SELECT count(*) FROM prompt_requests WHERE id = $1", after.id
            )
            assert stored == 1
        finally:
            await recorder.aclose()
            await admin.close()
            await engine.dispose()
