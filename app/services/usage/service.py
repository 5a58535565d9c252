"""Usage reports from the daily rollups (`usage_daily`, kept up to date by the writes that
produce the figures: app/engine/usage_rollups.py), never from the prompt log.

A report covers whole UTC days, `from` to `to` inclusive, grouped by any of day, model,
provider, user, team and key, and shows only what the caller may see (app/services/auth/
scope.py): their own usage; their teams' as an owner or viewer; everything as an admin.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models.usage import (
    COST_SCALE,
    COUNTERS,
    DURATION_BOUNDS_MS,
    DURATION_BUCKETS,
    NO_ID,
    usage_daily,
)
from app.kit.errors import InvalidInput
from app.services.auth.scope import PromptScope
from app.services.usage.schemas import (
    GROUP_BY,
    GROUP_FIELDS,
    GroupBy,
    UsageFigures,
    UsageReport,
    UsageRow,
)

MAX_DAYS = 366  # the longest period one report covers
DEFAULT_DAYS = 30  # without `from`: the 30 days up to `to` (today by default)
MAX_ROWS = 10_000  # a report with more groups is refused: narrow the period or the grouping

_U = usage_daily.c
# What a report sums per group: the counters, then the completed prompts of each duration
# bucket (a rollup row counts its completed prompts in the bucket of its `duration_bucket`).
_SUMS = (
    *(func.sum(_U[name]) for name in COUNTERS),
    *(func.sum(_U.completed).filter(_U.duration_bucket == k) for k in range(DURATION_BUCKETS)),
)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: date
    end: date
    group_by: tuple[GroupBy, ...]
    user_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    model: str | None = None


def usage_query(
    *,
    today: date,
    start: date | None = None,
    end: date | None = None,
    group_by: Sequence[str] | None = None,
    user_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    model: str | None = None,
) -> UsageQuery:
    """The report asked for, checked: `group_by` values may repeat the parameter or be
    comma-separated (default: by day); without dates, the last 30 days up to today."""
    keys: list[GroupBy] = []
    for value in group_by or ():
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue  # (`group_by=day,`)
            if name not in GROUP_BY:
                raise InvalidInput(
                    f"Cannot group by {name!r}: group_by takes {', '.join(GROUP_BY)}.",
                    code="invalid_group_by",
                    extra={"allowed": list(GROUP_BY)},
                )
            if name not in keys:
                keys.append(name)
    end = end if end is not None else today
    if start is None:
        default = timedelta(days=DEFAULT_DAYS - 1)
        start = end - default if end - date.min >= default else date.min
    if end < start:
        raise InvalidInput(f"`to` ({end}) is before `from` ({start}).", code="invalid_date_range")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInput(
            f"A report covers at most {MAX_DAYS} days; {start} to {end} is "
            f"{(end - start).days + 1}.",
            code="date_range_too_long",
        )
    return UsageQuery(
        start=start,
        end=end,
        group_by=tuple(keys) or ("day",),
        user_id=user_id,
        team_id=team_id,
        api_key_id=api_key_id,
        model=model,
    )


def _visible(scope: PromptScope) -> ColumnElement[bool]:
    """The rollups of the prompts the scope sees (as `PromptScope.visible` for prompts)."""
    if scope.admin:
        return true()
    if not scope.read_teams:
        return _U.user_id == scope.user_id
    return or_(_U.user_id == scope.user_id, _U.team_id.in_(scope.read_teams))


def percentile(histogram: Sequence[int], fraction: float) -> int | None:
    """The duration below which `fraction` of the histogram's prompts fall (nearest rank), as
    the upper bound of the bucket that holds it (the open last bucket: its lower bound)."""
    total = sum(histogram)
    if total == 0:
        return None
    rank, seen = max(1, math.ceil(fraction * total)), 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return DURATION_BOUNDS_MS[min(bucket, len(DURATION_BOUNDS_MS) - 1)]
    raise AssertionError("unreachable: the ranks add up to the total")


def _figures(sums: Sequence[int]) -> dict[str, Any]:
    """A row's (or the totals') figures from its sums (`_SUMS`)."""
    counts = dict(zip(COUNTERS, sums, strict=False))
    histogram = sums[len(COUNTERS) :]
    return {
        "requests": counts["completed"] + counts["failed"] + counts["cancelled"],
        **{name: counts[name] for name in COUNTERS[:8]},
        "cost_usd": Decimal(counts["cost_usd_e10"]) / COST_SCALE,
        "p50_duration_ms": percentile(histogram, 0.50),
        "p95_duration_ms": percentile(histogram, 0.95),
    }


def _key_value(group: GroupBy, value: Any) -> Any:
    if group in ("team", "key") and value == NO_ID:
        return None  # (stored as the nil id: made without a team, or a key)
    return value


async def usage_report(
    session: AsyncSession, *, scope: PromptScope, query: UsageQuery
) -> UsageReport:
    """The figures of the prompts the scope sees, by the query's groups, and their totals."""
    keys = [_U[GROUP_FIELDS[group]] for group in query.group_by]
    statement = (
        select(*keys, *_SUMS)
        .where(_U.day >= query.start, _U.day <= query.end, _visible(scope))
        .group_by(*keys)
        .order_by(*keys)
        .limit(MAX_ROWS + 1)
    )
    filters = {
        "user_id": query.user_id,
        "team_id": query.team_id,
        "api_key_id": query.api_key_id,
        "model": query.model,
    }
    for name, value in filters.items():
        if value is not None:
            statement = statement.where(_U[name] == value)
    found = (await session.execute(statement)).all()
    if len(found) > MAX_ROWS:
        raise InvalidInput(
            f"This report would have more than {MAX_ROWS} rows: ask for a shorter period, or "
            "group by fewer keys.",
            code="too_many_rows",
        )
    rows: list[UsageRow] = []
    totals = [0] * len(_SUMS)
    width = len(keys)
    for found_row in found:
        # (PostgreSQL sums a bigint as numeric: every sum is a whole number)
        sums = [int(value or 0) for value in found_row[width:]]
        totals = [a + b for a, b in zip(totals, sums, strict=True)]
        key_values = {
            GROUP_FIELDS[group]: _key_value(group, value)
            for group, value in zip(query.group_by, found_row[:width], strict=True)
        }
        rows.append(UsageRow(**key_values, **_figures(sums)))
    return UsageReport(
        from_=query.start,
        to=query.end,
        group_by=list(query.group_by),
        rows=rows,
        totals=UsageFigures(**_figures(totals)),
    )


def report_csv(report: UsageReport) -> str:
    """The report's rows as CSV (RFC 4180): a header, then one line per row; the columns are
    the grouping keys, then the figures (an empty cell for a null)."""
    columns = [GROUP_FIELDS[group] for group in report.group_by] + list(UsageFigures.model_fields)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in report.rows:
        values = row.model_dump(mode="json")
        writer.writerow(["" if values[name] is None else values[name] for name in columns])
    return out.getvalue()
