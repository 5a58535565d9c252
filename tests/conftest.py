"""Test fixtures. Nothing is started silently and nothing is skipped: PostgreSQL must be
reachable (TEST_POSTGRES_URL, default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres);
the run creates its own database there and drops it at the end.

Every API test runs twice, against SQLite and against PostgreSQL (the `backend` fixture).
Tests stay independent by ownership rather than by rollback: the prompt records are committed
by design (a background runner must see them), and each test works as a user of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from alembic import command
from fastapi import FastAPI
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.db.database import SessionFactory
from app.db.migrations import alembic_config
from app.kit.sealing import generate_key
from app.kit.settings import CompatibleEndpoint, Settings
from app.main import create_app
from app.services.auth import service as auth_service
from app.services.chat.service import ChatService
from app.services.prompts.service import PromptService
from tests.mocks import anthropic_server, gemini_server
from tests.mocks.anthropic_server import MockAnthropic
from tests.mocks.gemini_server import MockGemini
from tests.mocks.openai_server import MOCK_API_KEY, OTHER_API_KEY, MockOpenAI

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


PROMPT_ROUTES, CHAT_ROUTES = "app.api.prompts", "app.api.chat"  # (the routes' modules)


def count_calls(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, label: Callable[..., Any]
) -> list[Any]:
    """Wrap the async function `owner.name` so that each call is recorded (as
    `label(*args, **kwargs)`) and then runs as before; the list of labels fills up as it goes."""
    calls: list[Any] = []
    original = getattr(owner, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(label(*args, **kwargs))
        return await original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def calls_from(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    label: Callable[..., Any],
    *,
    caller: str,
    unless: Callable[[Any], bool] = lambda _: False,
) -> list[Any]:
    """`count_calls`, counting only the calls made by code of the module `caller` (and
    whose result is not one to leave out, `unless`): the routes and the fast paths call the
    same services, and this tells them apart."""
    calls: list[Any] = []
    original = getattr(owner, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        ours = sys._getframe(1).f_globals.get("__name__") == caller
        try:
            result = await original(*args, **kwargs)
        except BaseException:
            if ours:
                calls.append(label(*args, **kwargs))
            raise
        if ours and not unless(result):
            calls.append(label(*args, **kwargs))
        return result

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The requests that reached the route (not the fast path) of `POST /ai/prompts/`, then
    of `POST /v1/chat/completions`: the services' calls made by the routes' modules."""
    return [
        calls_from(
            monkeypatch, PromptService, "submit", lambda *_, **__: "submit", caller=PROMPT_ROUTES
        ),
        calls_from(monkeypatch, ChatService, "start", lambda *_, **__: "chat", caller=CHAT_ROUTES),
    ]


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def migrate(database_url: str, revision: str = "head") -> None:
    config = alembic_config(database_url)
    config.attributes["skip_logging"] = True
    # env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, config, revision)


async def downgrade(database_url: str, revision: str) -> None:
    config = alembic_config(database_url)
    config.attributes["skip_logging"] = True
    await asyncio.to_thread(command.downgrade, config, revision)


@pytest.fixture(scope="session")
async def postgres_server_url() -> AsyncIterator[str]:
    """A fresh database on the shared PostgreSQL server, dropped after the run."""
    name = f"pm_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL is required for the test suite and is not reachable at "
            f"{POSTGRES_ADMIN_URL} ({exc!r}). Start it, or point TEST_POSTGRES_URL at one."
        ) from exc
    await admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def sqlite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqlite")


@pytest.fixture(scope="session")
def mock_openai() -> Iterator[MockOpenAI]:
    mock = MockOpenAI()
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture(scope="session")
def mock_gemini() -> Iterator[MockGemini]:
    mock = MockGemini()
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture(scope="session")
def mock_anthropic() -> Iterator[MockAnthropic]:
    mock = MockAnthropic()
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql", "celery"])
def backend(request: pytest.FixtureRequest) -> str:
    """How the suite's app runs: embedded on SQLite, embedded on PostgreSQL, and production
    mode (PostgreSQL, Redis, a real Celery worker process). The same tests run in all three."""
    return str(request.param)


