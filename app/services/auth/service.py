"""Users and API keys: creation, revocation and authentication."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import ApiKey, TeamMember, TeamRole, User
from app.kit.errors import Conflict, InvalidInput, NotFound, Unauthorized
from app.services.auth.keys import KEY_MARKER, generate_key, hash_key

# Roles whose holders make prompts in a team (a viewer only reads).
MAKERS = frozenset({TeamRole.OWNER, TeamRole.MEMBER})

# `last_used_at` is refreshed at most this often, so authentication is not a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not (at and local and domain) or len(email) > 320 or any(c.isspace() for c in email):
        raise InvalidInput(f"'{email}' is not an email address", code="invalid_email")
    return email


async def create_user(
    session: AsyncSession, *, email: str, name: str | None = None, is_admin: bool = False
) -> User:
    user = User(email=normalise_email(email), name=name, is_admin=is_admin)
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(
            f"A user with email {user.email} already exists.", code="email_taken"
        ) from None
    return user


async def get_user_by_email(session: AsyncSession, *, email: str) -> User:
    user = await session.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None:
        raise NotFound(f"No user with email {email.strip().lower()}.", code="unknown_user")
    return user


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.created_at, User.email)))


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def create_api_key(
    session: AsyncSession,
    *,
    user: User,
    name: str = "default",
    expires_at: datetime | None = None,
    drop_params: bool | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored or shown again."""
    new = generate_key()
    key = ApiKey(
        user_id=user.id,
        name=name,
        prefix=new.prefix,
        key_hash=new.key_hash,
        expires_at=expires_at,
        drop_params=drop_params,
    )
    session.add(key)
    await session.flush()
    return key, new.plaintext


async def roles_of(session: AsyncSession, *, user_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """The user's teams, and their role in each."""
    rows = await session.execute(
        select(TeamMember.team_id, TeamMember.role).where(TeamMember.user_id == user_id)
    )
    return {team_id: role for team_id, role in rows}


async def key_by_prefix(session: AsyncSession, prefix: str) -> ApiKey:
    key = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix.strip()))
    if key is None:
        raise NotFound(f"No API key with prefix {prefix.strip()}.", code="unknown_api_key")
    return key


async def set_key_drop_params(
    session: AsyncSession, *, prefix: str, drop_params: bool | None
) -> ApiKey:
    """Whether the key's requests leave out, rather than refuse, what a provider cannot
    honour; None: as the request says, else the server's DROP_PARAMS. Takes effect within
    AUTH_CACHE_SECONDS in a process that had just seen the key."""
    key = await key_by_prefix(session, prefix)
    key.drop_params = drop_params
    await session.flush()
    return key


async def revoke_api_key(session: AsyncSession, *, prefix: str) -> ApiKey:
    key = await key_by_prefix(session, prefix)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key


async def authenticate(session: AsyncSession, *, plaintext: str | None) -> tuple[User, ApiKey]:
    """The user a bearer key belongs to and the key, or a 401 that says what is wrong with
    the key."""
    if not plaintext:
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    if not plaintext.startswith(KEY_MARKER):
        raise Unauthorized("Invalid API key.", code="invalid_api_key")
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == hash_key(plaintext))
        )
    ).first()
    if row is None:
        raise Unauthorized("Invalid API key.", code="invalid_api_key")
    key, user = row
    now = utcnow()
    if key.revoked_at is not None:
        raise Unauthorized(f"API key {key.prefix}… has been revoked.", code="revoked_api_key")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized(f"API key {key.prefix}… has expired.", code="expired_api_key")
    if user.disabled_at is not None:
        raise Unauthorized("This user is disabled.", code="user_disabled")
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return user, key
