"""Setting and reading limits (the admin API and `python -m app set-limits`), and each
budget's standing (`GET /ai/usage/budgets`). Every change is written to the audit log.

A change applies at once in the process that made it (its key cache is cleared by the
caller), and within AUTH_CACHE_SECONDS in the others, which keep a key's limits with the key.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import Base, utcnow
from app.db.models import DEFAULT_SUBJECT, ApiKey, Limit, LimitScope, LimitUsage, Team, User
from app.engine.ledger import period_end, period_start, user_limits
from app.kit.errors import NotFound
from app.services import audit
from app.services.audit import Actor
from app.services.auth.accounts import account_of
from app.services.auth.authenticator import Caller
from app.services.auth.scope import PromptScope
from app.services.limits.schemas import BudgetOut, LimitOut, LimitSet

_FIELDS = ("rpm", "tpm", "max_in_flight", "budget_usd", "budget_period", "warn_at")


def snapshot(limit: Limit) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(limit, name) for name in _FIELDS}
    if values["budget_usd"] is not None:
        values["budget_usd"] = str(values["budget_usd"])
    return values


def limit_out(limit: Limit) -> LimitOut:
    return LimitOut(
        scope=limit.scope,
        subject_id=None if limit.scope == LimitScope.DEFAULT else limit.subject_id,
        updated_at=limit.updated_at,
        **{name: getattr(limit, name) for name in _FIELDS},
    )


async def check_subject(session: AsyncSession, scope: str, subject_id: uuid.UUID) -> None:
    """A 404 for a key, user or team that does not exist."""
    kinds: dict[str, type[Base]] = {
        LimitScope.KEY: ApiKey,
        LimitScope.USER: User,
        LimitScope.TEAM: Team,
    }
    kind = kinds[scope]
    if await session.get(kind, subject_id) is None:
        raise NotFound(f"No {scope} with id {subject_id}.", code=f"unknown_{scope}")


async def set_limits(
    session: AsyncSession, actor: Actor, *, scope: str, subject_id: uuid.UUID | None, data: LimitSet
) -> Limit:
    """Set (replace) the limits of a key, user or team, or the default (`subject_id` None)."""
    subject = DEFAULT_SUBJECT if subject_id is None else subject_id
    if scope != LimitScope.DEFAULT:
        await check_subject(session, scope, subject)
    limit = await session.get(Limit, (scope, subject))
    before = snapshot(limit) if limit is not None else None
    if limit is None:
        limit = Limit(scope=scope, subject_id=subject, created_at=utcnow())
        session.add(limit)
    for name in _FIELDS:
        setattr(limit, name, getattr(data, name))
    limit.updated_at = utcnow()
    await session.flush()
    audit.record(
        session,
        actor,
        "limits.set",
        f"{scope}_limits",
        subject,
        before=before,
        after=snapshot(limit),
    )
    return limit


async def clear_limits(
    session: AsyncSession, actor: Actor, *, scope: str, subject_id: uuid.UUID | None
) -> None:
    """Take away the limits of a key, user or team (a user then falls under the default), or
    the default itself. A 404 if there were none."""
    subject = DEFAULT_SUBJECT if subject_id is None else subject_id
    limit = await session.get(Limit, (scope, subject))
    if limit is None:
        who = "the server" if subject_id is None else f"{scope} {subject_id}"
        raise NotFound(f"No limits are set for {who}.", code="no_limits")
    before = snapshot(limit)
    await session.delete(limit)
    audit.record(session, actor, "limits.clear", f"{scope}_limits", subject, before=before)


async def list_limits(session: AsyncSession) -> list[Limit]:
    return list(await session.scalars(select(Limit).order_by(Limit.scope, Limit.updated_at)))


async def budgets(session: AsyncSession, caller: Caller) -> list[BudgetOut]:
    """The budgets the caller may see, each with its current period's standing: an admin sees
    every one; anyone else their own user's (or the default applied to them), their keys',
    and those of the teams they own or view."""
    scope = PromptScope.of(caller)
    user_id = caller.user.id
    # The rows with a budget, and the users' own rows (one without a budget exempts its user
    # from the default's): every user's for an admin, else the caller's.
    own_rows = Limit.scope == LimitScope.USER
    if not scope.admin:
        own_rows = and_(own_rows, Limit.subject_id == user_id)
    rows = {
        (lim.scope, lim.subject_id): lim
        for lim in await session.scalars(
            select(Limit).where(or_(Limit.budget_usd.is_not(None), own_rows))
        )
    }
    subjects: list[tuple[str, uuid.UUID, Limit]] = []
    if scope.admin:
        for (kind, subject), lim in rows.items():
            if kind != LimitScope.DEFAULT and lim.budget_usd is not None:
                subjects.append((kind, subject, lim))
        default = rows.get((LimitScope.DEFAULT, DEFAULT_SUBJECT))
        if default is not None:  # the default, as applied to each user it governs now
            governed = select(LimitUsage.subject_id).where(
                LimitUsage.scope == LimitScope.USER,
                LimitUsage.period_start.is_not(None),
            )
            for subject in await session.scalars(governed):
                if user_limits(rows, subject) is default:
                    subjects.append((LimitScope.USER, subject, default))
    else:
        keys = set(await session.scalars(select(ApiKey.id).where(ApiKey.user_id == user_id)))
        own = user_limits(rows, user_id)
        if own is not None and own.budget_usd is not None:
            subjects.append((LimitScope.USER, user_id, own))
        for (kind, subject), lim in rows.items():
            if (kind == LimitScope.KEY and subject in keys) or (
                kind == LimitScope.TEAM and subject in scope.read_teams
            ):
                subjects.append((kind, subject, lim))
    if not subjects:
        return []
    usage = {
        (u.scope, u.subject_id): u
        for u in await session.scalars(
            select(LimitUsage).where(
                or_(
                    *(
                        and_(LimitUsage.scope == s, LimitUsage.subject_id == i)
                        for s, i, _ in subjects
                    )
                )
            )
        )
    }
    now = utcnow()
    out = []
    for kind, subject, lim in subjects:
        account = account_of(lim, scope=kind, subject_id=subject)
        if account is None or account.budget_usd is None:
            continue
        start = period_start(now, account.budget_period)
        row = usage.get((kind, subject))
        reserved = row.reserved_usd if row is not None else Decimal(0)
        spent = row.spent_usd if row is not None and row.period_start == start else Decimal(0)
        out.append(
            BudgetOut(
                scope=kind,
                subject_id=subject,
                default=lim.scope == LimitScope.DEFAULT,
                period=account.budget_period,
                period_start=start,
                period_end=period_end(start, account.budget_period),
                budget_usd=account.budget_usd,
                reserved_usd=reserved,
                spent_usd=spent,
                remaining_usd=max(Decimal(0), account.budget_usd - spent - reserved),
                in_flight=row.in_flight if row is not None else 0,
                warn_at=lim.warn_at,
                warning=spent >= account.budget_usd * Decimal(str(lim.warn_at)),
            )
        )
    return out
