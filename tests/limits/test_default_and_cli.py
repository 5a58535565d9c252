"""The server-wide default limit (each user gets their own room under it; a user's own limits
replace it; an empty row exempts them) and the limits commands of `python -m app`, on a
database of their own (the suite's shared apps never get a default)."""

from __future__ import annotations

import json
import sqlite3

from app.services.auth import service as auth_service
from tests.auth.test_cli import cli_db, run_cli  # noqa: F401  (the fixture)
from tests.conftest import make_settings, running_api


def _chat() -> dict[str, object]:
    return {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_default_limits_per_user_and_the_commands(cli_db: str):  # noqa: F811
    keys = {}
    async with running_api(make_settings(cli_db)) as api:
        for email in ("ann@example.com", "ben@example.com", "cat@example.com"):
            async with api.sessions.begin() as session:
                user = await auth_service.create_user(session, email=email)
                _, key = await auth_service.create_api_key(session, user=user)
            keys[email] = {"Authorization": f"Bearer {key}"}

    bad = await run_cli(cli_db, "set-limits", "--default", "--rpm", "0")
    assert bad.returncode == 1 and "rpm" in bad.stderr, bad.stderr

    made = await run_cli(cli_db, "set-limits", "--default", "--in-flight", "1", "--rpm", "2")
    assert made.returncode == 0 and "the server's default" in made.stdout, made.stderr
    own = await run_cli(cli_db, "set-limits", "--user", "ben@example.com", "--rpm", "1")
    assert own.returncode == 0, own.stderr
    exempt = await run_cli(cli_db, "set-limits", "--user", "cat@example.com")
    assert exempt.returncode == 0, exempt.stderr
    listed = await run_cli(cli_db, "list-limits")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["scope"], r["rpm"], r["max_in_flight"]) for r in rows] == [
        ("default", 2, 1),
        ("user", 1, None),
        ("user", None, None),
    ]

    async with running_api(make_settings(cli_db)) as api:
        post = api.client.post
        ann, ben, cat = keys.values()
        # Each user has their own room under the default: ann's two, and not one pool.
        for headers in (ann, ann):
            ok = await post("/v1/chat/completions", json=_chat(), headers=headers)
            assert ok.status_code == 200, ok.text
            assert ok.headers["RateLimit-Policy"].startswith('"user-rpm";q=2;w=60')
        third = await post("/v1/chat/completions", json=_chat(), headers=ann)
        assert third.status_code == 429 and "server's default" in third.json()["error"]["message"]
        # ben's own limit replaces the default whole (no in-flight limit: just rpm 1).
        assert (await post("/v1/chat/completions", json=_chat(), headers=ben)).status_code == 200
        assert (await post("/v1/chat/completions", json=_chat(), headers=ben)).status_code == 429
        # cat's empty row exempts her.
        for _ in range(3):
            free = await post("/v1/chat/completions", json=_chat(), headers=cat)
            assert free.status_code == 200 and "RateLimit" not in free.headers

    cleared = await run_cli(cli_db, "clear-limits", "--default")
    assert cleared.returncode == 0, cleared.stderr
    with sqlite3.connect(cli_db.removeprefix("sqlite+aiosqlite:///")) as db:
        logged = db.execute(
            "SELECT actor, action, target_type FROM audit_log WHERE action LIKE 'limits.%' "
            "ORDER BY at"
        ).fetchall()
    assert logged == [
        ("command line", "limits.set", "default_limits"),
        ("command line", "limits.set", "user_limits"),
        ("command line", "limits.set", "user_limits"),
        ("command line", "limits.clear", "default_limits"),
    ]
