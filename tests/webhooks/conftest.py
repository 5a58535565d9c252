"""The webhook tests' own apps and a real HTTP receiver.

`api` is overridden here: the same app on the same three backends (SQLite, PostgreSQL, a real
Celery worker), but with the webhook timings shrunk (a pass every 0.1 s, retries after 0.1 s,
0.6 s, …, a POST timeout of 2 s, four POSTs at once) and on a database (and, for Celery, a
Redis) of its own. The suite's shared `api` may be running at the same time in a full run; its
pump, with the default timings, must not be the one that picks up these tests' deliveries.

The receiver listens on 127.0.0.1, which the outbound guard refuses by default: `api` allows
it explicitly (OUTBOUND_ALLOWLIST=127.0.0.1/32). `default_api` is the same app with the
guard as shipped (no allow-list), three attempts per delivery, and a database, a Redis and a
worker of its own, so that its refusals and failures are its own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import (
    ROOT,
    Api,
    celery_worker,
    make_settings,
    migrate,
    running_api,
    throwaway_database,
)
from tests.jobs.services import RedisServer
from tests.mocks.openai_server import MockOpenAI
from tests.mocks.server import BackgroundServer, Releasable, reset_connection

POLL_SECONDS = 0.1
RETRY_BASE_SECONDS = 0.1
TIMEOUT_SECONDS = 2.0
CONCURRENCY = 4
ALLOWLIST = "127.0.0.1/32"  # the receiver, and nothing else of this machine
WEBHOOK_SETTINGS = {
    "webhook_poll_seconds": POLL_SECONDS,
    "webhook_retry_base_seconds": RETRY_BASE_SECONDS,
    "webhook_timeout_seconds": TIMEOUT_SECONDS,
    "webhook_concurrency": CONCURRENCY,
    "outbound_allowlist": ALLOWLIST,
    "local_model_enabled": False,
}
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_GUARD_SETTINGS = {
    **{k: v for k, v in WEBHOOK_SETTINGS.items() if k != "outbound_allowlist"},
    "webhook_max_attempts": DEFAULT_MAX_ATTEMPTS,
}


@pytest.fixture(scope="session")
async def webhook_postgres() -> AsyncIterator[str]:
    """A migrated PostgreSQL database for these tests only (the embedded and the Celery runs
    take turns on it), dropped after."""
    async with throwaway_database("pm_webhooks") as url:
        yield url


@pytest.fixture(scope="session")
async def webhook_sqlite(sqlite_dir: Path) -> str:
    url = f"sqlite+aiosqlite:///{sqlite_dir / 'webhooks.db'}"
    await migrate(url)
    return url


@pytest.fixture(scope="session")
def webhook_database(backend: str, request: pytest.FixtureRequest) -> str:
    name = "webhook_sqlite" if backend == "sqlite" else "webhook_postgres"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(scope="session")
async def api(
    backend: str,
    webhook_database: str,
    mock_openai: MockOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Api]:
    if backend != "celery":
        settings = make_settings(webhook_database, mock_openai, **WEBHOOK_SETTINGS)
        async with running_api(settings) as api:
            yield api
        return
    workdir = tmp_path_factory.mktemp("webhooks-celery")
    redis = RedisServer(workdir).start()
    try:
        settings = make_settings(
            webhook_database, mock_openai, celery_broker_url=redis.url, **WEBHOOK_SETTINGS
        )
        with celery_worker(settings, workdir / "worker.log"):
            async with running_api(settings) as api:
                yield api
    finally:
        redis.stop()


@dataclass
class LoggedApi(Api):
    """An app, and where the log of the process that runs its pump can be read: the Celery
    worker's file, or (embedded) this process's, which pytest's `caplog` captures."""

    worker_log: Path | None = None


