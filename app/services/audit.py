"""The audit log (`audit_log`): every administrative change, who made it, when, and the
target before and after, written in the change's own transaction (so a change and its entry
commit or roll back together). Snapshots hold what an admin would want to compare and never a
secret: a key's hash, a webhook's secret and a key itself are never in them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ApiKey, AuditEntry, Team, TeamMember, User
from app.kit.cursors import decode_cursor, encode_cursor

COMMAND_LINE = "command line"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: a user (by the API), or None (the command line)."""

    user: User | None

    @property
    def id(self) -> uuid.UUID | None:
        return self.user.id if self.user is not None else None

    @property
    def name(self) -> str:
        return self.user.email if self.user is not None else COMMAND_LINE


CLI = Actor(None)


def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: object,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add the entry to the session: it is written with the change, at its commit."""
    session.add(
        AuditEntry(
            actor_id=actor.id,
            actor=actor.name,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            before=before,
            after=after,
        )
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def user_snapshot(user: User) -> dict[str, Any]:
    return {
        "email": user.email,
        "name": user.name,
        "is_admin": user.is_admin,
        "disabled_at": _iso(user.disabled_at),
    }


def key_snapshot(key: ApiKey) -> dict[str, Any]:
    """A key as the log shows it: never its hash (nor, of course, the key)."""
    return {
        "user_id": str(key.user_id),
        "name": key.name,
        "prefix": key.prefix,
        "description": key.description,
        "team_id": str(key.team_id) if key.team_id else None,
        "allowed_models": key.allowed_models,
        "drop_params": key.drop_params,
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
    }


def team_snapshot(team: Team) -> dict[str, Any]:
    return {"name": team.name, "description": team.description}


def member_snapshot(member: TeamMember) -> dict[str, Any]:
    return {"team_id": str(member.team_id), "user_id": str(member.user_id), "role": member.role}


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    at: datetime
    actor_id: uuid.UUID | None
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AuditFilters:
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    actor_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_entries(
    session: AsyncSession, *, filters: AuditFilters, limit: int, cursor: str | None
) -> AuditPage:
    """The entries, newest first, keyset-paginated on (at, id)."""
    a = AuditEntry
    query = select(a)
    if filters.action is not None:
        query = query.where(a.action == filters.action)
    if filters.target_type is not None:
        query = query.where(a.target_type == filters.target_type)
    if filters.target_id is not None:
        query = query.where(a.target_id == filters.target_id)
    if filters.actor_id is not None:
        query = query.where(a.actor_id == filters.actor_id)
    if filters.since is not None:
        query = query.where(a.at >= filters.since)
    if filters.until is not None:
        query = query.where(a.at < filters.until)
    if cursor is not None:
        at, last = decode_cursor(cursor)
        query = query.where(or_(a.at < at, and_(a.at == at, a.id < last)))
    rows = list(await session.scalars(query.order_by(a.at.desc(), a.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        items=[AuditOut.model_validate(row) for row in rows],
        next_cursor=encode_cursor(rows[-1].at, rows[-1].id) if more else None,
    )
