"""Authentication for the routes: the bearer key of the one `Authorization` header, verified by
the process's `Authenticator` (app/services/auth/authenticator.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from app.api import ratelimit
from app.api.bearer import authorization_values, bearer_key
from app.api.deps import ServicesDep
from app.db.models import User
from app.kit.errors import Forbidden
from app.services.auth.authenticator import Caller
from app.services.auth.scope import PromptScope


class _Bearer(HTTPBearer):
    """FastAPI's `HTTPBearer` for the OpenAPI security scheme (Swagger's *Authorize*), reading
    the key with `bearer_key`, as the fast paths do: two `Authorization` headers are a 400
    here too, where `HTTPBearer` would take the first."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        key = bearer_key(authorization_values(request.scope["headers"]))
        return HTTPAuthorizationCredentials(scheme="Bearer", credentials=key) if key else None


_bearer = _Bearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `python -m app create-key EMAIL` (or the first-run key), "
    "in exactly one `Authorization` header: two or more are a 400 `duplicate_authorization`.",
)


async def current_caller(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The key's owner and settings (`Authenticator.caller`, as the fast paths ask it)."""
    return await services.auth.caller(credentials.credentials if credentials else None)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


async def work_caller(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """`current_caller`, for the routes that create work: a caller with limits has the
    RateLimit headers of its answers kept for the request (app/api/ratelimit.py), so that its
    errors carry them too (the fast paths do the same)."""
    caller = await current_caller(services, credentials)
    if caller.accounts:
        ratelimit.note(request.scope, caller)
    return caller


WorkCaller = Annotated[Caller, Depends(work_caller)]


async def current_user(caller: CurrentCaller) -> User:
    """The key's owner (for the routes that need nothing else of the key)."""
    return caller.user


CurrentUser = Annotated[User, Depends(current_user)]


async def current_scope(caller: CurrentCaller) -> PromptScope:
    """The prompts the key's user may see and cancel (app/services/auth/scope.py)."""
    return PromptScope.of(caller)


CurrentScope = Annotated[PromptScope, Depends(current_scope)]


class AdminRequired(Forbidden):
    code = "admin_required"


async def admin_user(user: CurrentUser) -> User:
    """The current user, if an admin: the permission check lives here, not in handlers."""
    if not user.is_admin:
        raise AdminRequired("Only an admin can do this.")
    return user


AdminUser = Annotated[User, Depends(admin_user)]
