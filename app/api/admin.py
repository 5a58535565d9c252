"""/ai/admin: users, teams, their members and roles, API keys, and rate limits and budgets
(admins only; the same operations as `python -m app`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import AwareDatetime
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import AdminUser
from app.api.deps import ServicesDep, Session
from app.api.problems import problem_responses
from app.db.models import Team, TeamMember, User
from app.kit.text import Text
from app.services import audit
from app.services.audit import Actor, AuditFilters, AuditPage
from app.services.auth import admin, service
from app.services.auth.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    MemberOut,
    MemberSet,
    TeamCreate,
    TeamList,
    TeamOut,
    UserCreate,
    UserList,
    UserOut,
)
from app.services.container import Services
from app.services.limits import service as limits
from app.services.limits.schemas import LimitList, LimitOut, LimitSet

router = APIRouter(prefix="/ai/admin", tags=["admin"])


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    responses = problem_responses(401, 403, *statuses)
    responses[403]["description"] = "The key's user is not an admin (`admin_required`)."
    return responses


def _team(team: Team, members: list[TeamMember]) -> TeamOut:
    return TeamOut(
        id=team.id,
        name=team.name,
        description=team.description,
        created_at=team.created_at,
        members=[MemberOut.of(m) for m in members if m.team_id == team.id],
    )


@router.post("/users", status_code=201, summary="Create a user", responses=_problems(409, 422))
async def create_user(session: Session, actor: AdminUser, data: UserCreate) -> UserOut:
    """A user (with no key yet: `POST /ai/admin/keys` makes one). A taken email is a **409**
    `email_taken`."""
    user = await admin.create_user(
        session, Actor(actor), email=data.email, name=data.name, is_admin=data.is_admin
    )
    return UserOut.model_validate(user)


@router.get("/users", summary="List the users", responses=_problems())
async def list_users(session: Session, _: AdminUser) -> UserList:
    return UserList(items=[UserOut.model_validate(u) for u in await service.list_users(session)])


@router.post("/teams", status_code=201, summary="Create a team", responses=_problems(409, 422))
async def create_team(session: Session, actor: AdminUser, data: TeamCreate) -> TeamOut:
    """A team, with no members yet. A taken name is a **409** `team_taken`."""
    team = await admin.create_team(
        session, Actor(actor), name=data.name, description=data.description
    )
    return _team(team, [])


@router.get("/teams", summary="List the teams", responses=_problems())
async def list_teams(session: Session, _: AdminUser) -> TeamList:
    """Every team, by name, with its members and their roles."""
    teams = await admin.list_teams(session)
    members = await admin.members_of(session, [t.id for t in teams])
    return TeamList(items=[_team(t, members) for t in teams])


@router.get("/teams/{team_id}", summary="Read a team", responses=_problems(404, 422))
async def get_team(session: Session, _: AdminUser, team_id: uuid.UUID) -> TeamOut:
    team = await admin.get_team(session, team_id)
    return _team(team, await admin.members_of(session, [team.id]))


@router.put(
    "/teams/{team_id}/members/{user_id}",
    summary="Add a member to a team, or change their role",
    responses=_problems(404, 422),
)
async def set_member(
    session: Session, actor: AdminUser, team_id: uuid.UUID, user_id: uuid.UUID, data: MemberSet
) -> MemberOut:
    """The user's role in the team: `owner`, `member` or `viewer`. It takes effect within
    AUTH_CACHE_SECONDS on an API process that had just seen the user's keys."""
    member = await admin.set_member(
        session, Actor(actor), team_id=team_id, user_id=user_id, role=data.role
    )
    return MemberOut.of(member)


@router.delete(
    "/teams/{team_id}/members/{user_id}",
    status_code=204,
    summary="Take a member out of a team",
    responses=_problems(404, 422),
)
async def remove_member(
    session: Session, actor: AdminUser, team_id: uuid.UUID, user_id: uuid.UUID
) -> Response:
    """Their keys scoped to the team stop working (401 `key_team_left`)."""
    await admin.remove_member(session, Actor(actor), team_id=team_id, user_id=user_id)
    return Response(status_code=204)


@router.post("/keys", status_code=201, summary="Create an API key", responses=_problems(404, 422))
async def create_key(
    session: Session, actor: AdminUser, data: KeyCreate, services: ServicesDep
) -> KeyCreated:
    """A key for a user, maybe scoped to one of their teams (its prompts billed to and shown
    in that team) and to a list of models, with a description and an expiry. The key itself
    is in the answer's `key`, and only there: it is never stored or shown again.

    Checked: the user exists (`unknown_user`); the team exists (`unknown_team`) and the user
    is its owner or a member (`not_a_team_member`: a viewer only reads); every allowed model
    resolves here (`unknown_model`); the expiry is in the future (`invalid_expiry`)."""
    key, plaintext = await admin.create_key(
        session,
        Actor(actor),
        user_id=data.user_id,
        name=data.name,
        description=data.description,
        team_id=data.team_id,
        allowed_models=data.allowed_models,
        expires_at=data.expires_at,
        drop_params=data.drop_params,
        resolver=services.models,
    )
    return KeyCreated(**KeyOut.of(key).model_dump(), key=plaintext)


