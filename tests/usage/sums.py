"""The usage figures computed the slow way, straight from the prompt log, for the tests to
hold the rollups (and the reports made of them) to: each attempt on the UTC day its call
ended, under the prompt's model, the provider called, the prompt's user, team and key; each
prompt in a final status on the UTC day it got there, under its model and provider."""

from __future__ import annotations

import bisect
import math
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models.usage import (
    COST_SCALE,
    COUNTERS,
    DURATION_BOUNDS_MS,
    DURATION_BUCKETS,
    NO_DURATION,
    NO_ID,
    usage_daily,
)

# (day, model, provider, user_id, team_id, api_key_id), as the API shows them: ISO date,
# strings, and None for no team or no key.
Key = tuple[str, str, str, str, str | None, str | None]
FIELDS = ("day", "model", "provider", "user_id", "team_id", "api_key_id")
_PROMPTS = sa.table(
    "prompt_requests",
    *(sa.column(name, sa.Uuid()) for name in ("id", "user_id", "team_id", "api_key_id")),
    *(sa.column(name) for name in ("model", "provider", "status")),
    sa.column("finished_at", sa.String()),  # (the raw value: each backend's, parsed below)
)
_ATTEMPTS = sa.table(
    "prompt_attempts",
    sa.column("prompt_id", sa.Uuid()),
    *(sa.column(name) for name in ("provider", "input_tokens", "output_tokens")),
    *(sa.column(name) for name in ("cached_input_tokens", "reasoning_tokens")),
    sa.column("cost_usd", sa.String()),
    sa.column("ended_at", sa.String()),
)
_RESPONSES = sa.table(
    "prompt_responses", sa.column("prompt_id", sa.Uuid()), sa.column("duration_ms")
)