@pytest.fixture(scope="session")
async def database_url(backend: str, sqlite_dir: Path, postgres_server_url: str) -> str:
    """A migrated database for the backend, shared by the tests of the session."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{sqlite_dir / 'suite.db'}"
    else:
        url = postgres_server_url
    await migrate(url)
    return url


@contextlib.asynccontextmanager
async def throwaway_database(prefix: str) -> AsyncIterator[str]:
    """A migrated database of its own on the shared server, dropped at the end (for tests
    whose workers' sweepers must see only their own prompts)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"{POSTGRES_ADMIN_URL.rpartition('/')[0]}/{name}"
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty (unmigrated) database of each kind for one test; the PostgreSQL one is dropped."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"pm_fresh_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=10)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rpartition('/')[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


SUITE_ENCRYPTION_KEY = generate_key()


class IsolatedSettings(Settings):
    """Settings from the test's arguments only: no environment variable or .env file leaks in."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def make_settings(
    database_url: str,
    mock: MockOpenAI | None = None,
    *,
    gemini: MockGemini | None = None,
    anthropic: MockAnthropic | None = None,
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "environment": "production",
        "openai_api_key": MOCK_API_KEY if mock else None,
        "openai_base_url": mock.base_url if mock else None,
        # The same mock again as a named OpenAI-compatible server with a key of its own.
        "openai_compatible_endpoints": [
            CompatibleEndpoint(name="backup", base_url=mock.base_url, api_key=OTHER_API_KEY)
        ]
        if mock
        else [],
        "gemini_api_key": gemini_server.MOCK_API_KEY if gemini else None,
        "gemini_base_url": gemini.base_url if gemini else None,
        "anthropic_api_key": anthropic_server.MOCK_API_KEY if anthropic else None,
        "anthropic_base_url": anthropic.base_url if anthropic else None,
        "sweep_interval_seconds": 0.5,
        "lease_seconds": 5,
        "redispatch_after_seconds": 2,
        "provider_timeout_seconds": 10,
        # Fast retries; and a breaker that the whole session's failures cannot trip (the tests
        # that are about the breaker build their own app).
        "retry_base_delay_seconds": 0.01,
        "retry_max_delay_seconds": 0.05,
        "circuit_failure_threshold": 1000,
        # A worker subprocess serves no /healthz unless a test gives it a port of its own.
        "worker_health_port": None,
        # Several apps and workers of the session stay up at once against one PostgreSQL
        # server (100 connections): each keeps few idle ones.
        "database_pool_size": 4,
        # Verified keys are trusted this long (AUTH_CACHE_SECONDS): short, so that the tests
        # of revocation wait little, yet every functional test goes through the cache.
        "auth_cache_seconds": 0.5,
        # The same key for the in-process apps and their worker subprocesses (settings_env),
        # and no key file written into the checkout.
        "encryption_keys": SecretStr(SUITE_ENCRYPTION_KEY),
    }
    values.update(overrides)
    return IsolatedSettings(**values)


@dataclass
class Api:
    """The real app, in-process, behind an async HTTP client; its lifespan is running."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def sessions(self) -> SessionFactory:
        sessions: SessionFactory = self.app.state.services.sessions
        return sessions

    async def new_user(self, *, is_admin: bool = False) -> dict[str, str]:
        """A user of its own and the headers that authenticate as it."""
        async with self.sessions() as session:
            user = await auth_service.create_user(
                session, email=f"{uuid.uuid4().hex[:10]}@example.com", is_admin=is_admin
            )
            _, key = await auth_service.create_api_key(session, user=user)
            await session.commit()
        return {"Authorization": f"Bearer {key}"}

    async def call(
        self, headers: dict[str, str], method: str, path: str, status: int, **body: Any
    ) -> Any:
        """A JSON request (`body` as its JSON, if any) that must be answered `status`; its
        JSON answer, or None for an empty one."""
        response = await self.client.request(method, path, json=body or None, headers=headers)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    async def submit(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        body.setdefault("prompt_type", "text")
        body.setdefault("prompt_text", "hello")
        response = await self.client.post("/ai/prompts/", json=body, headers=headers)
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_final(
        self, headers: dict[str, str], prompt_id: str, *, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll like a client until the prompt is completed, failed or cancelled."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            response = await self.client.get(f"/ai/prompts/{prompt_id}", headers=headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"prompt {prompt_id} still {body['status']} after {timeout}s")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(app, client)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for a worker subprocess."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    for name, value in settings.model_dump().items():
        if value is None:
            if Settings.model_fields[name].default is not None:
                env[name.upper()] = ""  # unset where the default is not (WORKER_HEALTH_PORT)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = json.dumps(
                [
                    {
                        k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
                        for k, v in item.items()
                    }
                    for item in value
                ]
            )
        env[name.upper()] = str(value)
    return env


@contextlib.contextmanager
def celery_worker(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m app worker` with these settings, ready to take tasks; stopped by PID."""
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=ROOT,
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


# A Redis database of the shared server that only the test suite uses (flushed first).
SUITE_BROKER = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="session")
async def api(
    backend: str,
    database_url: str,
    mock_openai: MockOpenAI,
    mock_gemini: MockGemini,
    mock_anthropic: MockAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Api]:
    """The app on each backend, with every provider: each vendor's SDK against its own mock
    (and the OpenAI mock again as the compatible server `backup`), and the local model."""
    broker = SUITE_BROKER if backend == "celery" else None
    settings = make_settings(
        database_url,
        mock_openai,
        gemini=mock_gemini,
        anthropic=mock_anthropic,
        celery_broker_url=broker,
    )
    if broker is None:
        async with running_api(settings) as api:
            yield api
        return
    client = redis.Redis.from_url(broker)
    try:
        await asyncio.to_thread(client.flushdb)
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis is required for the Celery tests at {broker} ({exc!r})") from exc
    finally:
        client.close()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with celery_worker(settings, log):
        async with running_api(settings) as api:
            yield api
