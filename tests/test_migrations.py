"""Migrations run on SQLite and PostgreSQL, match the models exactly, and are reversible."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.base import Base, UTCDateTime, utcnow
from app.db.migrations import alembic_config
from app.kit.sealing import SecretBox, generate_key
from app.services.webhooks.signing import new_secret
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
    "teams",
    "team_members",
    "audit_log",
    "usage_daily",
    "limits",
    "limit_usage",
    "reservations",
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
        "ix_prompt_requests_pending_user",
    } <= indexes["prompt_requests"]

    await downgrade(fresh_database, "base")
    tables, _, _ = await _state(fresh_database)
    assert tables == set()

    await migrate(fresh_database)
    tables, diff, _ = await _state(fresh_database)
    assert tables == TABLES and diff == []


async def test_webhook_secrets_are_sealed_on_upgrade_and_opened_on_downgrade(
    fresh_database: str,
):
    """0007: a database with plain webhook secrets keeps every endpoint working, its secret
    now sealed under the configured keys; the downgrade gives the plain secrets back."""
    box = SecretBox([generate_key()])
    await migrate(fresh_database, "0006")
    user_id, endpoint_id, secret = uuid.uuid4(), uuid.uuid4(), new_secret()
    now = utcnow()
    users = sa.table(
        "users",
        sa.column("id", sa.Uuid()),
        sa.column("email", sa.String()),
        sa.column("is_admin", sa.Boolean()),
        sa.column("created_at", UTCDateTime()),
    )
    flags = ("on_prompt_completed", "on_prompt_failed", "on_prompt_cancelled", "enabled")
    times = ("created_at", "updated_at", "scanned_until")
    endpoints = sa.table(
        "webhook_endpoints",
        sa.column("id", sa.Uuid()),
        sa.column("user_id", sa.Uuid()),
        sa.column("url", sa.String()),
        sa.column("secret", sa.String()),
        *(sa.column(name, sa.Boolean()) for name in flags),
        *(sa.column(name, UTCDateTime()) for name in times),
    )
    engine = create_async_engine(fresh_database)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                users.insert().values(
                    id=user_id, email="old@example.com", is_admin=False, created_at=now
                )
            )
            await connection.execute(
                endpoints.insert().values(
                    id=endpoint_id,
                    user_id=user_id,
                    url="https://example.com/hook",
                    secret=secret,
                    **dict.fromkeys(flags, True),
                    **dict.fromkeys(times, now),
                )
            )
        await _alembic(command.upgrade, fresh_database, "head", box)
        async with engine.connect() as connection:
            sealed = (
                await connection.execute(sa.text("SELECT sealed_secret FROM webhook_endpoints"))
            ).scalar_one()
        assert secret not in sealed and box.open(sealed) == secret

        await _alembic(command.downgrade, fresh_database, "0006", box)
        async with engine.connect() as connection:
            plain = (
                await connection.execute(sa.text("SELECT secret FROM webhook_endpoints"))
            ).scalar_one()
        assert plain == secret
    finally:
        await engine.dispose()


async def _alembic(
    run: Callable[[Config, str], None], url: str, revision: str, box: SecretBox
) -> None:
    config = alembic_config(url)
    config.attributes["skip_logging"] = True
    config.attributes["secret_box"] = box
    await asyncio.to_thread(run, config, revision)
