"""GET /ai/usage: usage reports from the daily rollups (app/services/usage)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from app.api.auth import CurrentScope
from app.api.deps import Session
from app.api.problems import problem_responses
from app.db.base import utcnow
from app.kit.text import Text
from app.services.usage.schemas import UsageReport
from app.services.usage.service import (
    DEFAULT_DAYS,
    MAX_DAYS,
    MAX_ROWS,
    report_csv,
    usage_query,
    usage_report,
)

router = APIRouter(prefix="/ai/usage", tags=["usage"])

CSV_MEDIA_TYPE = "text/csv"

_PROBLEMS = problem_responses(401, 422, 503)
_PROBLEMS[422]["description"] = (
    "Invalid input: `validation_error` (a date that is not YYYY-MM-DD, an unknown `format`, a "
    "malformed id), `invalid_text`, `invalid_group_by` (a key other than day, model, "
    f"provider, user, team, key), `invalid_date_range` (`to` before `from`), "
    f"`date_range_too_long` (more than {MAX_DAYS} days), `too_many_rows` (more than "
    f"{MAX_ROWS} groups: narrow the period or the grouping)."
)


@router.get(
    "",
    summary="Usage report: requests, tokens, cost and durations",
    response_model=UsageReport,
    response_model_exclude_unset=True,
    responses={
        200: {
            "description": "The report: JSON, or with `format=csv` (or `Accept: text/csv`) "
            "CSV: a header line, then one line per row (the grouping keys, then the figures; "
            "an empty cell for a null). The totals are in the JSON only.",
            "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **_PROBLEMS,
    },
)
async def get_usage(
    session: Session,
    scope: CurrentScope,
    start: Annotated[
        date | None,
        Query(
            alias="from",
            description=f"The first UTC day (YYYY-MM-DD); default: {DEFAULT_DAYS - 1} days "
            "before `to`.",
        ),
    ] = None,
    end: Annotated[
        date | None,
        Query(
            alias="to",
            description=f"The last UTC day, inclusive; default: today. At most {MAX_DAYS} days "
            "from `from`.",
        ),
    ] = None,
    group_by: Annotated[
        list[Annotated[Text, Query(max_length=100)]] | None,
        Query(
            description="Group the figures by any of `day`, `model`, `provider`, `user`, "
            "`team`, `key`: the parameter repeated, or comma-separated "
            "(`group_by=day,model`). Default: `day`."
        ),
    ] = None,
    output: Annotated[
        Literal["json", "csv"] | None,
        Query(
            alias="format",
            description="`json` (the default) or `csv`; without it, `Accept: text/csv` asks "
            "for CSV.",
        ),
    ] = None,
    user_id: Annotated[
        uuid.UUID | None, Query(description="Only this user's usage (of what you can see).")
    ] = None,
    team_id: Annotated[
        uuid.UUID | None,
        Query(description="Only the usage of keys of this team (of what you can see)."),
    ] = None,
    api_key_id: Annotated[
        uuid.UUID | None, Query(description="Only this key's usage (of what you can see).")
    ] = None,
    model: Annotated[
        Text | None,
        Query(max_length=200, description="Only this model, as the prompts named it."),
    ] = None,
    accept: Annotated[str | None, Header(description="`text/csv` for CSV.")] = None,
) -> UsageReport | Response:
    """Requests, prompts by final status, provider calls, tokens, cost and durations between
    two UTC days (inclusive; by default the last 30), grouped as asked.

    What you can see, as for prompts: your own usage; as a team's owner or viewer, the team's
    too (the prompts made with keys scoped to it); everything as an admin. The filters narrow
    that down.

    The figures come from daily rollups, updated in the same transaction as the prompt records
    they count (so a report always equals the sums over the prompts and their attempts), never
    from a scan of the prompt log:

    - `requests` = `completed` + `failed` + `cancelled`: prompts that reached that final
      status on those days;
    - `attempts`: provider calls that ended on those days (retries and fallbacks included),
      with their tokens and cost;
    - `p50_duration_ms` / `p95_duration_ms`: of the completed prompts' answering call, to the
      resolution of a histogram (the upper bound of the bucket holding the percentile;
      each bucket about 1.5 times as wide as the one before).
    """
    query = usage_query(
        today=utcnow().date(),
        start=start,
        end=end,
        group_by=group_by,
        user_id=user_id,
        team_id=team_id,
        api_key_id=api_key_id,
        model=model,
    )
    report = await usage_report(session, scope=scope, query=query)
    csv_asked = output == "csv" or (output is None and CSV_MEDIA_TYPE in (accept or ""))
    if not csv_asked:
        return report
    filename = f"usage-{query.start}-{query.end}.csv"
    return Response(
        report_csv(report),
        media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
