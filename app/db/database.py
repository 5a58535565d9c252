"""The engine and the session factory, and the one transaction rule.

**Transactions.** A unit of work is one transaction, opened and ended in one place:
`async with sessions.begin() as session:` (Core batches: `async with engine.begin() as
connection:`). It commits when the block ends and rolls back when it raises; nothing else
commits or rolls back. A route's request-scoped `Session` (app/api/deps.py) is such a block,
committed before the response is sent; services given a session only read, add and flush.
Code that only reads may use `async with sessions() as session:` (its implicit transaction
is rolled back on close). tests/test_layout.py fails on a `commit()` or `rollback()` call
anywhere else in app/.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.kit.dbapi import lost_connection
from app.kit.settings import Settings
from app.kit.text import scrub_json

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the engine for `DATABASE_URL`.

    SQLite gets WAL (readers never wait for the writer), a busy timeout instead of instant
    "database is locked" errors, and enforced foreign keys, which SQLite leaves off by default.
    Every SQLite transaction starts with BEGIN IMMEDIATE: a deferred transaction that reads and
    then writes can fail at once with SQLITE_BUSY when another writer got there first, whatever
    the busy timeout; taking the write lock up front makes concurrent writers queue instead.
    """
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            connect_args={"timeout": 30},
            pool_pre_ping=False,
            hide_parameters=True,  # see below
            json_deserializer=_sqlite_json,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # Stop the driver from emitting its own deferred BEGIN; see _sqlite_begin.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping: it costs a round trip on every checkout (measured: about a fifth of the CPU
    # of an authenticated GET). A connection broken by a database restart fails its statement
    # instead, which answers 503 `database_unavailable`; the error is marked as a disconnect
    # (below), so SQLAlchemy discards the pool and the next request reconnects.
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
        # Error messages would otherwise quote the statement's values, among them a webhook
        # secret or a prompt's text: a secret never appears in a log.
        hide_parameters=True,
    )

    @event.listens_for(engine.sync_engine, "handle_error")
    def _mark_lost_connections(context: ExceptionContext) -> None:
        if not context.is_disconnect and lost_connection(context.original_exception):
            context.is_disconnect = True

    return engine


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _sqlite_json(text: str) -> Any:
    """A JSON column's value. SQLite keeps whatever JSON it was given, and rows written before
    the API refused lone surrogates (app/kit/text.py) may spell one as a `\\ud800` escape, which
    no answer could then encode: such strings are read with U+FFFD in its place. (PostgreSQL's
    jsonb never stores one.)"""
    value = json.loads(text)
    return scrub_json(value) if _SURROGATE_ESCAPE.search(text) else value


async def read_one_snapshot(session: AsyncSession) -> None:
    """Make the session's transaction, not begun yet, read one snapshot: rows read by separate
    statements (a delivery, then its attempts) then agree even while a writer commits in
    between. PostgreSQL needs REPEATABLE READ for that (READ COMMITTED takes a snapshot per
    statement); a SQLite transaction already reads one."""
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
