"""One asyncpg connection of its own for a writer that runs one statement at a time.

On PostgreSQL each group-commit batch is a single statement (`app/engine/pg_batches.py`).
Through SQLAlchemy, the pool checkout, the greenlet hop, and the cursor and result wrappers
around it cost several times what the statement does (bench/results/design.md). A writer
whose batches go one after the other needs none of it, so it keeps one connection, opened
with the engine's own connection arguments (`DATABASE_URL`).

Errors leave in SQLAlchemy's types, so the rest of the app handles them as it always has: a
lost connection is an `OperationalError` (answered 503 `database_unavailable`; the next
statement reconnects; an idle connection the server closed can also say "cannot switch to
state …" if used before asyncpg has seen it close), a constraint violation an
`IntegrityError`, anything else a `DBAPIError`. Statement values never appear in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.kit.dbapi import lost_connection

# What SQLAlchemy's asyncpg dialect takes from DATABASE_URL for itself, not for asyncpg.
_DIALECT_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")
_CLOSE_SECONDS = 5.0
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]


class DedicatedConnection:
    """A connection opened on first use, and again after it was lost. Callers take turns."""

    def __init__(self, engine: AsyncEngine) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        for name in _DIALECT_ONLY:
            kwargs.pop(name, None)
        self._connect: Callable[[], Awaitable[asyncpg.Connection]] = functools.partial(
            asyncpg.connect, *args, **kwargs
        )
        self._connection: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run one statement (outside a transaction: committed when this returns)."""
        async with self._turn:
            connection = self._connection
            try:
                if connection is None or connection.is_closed():
                    connection = self._connection = await self._connect()
                rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
                return rows
            except BaseException as exc:
                # Only a statement the server refused leaves the connection ready for the
                # next; after anything else (cut off, cancelled mid-statement, a protocol
                # error) what state it is in is unknown, so it is never used again.
                if connection is not None and (
                    lost_connection(exc) or not isinstance(exc, asyncpg.PostgresError)
                ):
                    connection.terminate()
                    self._connection = None
                if isinstance(exc, Exception):
                    raise _translated(exc, sql) from exc
                raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Fetch]:
        """A transaction for several statements (committed when the block ends, rolled back
        if it raises): yields the `fetch` to run them with. For a writer that must read, decide
        and write under the same row locks (the limits ledger's admissions)."""
        async with self._turn:
            connection = self._connection
            try:
                if connection is None or connection.is_closed():
                    connection = self._connection = await self._connect()
                async with connection.transaction():
                    yield connection.fetch
            except BaseException as exc:
                if not isinstance(exc, _DRIVER_ERRORS) and isinstance(exc, Exception):
                    raise  # the caller's own error: rolled back, the connection is fine
                if connection is not None and (
                    lost_connection(exc) or not isinstance(exc, asyncpg.PostgresError)
                ):
                    connection.terminate()
                    self._connection = None
                if isinstance(exc, Exception):
                    raise _translated(exc, "(a transaction)") from exc
                raise

    async def aclose(self) -> None:
        async with self._turn:
            connection, self._connection = self._connection, None
            if connection is not None and not connection.is_closed():
                try:
                    await connection.close(timeout=_CLOSE_SECONDS)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    connection.terminate()


def _translated(exc: BaseException, sql: str) -> DBAPIError:
    if lost_connection(exc) or isinstance(exc, OSError):  # (OSError: could not connect)
        return OperationalError(sql, None, exc, hide_parameters=True, connection_invalidated=True)
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(sql, None, exc, hide_parameters=True)
    return DBAPIError(sql, None, exc, hide_parameters=True)
