from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from app.api.auth import CurrentUser
from app.db.models import User
from app.kit.errors import AppError
from app.kit.text import TYPE_NAME_PATTERN
from app.services.prompt_types.cache import PromptTypeCache


class AdminRequired(AppError):
    status_code = 403
    code = "admin_required"
    title = "Forbidden"


async def admin_user(user: CurrentUser) -> User:
    """The current user, if an admin: the permission check lives here, not in handlers."""
    if not user.is_admin:
        raise AdminRequired("Only an admin can change prompt types.")
    return user


async def get_prompt_type_cache(request: Request) -> PromptTypeCache:
    """This process's cache of type definitions (made in the app's lifespan)."""
    cache: PromptTypeCache = request.app.state.prompt_types
    return cache


AdminUser = Annotated[User, Depends(admin_user)]
PromptTypeCacheDep = Annotated[PromptTypeCache, Depends(get_prompt_type_cache)]
TypeNamePath = Annotated[
    str,
    Path(
        pattern=TYPE_NAME_PATTERN,
        description="The type's name, as prompts give it in `prompt_type`: 1 to 64 letters, "
        "digits, `_`, `.`, `:` or `-`, starting with a letter or digit.",
        examples=["summary"],
    ),
]
