"""Production mode under faults, with the real thing: Celery workers as subprocesses
(`python -m app worker`), a Redis and (for the restart test) a PostgreSQL of the test's own, and
the OpenAI mock. Whatever is killed, stopped or delivered twice, every accepted prompt ends in
one final status with at most one response, and the mock's call counts show what it cost.

Timings are short so that recovery is quick: leases of 3 s, a sweep every 0.5 s, pending
prompts re-dispatched after 1 s (5 s where a test must tell the broker's path from the
sweeper's). Each test prints what it observed (`pytest -s` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from app.db.database import create_engine, create_session_factory
from app.engine.celery_app import EXECUTE_TASK, QUEUE, create_celery
from app.services.auth import service as auth_service
from tests.conftest import (
    SUITE_ENCRYPTION_KEY,
    Api,
    make_settings,
    migrate,
    running_api,
    throwaway_database,
)
from tests.jobs.services import Services, api_ready, free_port, worker_ready
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

LEASE_SECONDS = 3
MAX_ATTEMPTS = 3


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def app_env(database_url: str, broker_url: str, mock: MockOpenAI, **overrides: object) -> dict:
    """The settings of a worker (or API) subprocess, as environment variables."""
    env: dict[str, object] = {
        "database_url": database_url,
        "celery_broker_url": broker_url,
        "openai_api_key": MOCK_API_KEY,
        "openai_base_url": mock.base_url,
        "local_model_enabled": "false",
        "environment": "production",
        "encryption_keys": SUITE_ENCRYPTION_KEY,
        "lease_seconds": LEASE_SECONDS,
        "sweep_interval_seconds": 0.5,
        "redispatch_after_seconds": 1,
        "max_attempts": MAX_ATTEMPTS,
        "provider_timeout_seconds": 30,
        "retry_base_delay_seconds": 0.01,
        "retry_max_delay_seconds": 0.05,
        "circuit_failure_threshold": 1000,
        "log_level": "info",
    }
    env.update(overrides)
    return {key.upper(): str(value) for key, value in env.items()}


async def until(
    probe: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Call (and await, if need be) `probe` until it returns something truthy; bounded in
    time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


class Db:
    """Reads the prompt records straight from PostgreSQL, one short connection per query."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(_dsn(self.url), timeout=5)
        try:
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    async def prompts(self, ids: list[str]) -> dict[str, asyncpg.Record]:
        rows = await self.fetch(
            "SELECT id::text AS id, status, executions AS attempts, error_code, lease_expires_at "
            "FROM prompt_requests WHERE id = ANY($1::uuid[])",
            ids,
        )
        return {row["id"]: row for row in rows}

    async def statuses(self, ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in (await self.prompts(ids)).values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    async def responses(self, ids: list[str]) -> dict[str, int]:
        rows = await self.fetch(
            "SELECT prompt_id::text AS id, count(*) AS n FROM prompt_responses "
            "WHERE prompt_id = ANY($1::uuid[]) GROUP BY prompt_id",
            ids,
        )
        return {row["id"]: row["n"] for row in rows}

    async def attempt_outcomes(self, ids: list[str]) -> dict[str, int]:
        rows = await self.fetch(
            "SELECT outcome, count(*) AS n FROM prompt_attempts "
            "WHERE prompt_id = ANY($1::uuid[]) GROUP BY outcome",
            ids,
        )
        return {row["outcome"]: row["n"] for row in rows}

    async def all_in(self, ids: list[str], status: str) -> bool:
        return await self.statuses(ids) == {status: len(ids)}

    async def assert_completed_once(self, ids: list[str]) -> None:
        """Every prompt completed, with exactly one response each."""
        rows = await self.prompts(ids)
        assert len(rows) == len(ids)
        assert {row["status"] for row in rows.values()} == {"completed"}
        responses = await self.responses(ids)
        assert responses == dict.fromkeys(ids, 1), "a prompt without, or with two, responses"


async def create_key(database_url: str) -> dict[str, str]:
    """A user and an API key written straight to the database, for an API subprocess."""
    engine = create_engine(make_settings(database_url))
    try:
        async with create_session_factory(engine)() as session:
            user = await auth_service.create_user(
                session, email=f"{uuid.uuid4().hex[:10]}@example.com"
            )
            _, key = await auth_service.create_api_key(session, user=user)
            await session.commit()
    finally:
        await engine.dispose()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A migrated database of this test's own on the shared server: a worker's start-up sweep
    sees only this test's prompts."""
    async with throwaway_database("pm_faults") as url:
        yield url


@pytest.fixture
def services(database: str, services: Services) -> Services:
    """conftest's, set up after the database so that its processes stop before the database
    is dropped."""
    return services


def celery_api(
    database_url: str, mock: MockOpenAI, broker_url: str
) -> contextlib.AbstractAsyncContextManager[Api]:
    """The API in-process, in production mode: it records prompts and publishes their tasks."""
    return running_api(make_settings(database_url, mock, celery_broker_url=broker_url))


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def test_killed_worker_its_in_flight_prompts_complete_once_elsewhere(
    database: str, services: Services, mock_openai: MockOpenAI
):
    """SIGKILL a worker holding 100 provider calls: their leases expire, a new worker's sweeper
    requeues them (recording each lost execution), and each completes exactly once (the killed
    calls are paid for again)."""
    redis = services.redis()
    env = app_env(database, redis.url, mock_openai)
    model = f"slow-4000-{tag()}"
    db = Db(database)
    doomed = services.worker(env)
    async with celery_api(database, mock_openai, redis.url) as api:
        headers = await api.new_user()
        created = await asyncio.gather(
            *(api.submit(headers, model=f"openai/{model}") for _ in range(100))
        )
    ids = [c["id"] for c in created]
    await until(lambda: db.all_in(ids, "running"), timeout=30, what="100 prompts running")
    await until(
        lambda: len(mock_openai.calls_for(model)) == 100,
        timeout=5,
        what="100 calls in flight",
    )
    doomed.kill()
    killed_at = time.monotonic()
    assert await db.statuses(ids) == {"running": 100}  # nothing finished before the kill

    services.worker(env)
    await until(lambda: db.all_in(ids, "completed"), timeout=40, what="all completed")
    recovered = time.monotonic() - killed_at
    await db.assert_completed_once(ids)
    rows = await db.prompts(ids)
    assert {row["attempts"] for row in rows.values()} == {2}  # the killed execution counts
    calls = len(mock_openai.calls_for(model))
    outcomes = await db.attempt_outcomes(ids)
    print(
        f"\n[kill -9 with 100 in flight] provider calls: {calls} for 100 prompts; "
        f"recorded attempts {outcomes}; all completed {recovered:.1f} s after the kill"
    )
    assert calls >= 100, f"{calls} calls"
    # One successful call each, and each killed execution on the attempt log as `lost` (its
    # call was made, and may be billed, though the killed worker never saw it end).
    assert outcomes == {"success": 100, "lost": 100}


async def test_broker_outage_prompts_still_accepted_and_completed(
    database: str, services: Services, mock_openai: MockOpenAI
):
    """Stop Redis while prompts are submitted, start it again on the same port: every POST is
    still a 202 (the prompt is committed; the publish failure is logged) and every prompt
    completes: the ones submitted during the outage through the worker's sweeper, and after
    the restart through the broker again (pending prompts are re-dispatched only after 5 s
    here, so a prompt done within 2 s went through the broker)."""
    redis = services.redis()
    worker = services.worker(app_env(database, redis.url, mock_openai, redispatch_after_seconds=5))
    model = f"slow-50-{tag()}"
    db = Db(database)
    settings = make_settings(database, mock_openai, celery_broker_url=redis.url)
    ids: list[str] = []
    latencies: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    async with running_api(settings) as api:
        headers = await api.new_user()
        await asyncio.to_thread(worker_ready, worker)

        async def submit(phase: str) -> str:
            started = time.monotonic()
            response = await api.client.post(
                "/ai/prompts/",
                json={"prompt_type": "text", "prompt_text": phase, "model": f"openai/{model}"},
                headers=headers,
            )
            latencies[phase].append(time.monotonic() - started)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            return str(response.json()["id"])

        for _ in range(10):
            await submit("before")
        await asyncio.to_thread(redis.stop)
        for _ in range(10):  # an outage of about 2 s
            await submit("during")
            await asyncio.sleep(0.2)
        await asyncio.to_thread(redis.start)
        up_at = time.monotonic()

        # Probe until a prompt completes in under 2 s: the broker path works end to end again.
        broker_back = None
        for _ in range(60):
            probe = await submit("after")
            submitted = time.monotonic()
            while time.monotonic() - submitted < 2:
                if (await db.statuses([probe])).get("completed"):
                    broker_back = time.monotonic() - up_at
                    break
                await asyncio.sleep(0.05)
            if broker_back is not None or time.monotonic() - up_at > 30:
                break
        assert broker_back is not None, "prompts still do not go through the broker"

    await until(lambda: db.all_in(ids, "completed"), timeout=30, what="all completed")
    await db.assert_completed_once(ids)
    assert {row["attempts"] for row in (await db.prompts(ids)).values()} == {1}
    assert len(mock_openai.calls_for(model)) == len(ids)
    worst = {phase: max(values) for phase, values in latencies.items()}
    print(
        f"\n[redis outage] {len(ids)} prompts, every POST 202, all completed once; slowest POST "
        f"before/during/after: {worst['before']:.3f}/{worst['during']:.3f}/"
        f"{worst['after']:.3f} s; broker path back {broker_back:.1f} s after the restart"
    )
    assert worst["during"] < 3, "the outage must not make every POST wait for a timeout"


@dataclass(frozen=True)
class Answer:
    at: float
    method: str
    status: int  # 0: no HTTP answer at all (the connection failed)
    content_type: str = ""
    body: str = ""

    @property
    def code(self) -> str | None:
        try:
            return json.loads(self.body).get("code")
        except ValueError:
            return None


async def _call(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[Answer, httpx.Response | None]:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        return Answer(time.monotonic(), method, 0, body=repr(exc)), None
    answer = Answer(
        time.monotonic(),
        method,
        response.status_code,
        response.headers.get("content-type", ""),
        response.text,
    )
    return answer, response


async def test_database_restart_answers_503_then_recovers_without_losing_a_prompt(
    services: Services, mock_openai: MockOpenAI
):
    """Restart PostgreSQL (a cluster of this test's own) under load from four clients against
    an API and a worker subprocess: during the outage the API answers 503
    `database_unavailable` (never a 500), afterwards it recovers by itself, and every prompt
    that got a 202 completes once."""
    cluster = await asyncio.to_thread(services.postgres)
    await migrate(cluster.url)
    redis = services.redis()
    port = free_port()
    env = app_env(cluster.url, redis.url, mock_openai)
    api_process = services.app("serve", env | {"HOST": "127.0.0.1", "PORT": str(port)})
    worker = services.worker(env)
    headers = await create_key(cluster.url)
    await asyncio.to_thread(api_ready, api_process, port)
    await asyncio.to_thread(worker_ready, worker)
    model = f"slow-200-{tag()}"
    db = Db(cluster.url)

    accepted: list[str] = []
    answers: list[Answer] = []
    stop = asyncio.Event()
    body = {"prompt_type": "text", "prompt_text": "load", "model": f"openai/{model}"}

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in range(3000):
            if stop.is_set():
                return
            answer, response = await _call(
                client, "POST", "/ai/prompts/", json=body, headers=headers
            )
            answers.append(answer)
            if response is not None and response.status_code == 202:
                accepted.append(response.json()["id"])
            if accepted:
                answer, _ = await _call(
                    client, "GET", f"/ai/prompts/{accepted[-1]}", headers=headers
                )
                answers.append(answer)
            await asyncio.sleep(0.02)

    def accepted_since(moment: float, count: int) -> bool:
        return sum(1 for a in answers if a.at > moment and a.status == 202) >= count

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
        clients = [asyncio.create_task(client_loop(client)) for _ in range(4)]
        try:
            await until(lambda: accepted_since(0, 20), timeout=20, what="load before the restart")
            down_at = time.monotonic()
            await asyncio.to_thread(cluster.stop, "fast")
            # An outage longer than a lease: the worker cannot renew its claims meanwhile.
            await until(
                lambda: (
                    time.monotonic() - down_at > LEASE_SECONDS + 1
                    and sum(1 for a in answers if a.at > down_at and a.status == 503) >= 10
                ),
                timeout=15,
                what="503s during the outage",
            )
            await asyncio.to_thread(cluster.start)
            up_at = time.monotonic()
            await until(
                lambda: accepted_since(up_at, 40), timeout=30, what="202s after the restart"
            )
        finally:
            stop.set()
            await asyncio.gather(*clients)

    # Recovered by itself, and nothing accepted was lost or left stuck.
    first_ok = min(a.at for a in answers if a.at > up_at and a.status in (200, 202))
    tail = [a.status for a in answers[-20:]]
    assert set(tail) <= {200, 202}, f"not recovered: {tail}"
    await until(lambda: db.all_in(accepted, "completed"), timeout=45, what="all accepted completed")
    await db.assert_completed_once(accepted)
    attempts = {row["attempts"] for row in (await db.prompts(accepted)).values()}
    calls = len(mock_openai.calls_for(model))
    assert api_process.alive() and worker.alive()

    assert "Traceback" not in "".join(a.body for a in answers)
    unavailable = [a for a in answers if a.status == 503]
    assert unavailable
    for answer in unavailable:
        assert answer.content_type.startswith("application/problem+json")
        assert answer.code == "database_unavailable", answer.body
        assert "Traceback" not in answer.body
    others = [a for a in answers if a.status not in (200, 202, 503)]
    kinds = sorted({(a.method, a.status, a.code or a.body[:60]) for a in others})
    print(
        f"\n[postgres restart] {len(answers)} answers: {len(accepted)} accepted, "
        f"{len(unavailable)} x 503 database_unavailable, {len(others)} others {kinds}; outage "
        f"(stop to start) {up_at - down_at:.1f} s; first success {first_ok - up_at:.2f} s "
        f"after the start, last 503 {max(a.at for a in unavailable) - up_at:+.2f} s; "
        f"executions per prompt {sorted(attempts)}; provider calls {calls} for "
        f"{len(accepted)} prompts"
    )
    assert not others, f"{len(others)} unexpected answers: {kinds}"


async def test_a_prompt_that_kills_its_worker_every_time_fails_after_max_attempts(
    database: str, services: Services, mock_openai: MockOpenAI
):
    """A prompt whose execution kills the worker every time (here: the provider hangs and the
    test SIGKILLs whichever worker runs it) ends `failed` with `attempts_exhausted` after
    MAX_ATTEMPTS executions instead of killing workers forever."""
    redis = services.redis()
    env = app_env(database, redis.url, mock_openai)
    model = f"hang-{tag()}"
    db = Db(database)
    async with celery_api(database, mock_openai, redis.url) as api:
        headers = await api.new_user()
        prompt_id = (await api.submit(headers, model=f"openai/{model}"))["id"]
    submitted = time.monotonic()

    async def executing(execution: int) -> bool:
        row = (await db.prompts([prompt_id]))[prompt_id]
        calls = len(mock_openai.calls_for(model))
        return row["status"] == "running" and row["attempts"] == execution and calls == execution

    worker = services.worker(env)
    for execution in range(1, MAX_ATTEMPTS + 1):
        await until(
            lambda e=execution: executing(e), timeout=30, what=f"execution {execution} running"
        )
        worker.kill()
        worker = services.worker(env)  # starts while the dead one's lease runs out
    row = await until(lambda: _final(db, prompt_id), timeout=30, what="the prompt given up on")
    assert row["status"] == "failed" and row["error_code"] == "attempts_exhausted"
    assert row["attempts"] == MAX_ATTEMPTS
    assert len(mock_openai.calls_for(model)) == MAX_ATTEMPTS  # not called a fourth time
    assert await db.attempt_outcomes([prompt_id]) == {"lost": MAX_ATTEMPTS}  # each one billed
    assert await db.responses([prompt_id]) == {}
    print(
        f"\n[poison prompt] failed attempts_exhausted after {MAX_ATTEMPTS} killed workers, "
        f"{time.monotonic() - submitted:.1f} s after it was submitted"
    )


async def _final(db: Db, prompt_id: str) -> asyncpg.Record | None:
    row = (await db.prompts([prompt_id]))[prompt_id]
    return row if row["status"] in ("completed", "failed", "cancelled") else None


async def test_duplicate_deliveries_execute_a_prompt_once(
    database: str, services: Services, mock_openai: MockOpenAI
):
    """Each prompt's task is delivered five times to two workers: twice more right after the
    API's own message, twice while it runs, once after it completed. One provider call and
    one response each: the claim in the database is the only gate."""
    redis = services.redis()
    env = app_env(database, redis.url, mock_openai)
    workers = [services.worker(env), services.worker(env)]
    await asyncio.gather(*(asyncio.to_thread(worker_ready, w) for w in workers))
    db = Db(database)
    prefix = f"slow-3000-{tag()}"
    settings = make_settings(database, mock_openai, celery_broker_url=redis.url)
    celery = create_celery(settings)

    def deliver(ids: list[str], times: int) -> None:
        for prompt_id in ids:
            for _ in range(times):
                celery.send_task(EXECUTE_TASK, args=[prompt_id])

    try:
        async with running_api(settings) as api:
            headers = await api.new_user()
            created = [await api.submit(headers, model=f"openai/{prefix}-{i}") for i in range(10)]
            ids = [c["id"] for c in created]
            await asyncio.to_thread(deliver, ids, 2)
            await until(lambda: db.all_in(ids, "running"), timeout=10, what="all running")
            await asyncio.to_thread(deliver, ids, 2)
            await until(lambda: db.all_in(ids, "completed"), timeout=20, what="all completed")
            await asyncio.to_thread(deliver, ids, 1)
    finally:
        celery.close()

    with redis.client() as client:
        await until(
            lambda: client.llen(QUEUE) == 0 and client.hlen("unacked") == 0,
            timeout=10,
            what="every delivery consumed",
        )
        published = client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    await asyncio.sleep(0.5)  # the last deliveries' (no-op) claims
    assert published >= 50, f"only {published} messages published"
    await db.assert_completed_once(ids)
    assert {row["attempts"] for row in (await db.prompts(ids)).values()} == {1}
    assert await db.attempt_outcomes(ids) == {"success": 10}
    calls = {i: len(mock_openai.calls_for(f"{prefix}-{i}")) for i in range(10)}
    assert calls == dict.fromkeys(range(10), 1)
    print(f"\n[duplicates] {published} messages for 10 prompts on 2 workers: 10 provider calls")


async def test_sigterm_hands_running_prompts_back_quickly(
    database: str, services: Services, mock_openai: MockOpenAI
):
    """SIGTERM a worker that is full: 5 prompts running (WORKER_CONCURRENCY=5), 10 more
    queued on its loop (its start-up sweep found them pending), so its Celery task waits for
    room. It exits within SHUTDOWN_GRACE_SECONDS plus a margin, leaving every prompt pending
    (the running ones handed back, their abandoned calls recorded, the message it was holding
    dropped: the row is the job), and another worker completes each once."""
    redis = services.redis()
    grace = 1.0
    env = app_env(
        database, redis.url, mock_openai, worker_concurrency=5, shutdown_grace_seconds=grace
    )
    model = f"slow-8000-{tag()}"
    db = Db(database)
    async with celery_api(database, mock_openai, redis.url) as api:
        headers = await api.new_user()
        created = [await api.submit(headers, model=f"openai/{model}") for _ in range(15)]
    ids = [c["id"] for c in created]
    stopping = services.worker(env)
    await until(lambda: len(mock_openai.calls_for(model)) == 5, timeout=30, what="5 calls")
    with redis.client() as client:
        await until(lambda: client.llen(QUEUE) < 15, timeout=10, what="a task waiting for room")
    assert await db.statuses(ids) == {"running": 5, "pending": 10}

    stopping.signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = await asyncio.to_thread(stopping.wait, grace + 20)
    except Exception:
        pytest.fail(f"the worker did not exit within {grace + 20} s of SIGTERM")
    took = time.monotonic() - started
    assert code == 0, stopping.tail()
    rows = await db.prompts(ids)
    assert {(r["status"], r["attempts"], r["lease_expires_at"]) for r in rows.values()} == {
        ("pending", 0, None)
    }
    assert await db.attempt_outcomes(ids) == {"abandoned": 5}
    with redis.client() as client:
        returned = client.llen(QUEUE)

    services.worker(app_env(database, redis.url, mock_openai))
    await until(lambda: db.all_in(ids, "completed"), timeout=30, what="all completed")
    await db.assert_completed_once(ids)
    assert {row["attempts"] for row in (await db.prompts(ids)).values()} == {1}
    assert await db.attempt_outcomes(ids) == {"abandoned": 5, "success": 15}
    calls = len(mock_openai.calls_for(model))
    print(
        f"\n[sigterm] full worker exited {took:.1f} s after SIGTERM (grace {grace} s); "
        f"{returned} reserved messages back in the queue; provider calls {calls} for 15 prompts"
    )
    assert took < grace + 5, f"exit took {took:.1f} s"
    assert calls == 20
