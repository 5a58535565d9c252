"""The admin's operations on users, teams, members and keys (`/ai/admin`, and `python -m app`):
each checks what it is given, so that a key can only be scoped to a team its user makes
prompts in, and to models that resolve here, and each is written to the audit log with the
change (`actor`: who made it)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import ApiKey, Team, TeamMember, TeamRole, User
from app.kit.errors import Conflict, InvalidInput, NotFound
from app.providers.registry import ModelResolver
from app.services import audit
from app.services.audit import Actor
from app.services.auth import service


async def create_user(
    session: AsyncSession, actor: Actor, *, email: str, name: str | None, is_admin: bool
) -> User:
    user = await service.create_user(session, email=email, name=name, is_admin=is_admin)
    audit.record(session, actor, "user.create", "user", user.id, after=audit.user_snapshot(user))
    return user


async def create_team(
    session: AsyncSession, actor: Actor, *, name: str, description: str | None
) -> Team:
    team = Team(name=name.strip(), description=description)
    if not team.name:
        raise InvalidInput("A team needs a name.", code="invalid_team_name")
    session.add(team)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(f"A team named '{team.name}' already exists.", code="team_taken") from None
    audit.record(session, actor, "team.create", "team", team.id, after=audit.team_snapshot(team))
    return team


async def get_team(session: AsyncSession, team_id: uuid.UUID) -> Team:
    team = await session.get(Team, team_id)
    if team is None:
        raise NotFound(f"No team with id {team_id}.", code="unknown_team")
    return team


async def team_by_name(session: AsyncSession, name: str) -> Team:
    team = await session.scalar(select(Team).where(Team.name == name.strip()))
    if team is None:
        raise NotFound(f"No team named '{name.strip()}'.", code="unknown_team")
    return team


async def list_teams(session: AsyncSession) -> list[Team]:
    return list(await session.scalars(select(Team).order_by(Team.name)))


async def members_of(session: AsyncSession, team_ids: list[uuid.UUID]) -> list[TeamMember]:
    if not team_ids:
        return []
    rows = await session.scalars(
        select(TeamMember)
        .where(TeamMember.team_id.in_(team_ids))
        .order_by(TeamMember.team_id, TeamMember.created_at)
    )
    return list(rows)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"No user with id {user_id}.", code="unknown_user")
    return user


async def set_member(
    session: AsyncSession, actor: Actor, *, team_id: uuid.UUID, user_id: uuid.UUID, role: TeamRole
) -> TeamMember:
    """Add the user to the team with `role`, or change their role. A user who becomes a
    viewer keeps their keys scoped to the team, but those stop working: a viewer only reads
    (`service.authenticate` says so)."""
    await get_team(session, team_id)
    await get_user(session, user_id)
    member = await session.get(TeamMember, (team_id, user_id))
    before = audit.member_snapshot(member) if member is not None else None
    if member is None:
        member = TeamMember(team_id=team_id, user_id=user_id, role=role)
        session.add(member)
    else:
        member.role = role
    await session.flush()
    audit.record(
        session,
        actor,
        "team.member.set",
        "team",
        team_id,
        before=before,
        after=audit.member_snapshot(member),
    )
    return member


async def remove_member(
    session: AsyncSession, actor: Actor, *, team_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    """Take the user out of the team (their keys scoped to it stop working)."""
    removed = await session.execute(
        delete(TeamMember)
        .where(TeamMember.team_id == team_id, TeamMember.user_id == user_id)
        .returning(TeamMember.role)
    )
    role = removed.scalar_one_or_none()
    if role is None:
        raise NotFound(f"User {user_id} is not a member of team {team_id}.", code="not_a_member")
    before = {"team_id": str(team_id), "user_id": str(user_id), "role": role}
    audit.record(session, actor, "team.member.remove", "team", team_id, before=before)


def check_models(models: list[str] | None, resolver: ModelResolver) -> list[str] | None:
    """A key's allowed models, each one resolving here (the 422 `unknown_model` a prompt
    would get otherwise), without repeats."""
    if models is None:
        return None
    names = list(dict.fromkeys(name.strip() for name in models))
    for name in names:
        resolver.resolve(name)
    return names


async def check_team_scope(
    session: AsyncSession, *, user_id: uuid.UUID, team_id: uuid.UUID | None
) -> None:
    """A key may be scoped to a team its user owns or is a member of (a viewer only reads)."""
    if team_id is None:
        return
    await get_team(session, team_id)
    member = await session.get(TeamMember, (team_id, user_id))
    if member is None or member.role not in service.MAKERS:
        why = "is not a member of it" if member is None else "is only a viewer of it"
        raise InvalidInput(
            f"A key for team {team_id} cannot be made for this user: the user {why} (an "
            "owner or a member makes prompts in a team).",
            code="not_a_team_member",
        )


async def create_key(
    session: AsyncSession,
    actor: Actor,
    *,
    user_id: uuid.UUID,
    name: str,
    description: str | None,
    team_id: uuid.UUID | None,
    allowed_models: list[str] | None,
    expires_at: datetime | None,
    drop_params: bool | None,
    resolver: ModelResolver,
) -> tuple[ApiKey, str]:
    user = await get_user(session, user_id)
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future.", code="invalid_expiry")
    await check_team_scope(session, user_id=user_id, team_id=team_id)
    key, plaintext = await service.create_api_key(
        session,
        user=user,
        name=name,
        expires_at=expires_at,
        drop_params=drop_params,
    )
    key.description = description
    key.team_id = team_id
    key.allowed_models = check_models(allowed_models, resolver)
    await session.flush()
    audit.record(session, actor, "key.create", "key", key.id, after=audit.key_snapshot(key))
    return key, plaintext


async def revoke_key(session: AsyncSession, actor: Actor, *, prefix: str) -> ApiKey:
    key = await service.key_by_prefix(session, prefix)
    before = audit.key_snapshot(key)
    key = await service.revoke_api_key(session, prefix=prefix)
    if key.revoked_at is not None and before["revoked_at"] is None:
        audit.record(
            session,
            actor,
            "key.revoke",
            "key",
            key.id,
            before=before,
            after=audit.key_snapshot(key),
        )
    return key


async def set_key_drop_params(
    session: AsyncSession, actor: Actor, *, prefix: str, drop_params: bool | None
) -> ApiKey:
    key = await service.key_by_prefix(session, prefix)
    before = audit.key_snapshot(key)
    key = await service.set_key_drop_params(session, prefix=prefix, drop_params=drop_params)
    audit.record(
        session, actor, "key.update", "key", key.id, before=before, after=audit.key_snapshot(key)
    )
    return key


async def get_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id}.", code="unknown_api_key")
    return key


async def list_keys(session: AsyncSession, *, user_id: uuid.UUID | None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return list(await session.scalars(query))
