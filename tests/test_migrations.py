"""Migrations run on SQLite and PostgreSQL, match the models exactly, and are reversible."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.base import Base
from tests.conftest import downgrade, migrate

TABLES = {
    "users",
    "api_keys",
    "prompt_requests",
    "prompt_responses",
    "prompt_attempts",
    "idempotency_keys",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    "prompt_types",
}


async def _state(url: str) -> tuple[set[str], list[object], dict[str, set[str]]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:

            def read(sync):  # type: ignore[no-untyped-def]
                diff = compare_metadata(MigrationContext.configure(sync), Base.metadata)
                inspector = inspect(sync)
                tables = set(inspector.get_table_names()) - {"alembic_version"}
                indexes = {t: {ix["name"] for ix in inspector.get_indexes(t)} for t in tables}
                return tables, diff, indexes

            return await connection.run_sync(read)
    finally:
        await engine.dispose()


async def test_upgrade_matches_models_and_downgrade_reverses(fresh_database: str):
    await migrate(fresh_database)
    tables, diff, indexes = await _state(fresh_database)
    assert tables == TABLES
    assert diff == [], f"models and migrations disagree: {diff}"
    assert {
        "ix_prompt_requests_user_created",
        "ix_prompt_requests_status_created",
        "ix_prompt_requests_created_at",
    } <= indexes["prompt_requests"]

    await downgrade(fresh_database, "base")
    tables, _, _ = await _state(fresh_database)
    assert tables == set()

    await migrate(fresh_database)
    tables, diff, _ = await _state(fresh_database)
    assert tables == TABLES and diff == []