@dataclass
class Sums:
    attempts: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    durations: list[int] = field(default_factory=list)  # of the completed prompts

    def add(self, other: Sums) -> None:
        for name in (
            "attempts", "completed", "failed", "cancelled", "input_tokens", "output_tokens",
            "cached_input_tokens", "reasoning_tokens", "cost_usd",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.durations += other.durations

    def stored(self) -> dict[str, Any]:
        """What the rollups should hold for these sums."""
        counts = {name: getattr(self, name) for name in COUNTERS[:8]}
        return counts | {"cost_usd": self.cost_usd, "histogram": histogram(self.durations)}

    def figures(self) -> dict[str, Any]:
        """What the report shows for these sums."""
        return {
            "requests": self.completed + self.failed + self.cancelled,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "attempts": self.attempts,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": self.cost_usd,
            "p50_duration_ms": bucket_bound(self.durations, 0.5),
            "p95_duration_ms": bucket_bound(self.durations, 0.95),
        }


def histogram(durations: list[int]) -> list[int]:
    """How many durations fall in each bucket of the rollups' histogram."""
    counts = [0] * DURATION_BUCKETS
    for duration in durations:
        counts[bisect.bisect_right(DURATION_BOUNDS_MS, duration)] += 1
    return counts


def bucket_bound(durations: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of the durations, shown as the upper bound of its
    histogram bucket (the last, open bucket: its lower bound)."""
    if not durations:
        return None
    value = sorted(durations)[max(1, math.ceil(fraction * len(durations))) - 1]
    bucket = bisect.bisect_right(DURATION_BOUNDS_MS, value)
    return DURATION_BOUNDS_MS[min(bucket, len(DURATION_BOUNDS_MS) - 1)]


def _key(at: Any, model: str, provider: str, user: Any, team: Any, key: Any) -> Key:
    # A timestamp read raw: a datetime (PostgreSQL), or naive UTC text (SQLite).
    day = at[:10] if isinstance(at, str) else str(at.astimezone(UTC).date())
    return (day, model, provider, str(user), _id(team), _id(key))


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None or value == NO_ID else str(value)


async def raw_sums(session: AsyncSession, users: Collection[str] | None = None) -> dict[Key, Sums]:
    """The figures of the prompt log by rollup key (of these users' prompts, or of all)."""
    p, a, r = _PROMPTS.c, _ATTEMPTS.c, _RESPONSES.c
    mine = p.user_id.in_([uuid.UUID(u) for u in users]) if users is not None else sa.true()
    found: dict[Key, Sums] = defaultdict(Sums)
    attempts = await session.execute(
        sa.select(
            a.ended_at,
            p.model,
            a.provider,
            p.user_id,
            p.team_id,
            p.api_key_id,
            a.input_tokens,
            a.output_tokens,
            a.cached_input_tokens,
            a.reasoning_tokens,
            a.cost_usd,
        )
        .select_from(_ATTEMPTS.join(_PROMPTS, p.id == a.prompt_id))
        .where(mine)
    )
    for ended_at, model, provider, user_id, team_id, key_id, *counts, cost in attempts:
        sums = found[_key(ended_at, model, provider, user_id, team_id, key_id)]
        sums.attempts += 1
        sums.input_tokens += counts[0] or 0
        sums.output_tokens += counts[1] or 0
        sums.cached_input_tokens += counts[2] or 0
        sums.reasoning_tokens += counts[3] or 0
        # (rounded to Money's 10 places, as PostgreSQL stores it and the rollups count it)
        cost = Decimal(str(cost)) if cost is not None else Decimal(0)
        sums.cost_usd += round(cost * COST_SCALE) / Decimal(COST_SCALE)
    prompts = await session.execute(
        sa.select(
            p.finished_at,
            p.model,
            p.provider,
            p.user_id,
            p.team_id,
            p.api_key_id,
            p.status,
            r.duration_ms,
        )
        .select_from(_PROMPTS.outerjoin(_RESPONSES, r.prompt_id == p.id))
        .where(mine, p.status.in_(["completed", "failed", "cancelled"]))
    )
    for finished_at, model, provider, user_id, team_id, key_id, status, duration in prompts:
        sums = found[_key(finished_at, model, provider, user_id, team_id, key_id)]
        setattr(sums, status, getattr(sums, status) + 1)
        if status == "completed" and duration is not None:
            sums.durations.append(duration)
    return dict(found)


def totals(sums: dict[Key, Sums], by: tuple[str, ...] = ()) -> dict[tuple[Any, ...], Sums]:
    """The sums regrouped by some of the key's fields (none: one grand total, key `()`)."""
    grouped: dict[tuple[Any, ...], Sums] = defaultdict(Sums)
    for key, value in sums.items():
        grouped[tuple(key[FIELDS.index(name)] for name in by)].add(value)
    return dict(grouped)


def report_figures(row: dict[str, Any]) -> dict[str, Any]:
    """A report row's (or the totals') figures, the cost as a Decimal."""
    figures = {name: row[name] for name in Sums().figures()}
    figures["cost_usd"] = Decimal(figures["cost_usd"])
    return figures


async def rollups(session: AsyncSession, users: Collection[str] | None = None) -> dict[Key, Any]:
    """What `usage_daily` holds (for these users, or all), as `Sums.stored` shows it: its rows
    of each key (one per duration bucket) added up."""
    u = usage_daily.c
    mine = u.user_id.in_([uuid.UUID(user) for user in users]) if users is not None else sa.true()
    found: dict[Key, Any] = {}
    for row in (await session.execute(sa.select(usage_daily).where(mine))).mappings():
        key = (str(row["day"]), row["model"], row["provider"], str(row["user_id"]))
        stored = found.setdefault(
            (*key, _id(row["team_id"]), _id(row["api_key_id"])),
            dict.fromkeys(COUNTERS[:8], 0)
            | {"cost_usd": Decimal(0), "histogram": [0] * DURATION_BUCKETS},
        )
        for name in COUNTERS[:8]:
            stored[name] += row[name]
        stored["cost_usd"] += Decimal(row["cost_usd_e10"]) / COST_SCALE
        bucket = row["duration_bucket"]
        if bucket == NO_DURATION:
            assert row["completed"] == 0, "a completed prompt is counted in its duration's row"
        else:
            assert row["completed"] == sum(row[n] for n in COUNTERS) > 0, "only completed ones"
            stored["histogram"][bucket] += row["completed"]
    return found


async def assert_rollups_match(session: AsyncSession, users: Collection[str] | None = None) -> None:
    """The rollups hold exactly the sums over the prompt log (of these users, or of all)."""
    expected = {key: sums.stored() for key, sums in (await raw_sums(session, users)).items()}
    assert await rollups(session, users) == expected
