"""Limits that hold under concurrency across processes, with the real thing: two API
processes (`python -m app serve`) and a Celery worker on one PostgreSQL database of the test's
own, Redis as the broker, the OpenAI mock upstream, and many concurrent clients.

- A budget of five cents, against 64 clients sending as fast as they can to both processes,
  on /v1/chat/completions (run by the API process) and /ai/prompts/ (run by the worker): what
  is spent never passes the budget, every refusal is a 429 `budget_exceeded`
  (`insufficient_quota` under /v1), nothing refused is recorded, and once everything has
  ended the ledger holds nothing and equals the attempts' costs exactly.
- 60 requests per minute: 80 sent at once across both processes, exactly 60 accepted.

Each test prints what it observed (`pytest -s` shows it): the figures of the closing note.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.database import create_session_factory
from app.db.models import LimitUsage, PromptAttempt, PromptRequest, Reservation
from app.services import audit
from app.services.auth import service as auth_service
from app.services.limits import service as limits
from app.services.limits.schemas import LimitSet
from tests.conftest import throwaway_database
from tests.jobs.services import Services, api_ready, free_port, worker_ready
from tests.jobs.test_celery_faults import app_env
from tests.mocks.openai_server import MockOpenAI

pytestmark = pytest.mark.timeout(180)

# $100 per million tokens both ways: "hello there" with max_tokens 10 reserves
# (11 characters + 4) + 10 = 25 tokens, $0.0025; it costs 2 + 3 words, $0.0005.
CATALOGUE = """
version = "limits-test"

[[models]]
name = "pricey"
provider = "openai"
upstream_model = "slow-50-pricey"
input = "100"
output = "100"
max_output_tokens = 100
"""
BUDGET = Decimal("0.05")


async def _key(url: str, data: LimitSet) -> tuple[str, uuid.UUID]:
    engine = create_engine_for(url)
    try:
        async with create_session_factory(engine).begin() as session:
            user = await auth_service.create_user(
                session, email=f"{uuid.uuid4().hex[:10]}@example.com"
            )
            key_row, key = await auth_service.create_api_key(session, user=user)
            await limits.set_limits(
                session, audit.CLI, scope="key", subject_id=key_row.id, data=data
            )
        return key, key_row.id
    finally:
        await engine.dispose()


def create_engine_for(url: str) -> AsyncEngine:
    return create_async_engine(url)


@pytest.fixture(scope="module")
async def cluster(mock_openai: MockOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two API processes and a worker on a database of their own, for the module's tests;
    yields (their base URLs, the database URL). Every process is stopped by its PID after."""
    services = Services()
    try:
        catalogue = tmp_path_factory.mktemp("limits") / "models.toml"
        catalogue.write_text(CATALOGUE)
        async with throwaway_database("limits") as url:
            redis = services.redis()
            env = app_env(
                url,
                redis.url,
                mock_openai,
                model_catalogue_path=catalogue,
                auth_cache_seconds=30,
                database_pool_size=8,
            )
            ports = [free_port(), free_port()]
            apis = [
                services.app("serve", env | {"HOST": "127.0.0.1", "PORT": str(port)})
                for port in ports
            ]
            worker = services.worker(env | {"WORKER_CONCURRENCY": "16"})
            for process, port in zip(apis, ports, strict=True):
                await asyncio.to_thread(api_ready, process, port)
            await asyncio.to_thread(worker_ready, worker)
            yield [f"http://127.0.0.1:{port}" for port in ports], url
            print(services.logs())
            services.close()  # (before the database is dropped)
    finally:
        services.close()


async def _send(
    client: httpx.AsyncClient, base: str, key: str, *, chat: bool
) -> tuple[int, str | None]:
    headers = {"Authorization": f"Bearer {key}"}
    if chat:
        body: dict[str, Any] = {
            "model": "pricey",
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 10,
        }
        response = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
        code = response.json()["error"]["code"] if response.status_code >= 400 else None
    else:
        body = {"prompt_text": "hello there", "prompt_type": "text", "model": "pricey"}
        body["max_tokens"] = 10
        response = await client.post(f"{base}/ai/prompts/", json=body, headers=headers)
        code = response.json().get("code") if response.status_code >= 400 else None
    return response.status_code, code


