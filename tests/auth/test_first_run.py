"""The embedded default's first start creates an admin and prints its key once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import make_settings, migrate, running_api


async def test_first_start_prints_a_working_key_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    url = f"sqlite+aiosqlite:///{tmp_path / 'first.db'}"
    await migrate(url)
    settings = make_settings(url, environment="embedded")

    async with running_api(settings):
        pass
    printed = capsys.readouterr().out
    keys = re.findall(r"pm_[A-Za-z0-9_-]{43}", printed)
    assert keys, printed
    key = keys[0]
    assert "admin@localhost" in printed
    assert (
        f"curl -s -X POST http://127.0.0.1:8000/ai/prompts/ -H 'Authorization: Bearer {key}'"
        in printed
    )

    async with running_api(settings) as api:
        response = await api.client.get("/ai/prompts/", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    assert "pm_" not in capsys.readouterr().out  # never again


async def test_production_never_creates_a_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    url = f"sqlite+aiosqlite:///{tmp_path / 'prod.db'}"
    await migrate(url)
    async with running_api(make_settings(url, environment="production")):
        pass
    assert "pm_" not in capsys.readouterr().out


async def test_unmigrated_database_refuses_to_start(tmp_path: Path):
    from app.db.migrations import DatabaseNotMigrated

    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(DatabaseNotMigrated, match="alembic upgrade head"):
        async with running_api(make_settings(url)):
            pass