@router.get("/audit", summary="Read the audit log", responses=_problems(422))
async def list_audit(
    session: Session,
    _: AdminUser,
    action: Annotated[
        Text | None,
        Query(
            max_length=64,
            description="Only this action, e.g. `key.revoke`.",
            examples=["key.create"],
        ),
    ] = None,
    target_type: Annotated[
        Text | None,
        Query(
            max_length=32,
            description="`user`, `key`, `team`, `prompt_type`, `webhook`, or the limits of "
            "one: `user_limits`, `key_limits`, `team_limits`, `default_limits`.",
        ),
    ] = None,
    target_id: Annotated[Text | None, Query(max_length=200)] = None,
    actor_id: Annotated[uuid.UUID | None, Query(description="Only this user's changes.")] = None,
    since: Annotated[AwareDatetime | None, Query(description="ISO 8601, with an offset.")] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="ISO 8601, with an offset; exclusive.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> AuditPage:
    """Every administrative change, newest first: who (`actor`: an email, or `command line`),
    when, what (`action` on `target_type` / `target_id`), and the target `before` and `after`
    (null when created or deleted). Users, keys, teams and roles, limits and budgets, prompt
    types and webhooks; never a secret. Append-only: nothing here can change or delete an entry."""
    filters = AuditFilters(
        action=action,
        target_type=target_type,
        target_id=target_id,
        actor_id=actor_id,
        since=since,
        until=until,
    )
    return await audit.list_entries(session, filters=filters, limit=limit, cursor=cursor)


@router.get("/keys", summary="List API keys", responses=_problems(422))
async def list_keys(
    session: Session,
    _: AdminUser,
    user_id: Annotated[uuid.UUID | None, Query(description="Only this user's keys.")] = None,
) -> KeyList:
    """Keys by creation, revoked ones included (never the keys themselves)."""
    return KeyList(items=[KeyOut.of(k) for k in await admin.list_keys(session, user_id=user_id)])


@router.post("/keys/{key_id}/revoke", summary="Revoke an API key", responses=_problems(404, 422))
async def revoke_key(
    session: Session, actor: AdminUser, key_id: uuid.UUID, services: ServicesDep
) -> KeyOut:
    """It stops working at once on this process, within AUTH_CACHE_SECONDS on the others.
    Revoking a revoked key changes nothing."""
    key = await admin.get_key(session, key_id)
    key = await admin.revoke_key(session, Actor(actor), prefix=key.prefix)
    services.auth.cache.forget(key.key_hash)
    return KeyOut.of(key)


_LIMIT_SCOPE = Annotated[
    Literal["user", "team", "key"], Path(description="What the limits are on.")
]


@router.get("/limits", summary="List the limits", responses=_problems())
async def list_limits(session: Session, _: AdminUser) -> LimitList:
    """Every limits row: the server's default (`scope` default, no `subject_id`) and those on
    keys, users and teams."""
    return LimitList(items=[limits.limit_out(x) for x in await limits.list_limits(session)])


@router.put("/limits/default", summary="Set the server's default limits", responses=_problems(422))
async def set_default_limits(
    session: Session, actor: AdminUser, data: LimitSet, services: ServicesDep
) -> LimitOut:
    """The limits of every user who has none of their own (each user gets their own room under
    them: the default is not one pool). A user's own limits row replaces the default whole;
    one with nothing set exempts the user."""
    return await _set_limits(session, actor, services, scope="default", subject_id=None, data=data)


@router.delete(
    "/limits/default",
    status_code=204,
    summary="Remove the server's default limits",
    responses=_problems(404),
)
async def clear_default_limits(
    session: Session, actor: AdminUser, services: ServicesDep
) -> Response:
    return await _clear_limits(session, actor, services, scope="default", subject_id=None)


@router.put(
    "/limits/{scope}/{subject_id}",
    summary="Set the limits of a key, a user or a team",
    responses=_problems(404, 422),
)
async def set_limits(
    session: Session,
    actor: AdminUser,
    scope: _LIMIT_SCOPE,
    subject_id: uuid.UUID,
    data: LimitSet,
    services: ServicesDep,
) -> LimitOut:
    """Replaces its limits (a field left out is no such limit): requests and tokens per
    minute, prompts in flight, and a budget per day, week or calendar month (UTC). A request
    is charged to every account it falls under (its key's, its user's or else the default,
    its team's) and refused with a **429** if any has no room. Applies at once on this
    process and within AUTH_CACHE_SECONDS on the others. An unknown key, user or team is a
    **404** (`unknown_key`, `unknown_user`, `unknown_team`)."""
    return await _set_limits(
        session, actor, services, scope=scope, subject_id=subject_id, data=data
    )


@router.delete(
    "/limits/{scope}/{subject_id}",
    status_code=204,
    summary="Remove the limits of a key, a user or a team",
    responses=_problems(404, 422),
)
async def clear_limits(
    session: Session,
    actor: AdminUser,
    scope: _LIMIT_SCOPE,
    subject_id: uuid.UUID,
    services: ServicesDep,
) -> Response:
    """A user without limits of their own falls under the server's default again. What is in
    use (reservations of prompts running now) is still settled as they end."""
    return await _clear_limits(session, actor, services, scope=scope, subject_id=subject_id)


async def _set_limits(
    session: AsyncSession,
    actor: User,
    services: Services,
    *,
    scope: str,
    subject_id: uuid.UUID | None,
    data: LimitSet,
) -> LimitOut:
    """Set the default limits (`subject_id` None) or a key's, user's or team's, and apply them
    at once in this process (its key cache keeps each key's limits)."""
    limit = await limits.set_limits(
        session, Actor(actor), scope=scope, subject_id=subject_id, data=data
    )
    services.auth.cache.clear()
    return limits.limit_out(limit)


async def _clear_limits(
    session: AsyncSession,
    actor: User,
    services: Services,
    *,
    scope: str,
    subject_id: uuid.UUID | None,
) -> Response:
    """Remove them (as `_set_limits` sets them)."""
    await limits.clear_limits(session, Actor(actor), scope=scope, subject_id=subject_id)
    services.auth.cache.clear()
    return Response(status_code=204)
