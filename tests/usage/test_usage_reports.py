"""`GET /ai/usage` through the real app: a mix of prompts (answered, failed, retried, cancelled
while running and while pending, by /ai/prompts/ and /v1/chat/completions), then the report
equals the sums over the prompt log, in every grouping, as JSON and as CSV, for exactly what
each role may see; and bad input is a 422 with a stable code."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import timedelta
from typing import Any

import pytest

from app.db.base import utcnow
from app.services.usage import service
from tests.auth.test_teams import Person, _person, _team, _with_team
from tests.conftest import Api
from tests.prompts.test_validation import assert_problem
from tests.records import new_prompt
from tests.usage.sums import (
    FIELDS,
    Key,
    Sums,
    bucket_bound,
    histogram,
    raw_sums,
    report_figures,
    totals,
)

GROUPS = {"day": "day", "model": "model", "provider": "provider", "user": "user_id"}
GROUPS |= {"team": "team_id", "key": "api_key_id"}
ALL = ",".join(GROUPS)


def _period() -> dict[str, str]:
    """Yesterday to tomorrow (UTC): today's prompts, even when the test runs over midnight."""
    today = utcnow().date()
    return {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}


async def _report(api: Api, person: Person, **params: str) -> dict[str, Any]:
    response = await api.client.get("/ai/usage", params=params, headers=person.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def _by_key(report: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """The rows of a report grouped by every key."""
    assert report["group_by"] == list(GROUPS)
    return {tuple(row[name] for name in FIELDS): report_figures(row) for row in report["rows"]}  # type: ignore[misc]


async def _raw(api: Api, users: set[str]) -> dict[Key, Sums]:
    async with api.sessions() as session:
        return await raw_sums(session, users)


async def _submit_and_wait(api: Api, person: Person, model: str, **body: Any) -> dict[str, Any]:
    created = await api.submit(person.headers, model=model, **body)
    return await api.wait_final(person.headers, created["id"])


async def _cancel_running(api: Api, person: Person, model: str) -> None:
    created = await api.submit(person.headers, model=model)
    for _ in range(500):
        seen = await api.client.get(f"/ai/prompts/{created['id']}", headers=person.headers)
        if seen.json()["status"] == "running":
            break
        await asyncio.sleep(0.02)
    cancelled = await api.client.post(f"/ai/prompts/{created['id']}/cancel", headers=person.headers)
    assert cancelled.status_code in (200, 202), cancelled.text
    done = await api.wait_final(person.headers, created["id"])
    assert done["status"] == "cancelled" and len(done["attempts"]) == 1


async def test_the_report_equals_the_prompt_log_for_what_each_role_sees(api: Api):
    admin = Person("", await api.new_user(is_admin=True))
    team, other_team = await _team(api, admin.headers), await _team(api, admin.headers)
    owner = await _with_team(api, admin.headers, team, "owner")
    member = await _with_team(api, admin.headers, team, "member")
    viewer = await _with_team(api, admin.headers, team, "viewer")
    seller = await _with_team(api, admin.headers, other_team, "member")
    loner = await _person(api, admin.headers)
    tag = uuid.uuid4().hex[:8]

    # The member: answered (priced), failed at once, answered on a retry, with cached and
    # reasoning tokens, through /v1, cancelled while running and while pending.
    answered = await _submit_and_wait(api, member, "gpt-4o-mini")
    assert answered["status"] == "completed" and answered["team_id"] == team
    failed = await _submit_and_wait(api, member, f"openai/error-400-{tag}")
    assert failed["status"] == "failed"
    retried = await _submit_and_wait(api, member, f"openai/flaky-1-{tag}")
    assert retried["status"] == "completed" and len(retried["attempts"]) == 2
    await _submit_and_wait(api, member, f"openai/cached-3-{tag}", prompt_text="a b c d e")
    await _submit_and_wait(api, member, f"openai/reasoning-2-{tag}")
    chat = await api.client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]},
        headers=member.headers,
    )
    assert chat.status_code == 200, chat.text
    await _cancel_running(api, member, f"openai/hang-usage-{tag}")
    # Pending: recorded but not dispatched (the sweeper redispatches it only after seconds).
    waiting = new_prompt(
        f"usage-pending-{tag}",
        user_id=uuid.UUID(member.id),
        team_id=uuid.UUID(team),
        api_key_id=uuid.UUID(answered["api_key_id"]),
    )
    await api.app.state.services.recorder.create_prompt(waiting)
    cancelled = await api.client.post(f"/ai/prompts/{waiting.id}/cancel", headers=member.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # The others: one answer each.
    for person in (owner, seller, loner):
        assert (await _submit_and_wait(api, person, "gpt-4o-mini"))["status"] == "completed"

    period = _period()
    everyone = {owner.id, member.id, viewer.id, seller.id, loner.id}
    raw = await _raw(api, everyone)
    mine = {key: sums for key, sums in raw.items() if key[3] == member.id}
    assert sum(s.completed for s in mine.values()) == 5
    assert sum(s.failed for s in mine.values()) == 1
    assert sum(s.cancelled for s in mine.values()) == 2
    assert sum(s.attempts for s in mine.values()) == 8
    assert sum(s.cost_usd for s in mine.values()) > 0
    assert sum(s.cached_input_tokens for s in mine.values()) > 0
    assert sum(s.reasoning_tokens for s in mine.values()) > 0

    # An admin sees everyone's, row by row equal to the log (one user at a time: the suite's
    # other tests share the database).
    rows: dict[Key, dict[str, Any]] = {}
    for user in everyone:
        report = await _report(api, admin, group_by=ALL, user_id=user, **period)
        assert report["from"] == period["from"] and report["to"] == period["to"]
        rows |= _by_key(report)
    assert rows == {key: s.figures() for key, s in raw.items()}

    # Each role: the rows and totals of exactly what it may see.
    team_users = {owner.id, member.id}
    for person, seen in (
        (member, {member.id}),
        (owner, team_users),
        (viewer, team_users),
        (seller, {seller.id}),
        (loner, {loner.id}),
    ):
        visible = {key: s for key, s in raw.items() if key[3] in seen}
        report = await _report(api, person, group_by=ALL, **period)
        assert _by_key(report) == {key: s.figures() for key, s in visible.items()}, person
        assert report_figures(report["totals"]) == totals(visible)[()].figures()

    # Each grouping (and the parameter repeated or comma-separated alike).
    for by in (("model",), ("provider",), ("day", "user"), ("team", "key"), ("key", "model")):
        names = [GROUPS[name] for name in by]
        teams = {k: s for k, s in raw.items() if k[3] in team_users}
        expected = {key: s.figures() for key, s in totals(teams, tuple(names)).items()}
        report = await _report(api, owner, group_by=list(by), **period)  # type: ignore[arg-type]
        assert report["group_by"] == list(by)
        assert all(set(row) - set(Sums().figures()) == set(names) for row in report["rows"])
        rows = {tuple(row[n] for n in names): report_figures(row) for row in report["rows"]}
        assert rows == expected, by
        again = await _report(api, owner, group_by=",".join(by), **period)
        assert again == report

    # The filters narrow what one sees; another team's usage stays invisible.
    only_member = await _report(api, viewer, group_by="user", user_id=member.id, **period)
    assert [row["user_id"] for row in only_member["rows"]] == [member.id]
    hidden = await _report(api, viewer, team_id=other_team, **period)
    assert hidden["rows"] == [] and hidden["totals"]["requests"] == 0
    assert hidden["totals"]["cost_usd"] == "0" and hidden["totals"]["p50_duration_ms"] is None
    sellers = await _report(api, admin, group_by="user,team", team_id=other_team, **period)
    assert [(r["user_id"], r["team_id"]) for r in sellers["rows"]] == [(seller.id, other_team)]
    loners = await _report(api, admin, group_by="team,key", user_id=loner.id, **period)
    assert [row["team_id"] for row in loners["rows"]] == [None]  # (made without a team)
    model = await _report(api, member, group_by="model", model="gpt-4o-mini", **period)
    assert [row["model"] for row in model["rows"]] == ["gpt-4o-mini"]
    assert model["rows"][0]["requests"] == 2  # /ai/prompts/ and /v1


async def test_csv_holds_the_rows_of_the_json(api: Api, monkeypatch: pytest.MonkeyPatch):
    person = Person("", await api.new_user())
    await _submit_and_wait(api, person, "gpt-4o-mini")
    await _submit_and_wait(api, person, f"openai/error-400-{uuid.uuid4().hex[:6]}")
    period = _period()
    report = await _report(api, person, group_by="day,model,team", **period)
    assert len(report["rows"]) == 2
    for asked in ({"format": "csv"}, {}):
        headers = person.headers | ({} if asked else {"Accept": "text/csv"})
        response = await api.client.get(
            "/ai/usage", params={"group_by": "day,model,team", **period, **asked}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in response.headers["content-disposition"]
        lines = list(csv.reader(io.StringIO(response.text)))
        assert lines[0] == ["day", "model", "team_id", *Sums().figures()]
        as_text = [
            ["" if value is None else str(value) for value in row.values()]
            for row in report["rows"]
        ]
        assert lines[1:] == as_text
    # Without dates: the last 30 days, by day.
    default = await _report(api, person)
    today = utcnow().date()
    assert default["to"] == str(today) and default["from"] == str(today - timedelta(days=29))
    assert default["group_by"] == ["day"] and set(default["rows"][0]) >= {"day", "requests"}
    assert "model" not in default["rows"][0]
    # More groups than a report holds: refused, not truncated.
    monkeypatch.setattr(service, "MAX_ROWS", 1)
    response = await api.client.get(
        "/ai/usage", params={"group_by": "model", **period}, headers=person.headers
    )
    assert_problem(response, 422, "too_many_rows")


def test_a_percentile_is_the_upper_bound_of_its_bucket():
    assert service.percentile([0] * 32, 0.5) is None
    one_each = [1] * 32  # one prompt in each bucket: the 16th [2000, 3000) and the 31st
    assert [service.percentile(one_each, f) for f in (0.5, 0.95)] == [3_000, 1_000_000]
    slow = [0] * 31 + [3]  # 1,000 s and more: shown as the last bound
    assert service.percentile(slow, 0.5) == 1_000_000
    assert service.percentile([5] + [0] * 31, 0.95) == 10  # below 10 ms
    assert [bucket_bound(list(range(0, 2_000_000, 997)), f) for f in (0.5, 0.95)] == [
        service.percentile(histogram(list(range(0, 2_000_000, 997))), f) for f in (0.5, 0.95)
    ]


async def test_bad_input_is_a_422_with_a_stable_code(api: Api):
    headers = await api.new_user()

    async def get(**params: Any) -> Any:
        return await api.client.get("/ai/usage", params=params, headers=headers)

    assert_problem(
        await get(**{"from": "2026-03-02", "to": "2026-03-01"}), 422, "invalid_date_range"
    )
    too_long = await get(**{"from": "2025-01-01", "to": "2026-01-02"})
    assert "366" in assert_problem(too_long, 422, "date_range_too_long")["detail"]
    assert (await get(**{"from": "2025-01-01", "to": "2026-01-01"})).status_code == 200
    unknown = assert_problem(await get(group_by="day,week"), 422, "invalid_group_by")
    assert unknown["allowed"] == list(GROUPS) and "'week'" in unknown["detail"]
    assert_problem(await get(**{"from": "2026-13-01"}), 422, "validation_error")
    earliest = await get(to="0001-01-02", group_by="day,")  # (an empty key is no key)
    assert earliest.status_code == 200, earliest.text
    assert earliest.json()["from"] == "0001-01-01" and earliest.json()["group_by"] == ["day"]
    assert_problem(await get(format="xml"), 422, "validation_error")
    assert_problem(await get(user_id="me"), 422, "validation_error")
    assert_problem(await get(model="a\x00b"), 422, "invalid_text")
    assert_problem(await api.client.get("/ai/usage"), 401, "missing_api_key")
