"""The limits' request and answer bodies (/ai/admin/limits, /ai/usage/budgets)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from app.kit import money

Scope = Literal["user", "team", "key"]
Period = Literal["day", "week", "month"]


class LimitSet(BaseModel):
    """Limits for a key, a user, a team or the server's default; each left out (or null) is no
    such limit. A limits row with none set exempts its user from the server's default."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, le=10_000_000, description="Requests per minute.")
    tpm: int | None = Field(
        None,
        ge=1,
        le=10_000_000_000,
        description="Tokens per minute: each request counts its prompt's estimated tokens and "
        "the most it may produce (its max_tokens, else the model's ceiling).",
    )
    max_in_flight: int | None = Field(
        None, ge=1, le=1_000_000, description="Prompts admitted and not yet ended, at once."
    )
    budget_usd: Decimal | None = Field(
        None,
        gt=0,
        le=1_000_000_000,
        max_digits=20,
        decimal_places=6,
        description='Money per budget period, in US dollars (e.g. "25.00"). Each request '
        "reserves the most it can cost; a request that would take spent plus reserved past "
        "the budget is refused (429 `budget_exceeded`).",
    )
    budget_period: Period = Field(
        "month", description="day, week (from Monday) or calendar month; UTC."
    )
    warn_at: float = Field(
        0.8,
        gt=0,
        le=1,
        description="The share of the budget past which /ai/usage/budgets shows a warning.",
    )


class LimitOut(LimitSet):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    scope: Literal["default", "user", "team", "key"]
    subject_id: uuid.UUID | None = Field(description="The key, user or team; null: default.")
    updated_at: datetime

    @field_serializer("budget_usd")
    def _money(self, value: Decimal | None) -> str | None:
        return None if value is None else money.plain(value)


class LimitList(BaseModel):
    items: list[LimitOut]


class BudgetOut(BaseModel):
    scope: Literal["user", "team", "key"]
    subject_id: uuid.UUID
    default: bool = Field(description="The server's default budget, applied to this user.")
    period: Period
    period_start: date
    period_end: date = Field(description="The first day of the next period (UTC).")
    budget_usd: Decimal
    reserved_usd: Decimal = Field(description="Held by prompts admitted and not yet ended.")
    spent_usd: Decimal = Field(description="What the period's ended prompts cost.")
    remaining_usd: Decimal
    in_flight: int
    warn_at: float
    warning: bool = Field(description="Spent has passed warn_at of the budget.")

    @field_serializer("budget_usd", "reserved_usd", "spent_usd", "remaining_usd")
    def _money(self, value: Decimal) -> str:
        return money.plain(value)


class BudgetList(BaseModel):
    items: list[BudgetOut]
