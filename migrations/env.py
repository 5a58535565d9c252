"""Alembic environment (async). The URL comes from the app's Settings (DATABASE_URL), unless
the caller passed one in `config.attributes["database_url"]` (the tests do).

Migrations use the application's column types (app/db/base.py) but never its behaviour: a
migration that converts data (0007 seals secrets) gets what it needs handed over from here,
so an old migration keeps doing what it did when the application's code moves on."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import app.db.models  # noqa: F401  (registers every table on the metadata)
from app.db.base import Base
from app.kit.settings import Settings

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
# Migrations that convert stored secrets (0007) seal and open them with the box handed over
# here, opened only when one asks (it may create the key file): the caller's, in
# `config.attributes["secret_box"]` (the tests pass one), else the settings' keys.
config.attributes.setdefault("open_secret_box", lambda: Settings().secret_box())


def _url() -> str:
    url = config.attributes.get("database_url")
    return str(url) if url else Settings().database_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    _configure(url=_url())
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