@pytest.fixture(scope="session")
async def default_guard_database(backend: str, sqlite_dir: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{sqlite_dir / 'webhooks-default.db'}"
        await migrate(url)
        yield url
        return
    async with throwaway_database("pm_webhooks_default") as url:
        yield url


@pytest.fixture(scope="session")
async def default_api(
    backend: str,
    default_guard_database: str,
    mock_openai: MockOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LoggedApi]:
    """The app with the outbound guard as shipped: OUTBOUND_ALLOWLIST unset."""
    if backend != "celery":
        settings = make_settings(default_guard_database, mock_openai, **DEFAULT_GUARD_SETTINGS)
        async with running_api(settings) as api:
            yield LoggedApi(api.app, api.client)
        return
    workdir = tmp_path_factory.mktemp("webhooks-default-celery")
    redis = RedisServer(workdir).start()
    log = workdir / "worker.log"
    try:
        settings = make_settings(
            default_guard_database,
            mock_openai,
            celery_broker_url=redis.url,
            **DEFAULT_GUARD_SETTINGS,
        )
        with celery_worker(settings, log):
            async with running_api(settings) as api:
                yield LoggedApi(api.app, api.client, worker_log=log)
    finally:
        redis.stop()


@dataclass(frozen=True)
class Received:
    hook: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Hook:
    name: str
    url: str


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST to /hooks/<name> and answers as
    told: a status code, `hang` (no answer until the server stops), `sleep-<ms>` (200 after
    that long), or `drop` (the connection reset, no answer)."""

    requests: list[Received] = field(default_factory=list)
    _plans: dict[str, list[str]] = field(default_factory=dict)
    _defaults: dict[str, str] = field(default_factory=dict)
    _hanging: Releasable = field(default_factory=Releasable)
    _server: BackgroundServer = field(default_factory=lambda: BackgroundServer("webhooks"))
    _names: Iterator[int] = field(default_factory=itertools.count)
    origin: str = ""

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self._hanging.install(app)
        self.origin = self._server.start(app)

    def stop(self) -> None:
        self._server.stop()

    def hook(self, *answers: str, then: str = "200") -> Hook:
        """A new URL of its own, answering `answers` in turn, then always `then`."""
        name = f"h{next(self._names)}-{uuid.uuid4().hex[:6]}"
        self._plans[name] = list(answers)
        self._defaults[name] = then
        return Hook(name, f"{self.origin}/hooks/{name}")

    def received(self, hook: Hook) -> list[Received]:
        return [r for r in list(self.requests) if r.hook == hook.name]

    async def wait(self, hook: Hook, count: int, *, timeout: float = 10.0) -> list[Received]:
        """The first `count` POSTs to `hook`, waiting for them as long as `timeout`."""
        deadline = time.monotonic() + timeout
        while len(got := self.received(hook)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{hook.name} got {len(got)} of {count} POSTs in {timeout}s")
            await asyncio.sleep(0.02)
        return got[:count]

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        self.requests.append(Received(name, CIMultiDict(request.headers), body, time.monotonic()))
        plan = self._plans.get(name, [])
        answer = plan.pop(0) if plan else self._defaults.get(name, "404")
        if answer == "hang":
            await self._hanging.wait()
        elif answer == "drop":
            reset_connection(request)
            await self._hanging.wait()  # cancelled at once: the connection is gone
        elif answer.startswith("sleep-"):
            await asyncio.sleep(int(answer.removeprefix("sleep-")) / 1000)
            answer = "200"
        return web.Response(status=int(answer) if answer != "hang" else 200)

    @property
    def port(self) -> int:
        return int(self.origin.rpartition(":")[2])


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


def _documented_verify() -> Callable[[str, CIMultiDict[str], bytes], bool]:
    """The README's verification snippet itself, so the tests check what receivers are told."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Webhooks") :]
    snippet = next(block for block in section.split("```python")[1:] if "def verify(" in block)
    namespace: dict[str, Any] = {}
    exec(snippet.split("```")[0], namespace)
    verify: Callable[[str, CIMultiDict[str], bytes], bool] = namespace["verify"]
    return verify


verify = _documented_verify()
