"""The accounts a caller's requests are charged to: the key's own limits, the user's (or else
the server-wide default, applied to the user), and the team's the key is scoped to."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import DEFAULT_SUBJECT, Limit, LimitScope
from app.engine.ledger import Account, user_limits


def account_of(limit: Limit, *, scope: str, subject_id: uuid.UUID) -> Account | None:
    """The account a limits row makes of `subject_id`; None if it limits nothing."""
    if (
        limit.rpm is None
        and limit.tpm is None
        and limit.max_in_flight is None
        and limit.budget_usd is None
    ):
        return None
    return Account(
        scope,
        subject_id,
        rpm=limit.rpm,
        tpm=limit.tpm,
        max_in_flight=limit.max_in_flight,
        budget_usd=limit.budget_usd,
        budget_period=limit.budget_period,
        default=limit.scope == LimitScope.DEFAULT,
    )


async def accounts_of(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    key_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
) -> tuple[Account, ...]:
    """One query: the limits rows that apply, as accounts in the order key, user, team."""
    wanted = [
        and_(Limit.scope == LimitScope.USER, Limit.subject_id == user_id),
        and_(Limit.scope == LimitScope.DEFAULT, Limit.subject_id == DEFAULT_SUBJECT),
    ]
    if key_id is not None:
        wanted.append(and_(Limit.scope == LimitScope.KEY, Limit.subject_id == key_id))
    if team_id is not None:
        wanted.append(and_(Limit.scope == LimitScope.TEAM, Limit.subject_id == team_id))
    rows = {
        (r.scope, r.subject_id): r for r in await session.scalars(select(Limit).where(or_(*wanted)))
    }
    found: list[Account | None] = []
    if key_id is not None and (row := rows.get((LimitScope.KEY, key_id))) is not None:
        found.append(account_of(row, scope=LimitScope.KEY, subject_id=key_id))
    if (own := user_limits(rows, user_id)) is not None:
        found.append(account_of(own, scope=LimitScope.USER, subject_id=user_id))
    if team_id is not None and (row := rows.get((LimitScope.TEAM, team_id))) is not None:
        found.append(account_of(row, scope=LimitScope.TEAM, subject_id=team_id))
    return tuple(a for a in found if a is not None)
