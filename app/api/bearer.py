"""The API key of a request, from its `Authorization: Bearer <key>` header.

One parser for every way a request reaches the app: the routes' dependency
(`app/api/auth.py` `current_user`) and the fast paths (`app/api/fast_paths.py`) both call
`bearer_key` on the request's `Authorization` headers, so a request means the same key to
both. They used to read it two ways (the routes the first header, the fast path the last), so
a request with two could be refused by one and accepted by the other. Two or more are now a
400 on both: which one the client meant cannot be known, and a proxy that adds its own header
in front of the client's should be told, not guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.kit.errors import AppError


class DuplicateAuthorization(AppError):
    status_code = 400
    code = "duplicate_authorization"
    title = "Bad request"

    def __init__(self, count: int) -> None:
        super().__init__(
            f"The request has {count} Authorization headers; send exactly one "
            "('Authorization: Bearer <key>')."
        )


def authorization_values(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every `Authorization` header of an ASGI scope's `headers` (lower-case names), in order."""
    return [value for name, value in headers if name == b"authorization"]


def bearer_key(values: Sequence[bytes]) -> str | None:
    """The key of a request's `Authorization` header values (`authorization_values`; the
    fast paths collect them as they scan the headers): the key after `Bearer` (any case,
    spaces around it ignored). None when there is no header, another scheme (`Basic …`) or no
    key after `Bearer` (the route answers 401 `missing_api_key`). Raises
    `DuplicateAuthorization` for two or more headers."""
    if len(values) != 1:
        if values:
            raise DuplicateAuthorization(len(values))
        return None
    scheme, _, credentials = values[0].decode("latin-1").partition(" ")
    key = credentials.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key
