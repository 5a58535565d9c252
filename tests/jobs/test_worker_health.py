"""A worker's own /healthz and /readyz (app/worker/health.py), on real worker processes
(`python -m app worker`): a database of this module's own on the shared PostgreSQL, a Redis of
the test's own, and health ports that are free ones of 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import SUITE_ENCRYPTION_KEY, throwaway_database
from tests.jobs.services import Process, Services, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[str]:
    """Migrated, and seen only by these workers (their sweepers run on it)."""
    async with throwaway_database("pm_health") as url:
        yield url


def worker_env(database_url: str, broker_url: str, health_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "ENVIRONMENT": "production",
        "ENCRYPTION_KEYS": SUITE_ENCRYPTION_KEY,  # as production sets it (else a warning)
        "LOCAL_MODEL_ENABLED": "false",
        "WORKER_HEALTH_PORT": str(health_port),
        "LOG_LEVEL": "info",
    }


async def healthz(worker: Process, client: httpx.AsyncClient, *, timeout: float = 30) -> None:
    """Poll the worker's /healthz until it answers 200: the worker takes a few seconds to
    start (imports, the database's schema check, the runtime)."""
    deadline = time.monotonic() + timeout
    while True:
        if not worker.alive():
            raise AssertionError(f"{worker.name} exited:\n{worker.tail()}")
        try:
            response = await client.get("/healthz")
        except httpx.TransportError:
            pass  # not listening yet, or not serving yet (the connection waits in the backlog)
        else:
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "ok"}
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no /healthz within {timeout} s:\n{worker.tail()}")
        await asyncio.sleep(0.1)


def client(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False)


async def test_a_worker_is_alive_and_ready_with_its_database_and_broker(
    database: str, services: Services
):
    broker = services.redis()
    port = free_port()
    worker = services.worker(worker_env(database, broker.url, port))
    async with client(port) as http:
        await healthz(worker, http)
        ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.headers["content-type"] == "application/json"
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_a_worker_whose_broker_is_unreachable_is_alive_but_not_ready(
    database: str, services: Services
):
    port = free_port()
    broker = f"redis://127.0.0.1:{free_port()}/0"  # a port that nothing listens on
    worker = services.worker(worker_env(database, broker, port))
    async with client(port) as http:
        await healthz(worker, http)  # the event loop answers while Celery retries the broker
        ready = await http.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.headers["content-type"] == "application/problem+json"
    body = ready.json()
    assert body["code"] == "not_ready" and body["status"] == 503
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable")
    assert body["detail"] == "Unreachable: broker."


async def test_a_worker_on_a_health_port_in_use_stops_at_once_saying_so(
    database: str, services: Services
):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        worker = services.worker(worker_env(database, f"redis://127.0.0.1:{free_port()}/0", port))
        code = await asyncio.to_thread(worker.wait, 30)
    output = worker.output()
    assert code != 0, output
    lines = output.strip().splitlines()
    assert lines == [
        f"WORKER_HEALTH_PORT {port} on 127.0.0.1 is not available (Address already in use): "
        "give each worker on a machine a port of its own, or set WORKER_HEALTH_PORT empty to "
        "serve none"
    ], output
