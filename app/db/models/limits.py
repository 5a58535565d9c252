"""Rate limits and budgets (#17), and the ledger that enforces them.

`limits` holds what an admin set: on a key, a user, a team, or the server-wide default (which
applies to every user without a limit of their own). `limit_usage` is the ledger: one row per
account (a key, a user or a team that has a limit), holding what is in use right now — the
current minute's requests and tokens, the prompts in flight, the current budget period's
money reserved and spent. `reservations` says what each admitted prompt holds of which
account, until it is settled (app/engine/ledger.py).
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Date, Float, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Money, UTCDateTime, utcnow

# The subject of the server-wide default limit (a key of `limits`, which has no NULLs).
DEFAULT_SUBJECT = uuid.UUID(int=0)


class LimitScope(enum.StrEnum):
    DEFAULT = "default"
    USER = "user"
    TEAM = "team"
    KEY = "key"


class BudgetPeriod(enum.StrEnum):
    DAY = "day"
    WEEK = "week"  # from Monday, 00:00 UTC
    MONTH = "month"  # the calendar month, UTC


class Limit(Base):
    __tablename__ = "limits"
    __table_args__ = (
        CheckConstraint("scope IN ('default', 'user', 'team', 'key')", name="scope"),
        CheckConstraint("budget_period IN ('day', 'week', 'month')", name="budget_period"),
    )

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer)  # requests per minute
    tpm: Mapped[int | None] = mapped_column(BigInteger)  # tokens per minute
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[Decimal | None] = mapped_column(Money)
    budget_period: Mapped[str] = mapped_column(String(8), default=BudgetPeriod.MONTH)
    warn_at: Mapped[float] = mapped_column(Float, default=0.8)  # of the budget
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LimitUsage(Base):
    """What an account uses now. Written only by the ledger, under the row's lock."""

    __tablename__ = "limit_usage"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the current minute
    window_requests: Mapped[int] = mapped_column(Integer, default=0)
    window_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    period_start: Mapped[date | None] = mapped_column(Date)  # the current budget period
    reserved_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    spent_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # The period whose warning (`budget.threshold`) was sent: once per period.
    warned_period: Mapped[date | None] = mapped_column(Date)


class Reservation(Base):
    """What one admitted prompt holds of one account: a place in flight and, under a budget,
    the most it can cost. Deleted when the prompt is settled."""

    __tablename__ = "reservations"

    prompt_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    amount_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # The budget period it was admitted in, which its real cost is charged to.
    period_start: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
