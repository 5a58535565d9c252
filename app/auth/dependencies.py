from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import service
from app.db.database import SessionFactory
from app.models import User

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `python -m app create-key EMAIL` (or the first-run key).",
)


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The key's owner. Authentication runs in its own short transaction, committed at once,
    so it never holds a lock (SQLite has one writer) while the handler records the prompt."""
    sessions: SessionFactory = request.app.state.sessions
    async with sessions() as session:
        user = await service.authenticate(
            session, plaintext=credentials.credentials if credentials else None
        )
        await session.commit()
    return user


CurrentUser = Annotated[User, Depends(current_user)]