async def _ledger(url: str, key_id: uuid.UUID) -> tuple[LimitUsage | None, int, Decimal, int]:
    """The key's usage row, reservations left, the attempts' total cost, prompts recorded."""
    engine = create_engine_for(url)
    try:
        async with create_session_factory(engine)() as session:
            usage = await session.get(LimitUsage, ("key", key_id))
            held = await session.scalar(select(func.count()).select_from(Reservation))
            costs = await session.scalars(
                select(PromptAttempt.cost_usd)
                .join(PromptRequest, PromptRequest.id == PromptAttempt.prompt_id)
                .where(PromptRequest.api_key_id == key_id)
            )
            cost = sum((c for c in costs if c is not None), Decimal(0))
            prompts = await session.scalar(
                select(func.count())
                .select_from(PromptRequest)
                .where(PromptRequest.api_key_id == key_id)
            )
            return usage, int(held or 0), cost, int(prompts or 0)
    finally:
        await engine.dispose()


async def test_a_budget_of_cents_is_never_overshot_by_64_clients_on_two_processes(
    cluster: Any,
):
    bases, url = cluster
    key, key_id = await _key(url, LimitSet(budget_usd=BUDGET, budget_period="day"))
    answers: list[tuple[int, str | None]] = []

    async def client_loop(n: int) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for i in range(4):
                answers.append(await _send(client, bases[(n + i) % 2], key, chat=(n + i) % 3 != 0))

    started = time.monotonic()
    await asyncio.gather(*(client_loop(n) for n in range(64)))
    took = time.monotonic() - started
    # Under concurrency, a request is refused while others hold reservations; then one
    # client, one call at a time, spends what is left until the budget has no room.
    async with httpx.AsyncClient(timeout=60) as client:
        for n in range(200):
            answers.append(await _send(client, bases[n % 2], key, chat=True))
            if answers[-1][0] == 429:
                break

    served = [a for a in answers if a[0] in (200, 202)]
    refused = [a for a in answers if a[0] == 429]
    assert len(served) + len(refused) == len(answers), sorted({a for a in answers})
    assert {code for _, code in refused} <= {"budget_exceeded", "insufficient_quota"}
    assert refused, "the budget was never reached: the test proves nothing"

    deadline = time.monotonic() + 60
    while True:  # the queued prompts run on the worker, and settle there
        usage, held, cost, prompts = await _ledger(url, key_id)
        if held == 0 and usage is not None and usage.in_flight == 0:
            break
        assert time.monotonic() < deadline, (held, usage and usage.in_flight)
        await asyncio.sleep(0.2)
    assert usage is not None
    print(
        f"\nbudget ${BUDGET}: {len(answers)} requests (64 clients x 4 in {took:.1f} s, then "
        "one at a time until refused), "
        f"{len(served)} served, {len(refused)} refused (429); spent ${usage.spent_usd} "
        f"= {usage.spent_usd / BUDGET:.1%} of the budget; reserved ${usage.reserved_usd}"
    )
    assert prompts == len(served)  # nothing refused was recorded
    assert usage.spent_usd == cost  # settled to the attempts' costs, exactly
    assert usage.spent_usd <= BUDGET
    assert usage.reserved_usd == 0
    # The last refusal came once less than one request's reservation was left.
    assert answers[-1][0] == 429 and BUDGET - usage.spent_usd < Decimal("0.0025")


async def test_sixty_requests_a_minute_across_two_processes(cluster: Any):
    bases, url = cluster
    key, _ = await _key(url, LimitSet(rpm=60))
    second = time.time() % 60
    if second > 45:  # the burst must fall within one minute
        await asyncio.sleep(60 - second + 0.2)
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(
            *(_send(client, bases[n % 2], key, chat=n % 2 == 0) for n in range(80))
        )
    accepted = sum(1 for status, _ in answers if status in (200, 202))
    refused = [code for status, code in answers if status == 429]
    print(f"\nrpm 60: 80 requests across two processes: {accepted} accepted, {len(refused)} 429")
    assert accepted == 60
    assert len(refused) == 20
    assert set(refused) <= {"rate_limited", "rate_limit_exceeded"}
