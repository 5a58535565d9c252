"""What a database driver's errors mean, for the layers that must tell a lost connection from
any other failure (group commit, the HTTP error handlers, the database engine)."""

from __future__ import annotations

import asyncpg


def lost_connection(exc: BaseException | None) -> bool:
    """Whether an error means the connection to the database is gone, whatever the driver
    called it. SQLAlchemy recognises only some of asyncpg's ways of saying so: a server that
    shuts down sends "terminating connection due to administrator command" (57P01), and a
    connection cut mid-statement leaves asyncpg in an impossible state ("cannot switch to
    state …", InternalClientError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(
            exc,
            ConnectionError
            | TimeoutError
            | asyncpg.exceptions.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.InterfaceError
            | asyncpg.exceptions.InternalClientError,
        ):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
