"""The keys that seal stored webhook secrets (app/kit/sealing.py): the key file of the embedded
default, rotation, tampering, and the commands an operator runs."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db.database import create_engine, create_session_factory
from app.db.models import WebhookEndpoint
from app.kit.outbound import OutboundPolicy
from app.kit.sealing import SealingKeyError, SecretBox, UnreadableSecret, generate_key
from app.kit.settings import Settings
from app.services.auth import service as auth_service
from app.services.webhooks import service
from app.services.webhooks.schemas import WebhookCreate
from tests.conftest import ROOT, IsolatedSettings, migrate


def _settings(tmp_path: Path, **values: object) -> Settings:
    return IsolatedSettings(encryption_key_file=tmp_path / "prompt_manager.key", **values)


def test_without_keys_one_is_kept_in_a_file_only_its_owner_reads(tmp_path: Path):
    settings = _settings(tmp_path)
    sealed = settings.secret_box().seal("whsec_abc")
    key_file = tmp_path / "prompt_manager.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert settings.secret_box().open(sealed) == "whsec_abc"  # the same key, read back
    assert [p.name for p in tmp_path.iterdir()] == ["prompt_manager.key"]

    key_file.write_text("not a key\n")
    with pytest.raises(SealingKeyError, match=r"ENCRYPTION_KEY_FILE .* does not hold a key"):
        settings.secret_box()


def test_production_without_keys_says_every_process_needs_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="app.kit.sealing"):
        _settings(tmp_path, environment="production").secret_box()
    assert "ENCRYPTION_KEYS is not set" in caplog.text
    caplog.clear()
    _settings(tmp_path, environment="production", encryption_keys=generate_key()).secret_box()
    assert caplog.text == ""


def test_a_new_first_key_seals_and_the_old_one_still_opens(tmp_path: Path):
    old, new = generate_key(), generate_key()
    sealed = SecretBox([old]).seal("whsec_rotating")
    both = _settings(tmp_path, encryption_keys=f"{new}, {old}").secret_box()
    assert both.open(sealed) == "whsec_rotating"
    resealed = both.resealed(sealed)
    assert resealed is not None and SecretBox([new]).open(resealed) == "whsec_rotating"
    assert both.resealed(resealed) is None  # already under the first key


def test_an_altered_or_foreign_value_is_refused_without_showing_it():
    box = SecretBox([generate_key()])
    sealed = box.seal("whsec_private")
    for bad in (sealed[:-4] + "AAAA", SecretBox([generate_key()]).seal("whsec_private")):
        with pytest.raises(UnreadableSecret) as raised:
            box.open(bad)
        assert "private" not in str(raised.value) and bad not in str(raised.value)


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    ours = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env={**ours, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_malformed_key_stops_the_server_before_it_starts_and_is_not_printed(
    tmp_path: Path,
):
    bad = "not-a-fernet-key-4f1d"
    result = await asyncio.to_thread(_cli, "serve", env={"ENCRYPTION_KEYS": bad}, cwd=tmp_path)
    assert result.returncode == 2
    assert "Configuration error: ENCRYPTION_KEYS" in result.stderr
    assert "generate-key" in result.stderr and bad not in result.stderr + result.stdout

    made = await asyncio.to_thread(_cli, "generate-key", env={}, cwd=tmp_path)
    assert made.returncode == 0
    key = made.stdout.strip()
    SecretBox([key])  # a valid key
    assert IsolatedSettings(encryption_keys=key).encryption_keys is not None


async def test_reseal_secrets_moves_every_secret_to_the_first_key(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'reseal.db'}"
    await migrate(url)
    old, new, foreign = generate_key(), generate_key(), generate_key()
    engine = create_engine(IsolatedSettings(database_url=url))
    sessions = create_session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            user = await auth_service.create_user(session, email="ops@example.com")
            created = [
                await service.create_endpoint(
                    session,
                    SecretBox([old]),
                    OutboundPolicy(),
                    user=user,
                    data=WebhookCreate(url=f"https://example.com/{n}", events=["prompt.completed"]),
                )
                for n in range(2)
            ]

        async def stored() -> dict[uuid.UUID, str]:
            async with sessions() as session:
                rows = await session.execute(
                    select(WebhookEndpoint.id, WebhookEndpoint.sealed_secret)
                )
                return {row_id: sealed for row_id, sealed in rows}

        env = {"DATABASE_URL": url, "ENCRYPTION_KEYS": f"{new},{old}"}
        result = await asyncio.to_thread(_cli, "reseal-secrets", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "2 webhook secret(s) resealed" in result.stdout
        after = await stored()
        assert {SecretBox([new]).open(after[c.id]) for c in created} == {c.secret for c in created}
        again = await asyncio.to_thread(_cli, "reseal-secrets", env=env, cwd=tmp_path)
        assert "0 webhook secret(s) resealed" in again.stdout

        # Keys that cannot open one of them: an error, and nothing changed.
        refused = await asyncio.to_thread(
            _cli, "reseal-secrets", env={"DATABASE_URL": url, "ENCRYPTION_KEYS": foreign},
            cwd=tmp_path,
        )  # fmt: skip
        assert refused.returncode == 1 and "nothing was changed" in refused.stderr
        assert await stored() == after
    finally:
        await engine.dispose()
