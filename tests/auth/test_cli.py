"""The admin commands, run as a user would run them: `python -m app …` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings, migrate, running_api

ROOT = Path(__file__).resolve().parents[2]


def run_cli_blocking(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "OPENAI_API_KEY": ""}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the app under test keeps running on this event loop meanwhile (blocking it
    # could leave one of its SQLite transactions open and lock the CLI out).
    return await asyncio.to_thread(run_cli_blocking, database_url, *args)


@pytest.fixture
async def cli_db(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    await migrate(url)
    return url


async def test_create_user_prints_a_working_key_last(cli_db: str):
    result = await run_cli(cli_db, "create-user", "Ada@Example.com", "--admin", "--name", "Ada")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    key = lines[-1]
    assert key.startswith("pm_") and " " not in key
    assert "admin ada@example.com" in result.stdout

    async with running_api(make_settings(cli_db)) as api:
        response = await api.client.get("/ai/prompts/", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200


async def test_duplicate_email_and_unknown_user_are_clear(cli_db: str):
    assert (await run_cli(cli_db, "create-user", "bob@example.com")).returncode == 0
    again = await run_cli(cli_db, "create-user", "BOB@example.com")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr

    unknown = await run_cli(cli_db, "create-key", "nobody@example.com")
    assert unknown.returncode == 1
    assert "No user with email nobody@example.com" in unknown.stderr

    bad = await run_cli(cli_db, "create-user", "not-an-email")
    assert bad.returncode == 1 and "not an email address" in bad.stderr


async def test_create_key_and_revoke_it(cli_db: str):
    await run_cli(cli_db, "create-user", "carol@example.com")
    created = await run_cli(
        cli_db, "create-key", "carol@example.com", "--name", "ci", "--expires-in-days", "30"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert "expires" in created.stdout

    # With AUTH_CACHE_SECONDS=0 a revocation applies to the very next request.
    async with running_api(make_settings(cli_db, auth_cache_seconds=0)) as api:
        headers = {"Authorization": f"Bearer {key}"}
        assert (await api.client.get("/ai/prompts/", headers=headers)).status_code == 200
        revoked = await run_cli(cli_db, "revoke-key", key[:11])
        assert revoked.returncode == 0, revoked.stderr
        response = await api.client.get("/ai/prompts/", headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "revoked_api_key"

    missing = await run_cli(cli_db, "revoke-key", "pm_nothere")
    assert missing.returncode == 1 and "No API key with prefix pm_nothere" in missing.stderr


async def test_a_keys_drop_params_is_set_at_creation_and_changed(cli_db: str):
    await run_cli(cli_db, "create-user", "dan@example.com")
    created = await run_cli(cli_db, "create-key", "dan@example.com", "--drop-params", "on")
    assert created.returncode == 0, created.stderr
    assert "drop_params on" in created.stdout
    prefix = created.stdout.strip().splitlines()[-1][:11]

    def setting() -> object:
        with sqlite3.connect(cli_db.removeprefix("sqlite+aiosqlite:///")) as db:
            return db.execute(
                "SELECT drop_params FROM api_keys WHERE prefix = ?", (prefix,)
            ).fetchone()[0]

    assert setting() == 1
    changed = await run_cli(cli_db, "set-key", prefix, "--drop-params", "off")
    assert changed.returncode == 0 and "drop_params off" in changed.stdout, changed.stderr
    assert setting() == 0
    assert (await run_cli(cli_db, "set-key", prefix, "--drop-params", "default")).returncode == 0
    assert setting() is None
    wrong = await run_cli(cli_db, "set-key", prefix, "--drop-params", "maybe")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    missing = await run_cli(cli_db, "set-key", "pm_nothere", "--drop-params", "on")
    assert missing.returncode == 1 and "No API key with prefix pm_nothere" in missing.stderr


async def test_teams_members_and_scoped_keys_from_the_command_line(cli_db: str):
    await run_cli(cli_db, "create-user", "erin@example.com")
    created = await run_cli(cli_db, "create-team", "research", "--description", "R&D")
    assert created.returncode == 0 and "Created team research" in created.stdout, created.stderr
    again = await run_cli(cli_db, "create-team", "research")
    assert again.returncode == 1 and "already exists" in again.stderr

    # Not a member yet: no key for the team.
    refused = await run_cli(cli_db, "create-key", "erin@example.com", "--team", "research")
    assert refused.returncode == 1 and "not a member" in refused.stderr
    member = await run_cli(cli_db, "set-member", "research", "erin@example.com", "--role", "member")
    assert member.returncode == 0 and "member of team research" in member.stdout, member.stderr
    key = await run_cli(
        cli_db,
        "create-key",
        "erin@example.com",
        "--team",
        "research",
        "--models",
        "local",
        "--description",
        "nightly eval",
    )
    assert key.returncode == 0, key.stderr
    assert "team research" in key.stdout and "models local" in key.stdout
    prefix = key.stdout.strip().splitlines()[-1][:11]
    with sqlite3.connect(cli_db.removeprefix("sqlite+aiosqlite:///")) as db:
        description, models = db.execute(
            "SELECT description, allowed_models FROM api_keys WHERE prefix = ?", (prefix,)
        ).fetchone()
    assert description == "nightly eval" and json.loads(models) == ["local"]

    unknown = await run_cli(cli_db, "create-key", "erin@example.com", "--models", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    removed = await run_cli(cli_db, "remove-member", "research", "erin@example.com")
    assert removed.returncode == 0, removed.stderr
    gone = await run_cli(cli_db, "remove-member", "research", "erin@example.com")
    assert gone.returncode == 1 and "not a member" in gone.stderr
    wrong_role = await run_cli(cli_db, "set-member", "research", "erin@example.com", "--role", "x")
    assert wrong_role.returncode == 2 and "invalid choice" in wrong_role.stderr
    no_team = await run_cli(cli_db, "set-member", "nowhere", "erin@example.com", "--role", "owner")
    assert no_team.returncode == 1 and "No team named 'nowhere'" in no_team.stderr

    # The command line's changes are in the audit log too, by "command line".
    with sqlite3.connect(cli_db.removeprefix("sqlite+aiosqlite:///")) as db:
        logged = db.execute("SELECT actor, action FROM audit_log ORDER BY at").fetchall()
    actions = [action for _, action in logged]
    assert {actor for actor, _ in logged} == {"command line"}
    for action in ("user.create", "team.create", "team.member.set", "key.create"):
        assert action in actions, actions
    assert actions[-1] == "team.member.remove"


def test_bad_configuration_is_reported_plainly():
    result = run_cli_blocking("mysql://nope", "create-user", "x@example.com")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr
