"""The `GET /ai/usage` report: rows of figures by the requested keys, and their totals."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from app.kit import money

GroupBy = Literal["day", "model", "provider", "user", "team", "key"]
GROUP_BY: tuple[GroupBy, ...] = ("day", "model", "provider", "user", "team", "key")
# The field of a row (and CSV column) each grouping key fills.
GROUP_FIELDS: dict[GroupBy, str] = {
    "day": "day",
    "model": "model",
    "provider": "provider",
    "user": "user_id",
    "team": "team_id",
    "key": "api_key_id",
}


Usd = Annotated[Decimal, PlainSerializer(money.plain, return_type=str, when_used="json")]


class UsageFigures(BaseModel):
    """What a row (or the whole report) adds up to."""

    requests: int = Field(
        description="Prompts that reached a final status in the period: completed + failed "
        "+ cancelled (counted on the UTC day they did)."
    )
    completed: int
    failed: int
    cancelled: int
    attempts: int = Field(
        description="Provider calls, each counted on the UTC day it ended: retries, "
        "fallbacks, and calls abandoned, cancelled or lost with their runner included."
    )
    input_tokens: int = Field(description="Of every provider call (0 where none was reported).")
    output_tokens: int
    cached_input_tokens: int = Field(description="Of input_tokens, served from a prompt cache.")
    reasoning_tokens: int = Field(description="Of output_tokens, spent reasoning.")
    cost_usd: Usd = Field(
        description="Of every provider call, at the catalogue price in force when it ran, as "
        "a decimal string (exact, to 10 decimal places).",
        examples=["0.0123456"],
    )
    p50_duration_ms: int | None = Field(
        description="Median duration of the completed prompts' answering call (the response's "
        "`duration_ms`), as the upper bound of its histogram bucket: the median is below it "
        "and at or above the bound before (10, 15, 20, 30, 50, 70, 100, 150, … ms: each about "
        "1.5 times the one before); 1000000 for one of 1,000 s or more. Null without a "
        "completed prompt."
    )
    p95_duration_ms: int | None = Field(description="The same, at the 95th percentile.")


class _RowKeys(BaseModel):
    """A row's grouping keys: only those of `group_by` are present in a row."""

    day: date | None = Field(None, description="The UTC date (`group_by=day`).")
    model: str | None = Field(
        None,
        description="The model the prompts named (`group_by=model`), as `GET /ai/prompts/` shows.",
    )
    provider: str | None = Field(
        None,
        description="`group_by=provider`: for attempts, tokens and cost, the provider called "
        "(a fallback's own); for the prompt counts, the provider of the model they named.",
    )
    user_id: uuid.UUID | None = Field(None, description="Whose prompts (`group_by=user`).")
    team_id: uuid.UUID | None = Field(
        None, description="The team of the key they were made with (`group_by=team`); null: none."
    )
    api_key_id: uuid.UUID | None = Field(
        None, description="The key they were made with (`group_by=key`); null: none."
    )


class UsageRow(UsageFigures, _RowKeys):
    """One group: its keys, then its figures."""


class UsageReport(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-12-01",
                    "to": "2026-12-02",
                    "group_by": ["day", "model"],
                    "rows": [
                        {
                            "day": "2026-12-01",
                            "model": "gpt-4o-mini",
                            "requests": 120,
                            "completed": 117,
                            "failed": 2,
                            "cancelled": 1,
                            "attempts": 124,
                            "input_tokens": 48210,
                            "output_tokens": 20315,
                            "cached_input_tokens": 1024,
                            "reasoning_tokens": 0,
                            "cost_usd": "0.0194211",
                            "p50_duration_ms": 1000,
                            "p95_duration_ms": 3000,
                        }
                    ],
                    "totals": {
                        "requests": 120,
                        "completed": 117,
                        "failed": 2,
                        "cancelled": 1,
                        "attempts": 124,
                        "input_tokens": 48210,
                        "output_tokens": 20315,
                        "cached_input_tokens": 1024,
                        "reasoning_tokens": 0,
                        "cost_usd": "0.0194211",
                        "p50_duration_ms": 1000,
                        "p95_duration_ms": 3000,
                    },
                }
            ]
        },
    )

    from_: date = Field(alias="from", description="The first UTC day covered.")
    to: date = Field(description="The last UTC day covered (inclusive).")
    group_by: list[GroupBy]
    rows: list[UsageRow] = Field(description="One per group that has any figure, in key order.")
    totals: UsageFigures = Field(description="Over every row.")
