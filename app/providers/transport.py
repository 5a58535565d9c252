"""Telling a dropped or refused connection from a timeout, whatever the SDK calls it.

The SDKs' aiohttp transport reports every transport failure as a *timeout* (a refused
connection becomes `ConnectTimeout("Cannot connect to host …")`, a dropped one
`ConnectTimeout("Server disconnected")`). Users deserve the truth, so adapters look at the
chain of causes before choosing between `timeout` and `connection_error`.
"""

from __future__ import annotations

import aiohttp


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_connection_failure(exc: BaseException) -> bool:
    """True when the connection was refused, reset or dropped (and not a timeout)."""
    for cause in _causes(exc):
        if isinstance(cause, TimeoutError):
            return False
        if isinstance(cause, aiohttp.ClientConnectionError | ConnectionError):
            return True
    return False
