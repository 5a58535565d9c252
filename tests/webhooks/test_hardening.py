"""Issue #14, the webhook findings, end to end on each backend (the pump of the API process,
or of the Celery worker):

1. webhooks could reach the server's own networks, and the delivery log told an open port
   from a closed one;
3. a delivery whose message could not be built was claimed again every lease, for ever,
   with no attempt logged and a traceback each time;
4. one user's backlog held up every other user's deliveries until it drained.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.db.base import utcnow
from app.db.models import (
    DeliveryStatus,
    PromptRequest,
    PromptStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from app.kit.sealing import SecretBox
from app.services.auth import service as auth_service
from app.services.webhooks.signing import new_secret
from tests.conftest import SUITE_ENCRYPTION_KEY, Api
from tests.jobs.services import free_port
from tests.webhooks.conftest import (
    CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    POLL_SECONDS,
    TIMEOUT_SECONDS,
    Hook,
    LoggedApi,
    Receiver,
)
from tests.webhooks.test_webhooks import Headers, deliveries, register, until

PUMP_LOGGER = "app.services.webhooks.pump"


async def _user_id(api: Api, headers: Headers) -> uuid.UUID:
    async with api.sessions() as session:
        user, _ = await auth_service.authenticate(
            session, plaintext=headers["Authorization"].removeprefix("Bearer ")
        )
    return user.id


async def _finish_prompts(
    api: Api, user_id: uuid.UUID, count: int = 1, *, parameters: Any = None
) -> list[uuid.UUID]:
    """Completed prompts written straight into the database, as a runner would leave them;
    `parameters` replaces the stored JSON object (to store what no API call would)."""
    ids = [uuid.uuid4() for _ in range(count)]
    async with api.sessions() as session, session.begin():
        now = utcnow()
        for prompt_id in ids:
            session.add(
                PromptRequest(
                    id=prompt_id,
                    user_id=user_id,
                    model="gpt-4o-mini",
                    prompt_type="text",
                    prompt_text="finished elsewhere",
                    status=PromptStatus.COMPLETED,
                    created_at=now,
                    started_at=now,
                    finished_at=now,
                    provider="openai",
                    upstream_model="gpt-4o-mini",
                    parameters={},
                    meta={},
                    executions=1,
                )
            )
        if parameters is not None:
            await session.flush()
            await session.execute(
                update(PromptRequest)
                .where(PromptRequest.id.in_(ids))
                .values(parameters=parameters)
                .execution_options(synchronize_session=False)
            )
    return ids


async def _stored_endpoint(
    api: Api, user_id: uuid.UUID, url: str, *, enabled: bool = True
) -> uuid.UUID:
    """An endpoint row written straight into the database, as one registered before the
    guard existed (or under another OUTBOUND_ALLOWLIST) would be."""
    now = utcnow()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        user_id=user_id,
        url=url,
        description=None,
        sealed_secret=SecretBox([SUITE_ENCRYPTION_KEY]).seal(new_secret()),
        enabled=enabled,
        created_at=now,
        updated_at=now,
        scanned_until=now,
    )
    endpoint.subscribe([WebhookEvent.PROMPT_COMPLETED])
    async with api.sessions() as session, session.begin():
        session.add(endpoint)
    return endpoint.id


async def _final_log(
    api: Api, headers: Headers, webhook_id: uuid.UUID | str, *, timeout: float = 10.0
) -> dict[str, Any]:
    """The endpoint's one delivery, once it is `delivered` or `failed`."""

    async def probe() -> dict[str, Any] | None:
        log = await deliveries(api, headers, str(webhook_id))
        done = [d for d in log if d["status"] in ("delivered", "failed")]
        return done[0] if done else None

    return await until(probe, timeout=timeout)


# --- 1. The receiver on 127.0.0.1: refused by default, allowed through the allow-list --------


async def test_a_local_receiver_is_refused_by_default_and_allowed_through_the_allowlist(
    default_api: LoggedApi, api: Api, receiver: Receiver
):
    headers = await default_api.new_user()
    hook = receiver.hook()
    port = receiver.port
    for url, reason in [
        (hook.url, "127.0.0.1 is in a range that may not be reached (loopback)"),
        (f"http://localhost:{port}/", "localhost is a name for this machine"),
        (f"http://[::1]:{port}/", "(loopback)"),
        (f"http://0x7f000001:{port}/", "reads as the IPv4 address 127.0.0.1"),
        (f"http://2130706433:{port}/", "reads as the IPv4 address 127.0.0.1"),
        (f"http://[::ffff:127.0.0.1]:{port}/", "loopback (IPv4 inside IPv6)"),
        ("http://169.254.169.254/latest/meta-data/", "(cloud metadata)"),
        ("http://10.0.0.8:5432/", "(private network)"),
        ("http://user:pass@example.com/hook", "user name or password"),
        ("gopher://example.com/", "must start with http:// or https://"),
    ]:
        response = await default_api.client.post(
            "/webhooks", json={"url": url, "events": ["prompt.completed"]}, headers=headers
        )
        assert response.status_code == 422, (url, response.text)
        problem = response.json()
        assert problem["code"] == "invalid_webhook_url", url
        assert reason in problem["detail"], (url, problem["detail"])
    public = await register(default_api, headers, Hook("public", "https://hooks.example.com/in"))
    changed = await default_api.client.patch(
        f"/webhooks/{public['id']}", json={"url": hook.url}, headers=headers
    )
    assert changed.status_code == 422 and changed.json()["code"] == "invalid_webhook_url"
    listed = (await default_api.client.get("/webhooks", headers=headers)).json()
    assert [w["url"] for w in listed] == ["https://hooks.example.com/in"]

    # OUTBOUND_ALLOWLIST=127.0.0.1/32: the same receiver is registered and POSTed to.
    allowed = await api.new_user()
    created = await register(api, allowed, hook)
    await _finish_prompts(api, await _user_id(api, allowed))
    assert await receiver.wait(hook, 1)
    assert (await _final_log(api, allowed, created["id"]))["status"] == "delivered"
    for url in [f"http://127.0.0.2:{port}/", "http://169.254.169.254/"]:  # still refused
        response = await api.client.post(
            "/webhooks", json={"url": url, "events": ["prompt.completed"]}, headers=allowed
        )
        assert response.status_code == 422 and response.json()["code"] == "invalid_webhook_url"


async def test_a_stored_url_that_reaches_this_machine_is_blocked_at_each_delivery(
    default_api: LoggedApi, receiver: Receiver
):
    """Rows that got in before the guard: `localhost` (a name: refused by the resolver, for
    what it resolves to) and a hex literal (refused before any lookup). Nothing is sent; the
    log says `blocked`, and the deliveries fail after their attempts."""
    headers = await default_api.new_user()
    user_id = await _user_id(default_api, headers)
    by_name, by_literal = receiver.hook(), receiver.hook()
    named = await _stored_endpoint(
        default_api, user_id, f"http://localhost:{receiver.port}/hooks/{by_name.name}"
    )
    literal = await _stored_endpoint(
        default_api, user_id, f"http://0x7f000001:{receiver.port}/hooks/{by_literal.name}"
    )
    await _finish_prompts(default_api, user_id)

    for endpoint_id, reason in [
        (named, "blocked: the host resolves to an address that may not be reached"),
        (literal, "blocked: 0x7f000001 reads as the IPv4 address 127.0.0.1"),
    ]:
        delivery = await _final_log(default_api, headers, endpoint_id)
        assert delivery["status"] == "failed", delivery
        assert delivery["attempts"] == DEFAULT_MAX_ATTEMPTS
        errors = [a["error"] for a in delivery["attempt_log"]]
        assert len(errors) == DEFAULT_MAX_ATTEMPTS
        assert all(e.startswith(reason) for e in errors), errors
        assert all(a["status_code"] is None for a in delivery["attempt_log"])
    assert receiver.received(by_name) == [] and receiver.received(by_literal) == []


async def test_a_closed_port_and_a_dropped_connection_read_the_same(api: Api, receiver: Receiver):
    """The delivery log must not be a port scanner: no exception names, no socket messages."""
    headers = await api.new_user()
    dropping = receiver.hook(then="drop")
    nobody = Hook("closed", f"http://127.0.0.1:{free_port()}/hooks/nobody")  # no server there
    closed = await register(api, headers, nobody)
    dropped = await register(api, headers, dropping)
    await _finish_prompts(api, await _user_id(api, headers))
    await receiver.wait(dropping, 1)

    async def first_attempts() -> list[dict[str, Any]] | None:
        found = []
        for webhook in (closed, dropped):
            log = await deliveries(api, headers, webhook["id"])
            if not log or not log[0]["attempt_log"]:
                return None
            found.append(log[0]["attempt_log"][0])
        return found

    refused, reset = await until(first_attempts)
    assert refused["error"] == reset["error"] == "unreachable: no HTTP answer"
    assert refused["status_code"] is None and reset["status_code"] is None
    for webhook in (closed, dropped):
        await api.client.delete(f"/webhooks/{webhook['id']}", headers=headers)


# --- 3. A poisoned delivery ------------------------------------------------------------------


def _log_lines(api: LoggedApi, caplog: pytest.LogCaptureFixture, delivery_id: str) -> list[str]:
    """The pump's warnings and errors about this delivery, each followed by "\nTraceback" if
    a traceback was logged with it, from whichever process runs the pump."""
    if api.worker_log is None:
        return [
            record.getMessage() + ("\nTraceback" if record.exc_info else "")
            for record in caplog.records
            if record.name == PUMP_LOGGER
            and record.levelno >= logging.WARNING
            and delivery_id in record.getMessage()
        ]
    found: list[str] = []
    about_it = False  # whether the last record line was one of this delivery's
    for line in api.worker_log.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            if about_it:
                found[-1] += "\nTraceback"
        elif line.strip() and not line.startswith((" ", "\t")):
            about_it = delivery_id in line and ("WARNING" in line or "ERROR" in line)
            if about_it:
                found.append(line)
    return found


async def test_a_delivery_whose_message_cannot_be_built_fails_after_its_attempts(
    default_api: LoggedApi, caplog: pytest.LogCaptureFixture
):
    """The prompt row's `parameters` is a JSON list (written by SQL, as an old version or a
    hand-made fix might leave it): turning it into the message raises, every time."""
    caplog.set_level(logging.WARNING, logger=PUMP_LOGGER)
    headers = await default_api.new_user()
    user_id = await _user_id(default_api, headers)
    endpoint_id = await _stored_endpoint(default_api, user_id, "https://hooks.example.com/x")
    [prompt_id] = await _finish_prompts(default_api, user_id, parameters=["not", "an", "object"])

    delivery = await _final_log(default_api, headers, endpoint_id)
    assert delivery["prompt_id"] == str(prompt_id)
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == DEFAULT_MAX_ATTEMPTS
    errors = [a["error"] for a in delivery["attempt_log"]]
    assert len(errors) == DEFAULT_MAX_ATTEMPTS
    assert all(e.startswith("internal_error: ") for e in errors), errors
    assert not any("Error" in e or "parameters" in e for e in errors)  # no exception detail

    # Not claimed again: the count stays, for longer than the whole round took.
    await asyncio.sleep(1.0)
    async with default_api.sessions() as session:
        attempts = await session.scalar(
            select(WebhookDelivery.attempts).where(WebhookDelivery.prompt_id == prompt_id)
        )
    assert attempts == DEFAULT_MAX_ATTEMPTS

    # One traceback (the first attempt's), then a line per attempt.
    async def logged() -> list[str] | None:
        lines = _log_lines(default_api, caplog, delivery["id"])
        return lines if len(lines) >= DEFAULT_MAX_ATTEMPTS else None

    lines = await until(logged)
    assert len(lines) == DEFAULT_MAX_ATTEMPTS, lines
    assert [line.endswith("\nTraceback") for line in lines] == [True, False, False], lines


async def test_a_claim_whose_sender_vanished_counts_as_an_attempt_and_is_not_retried_past_the_limit(
    default_api: LoggedApi,
):
    """A delivery left `sending` on its last attempt by a process that stopped (its lease
    expired): logged as abandoned and `failed`, not claimed for an attempt past the limit."""
    headers = await default_api.new_user()
    user_id = await _user_id(default_api, headers)
    # Disabled while the rows are written, so that the pump creates no delivery of its own.
    endpoint_id = await _stored_endpoint(
        default_api, user_id, "https://hooks.example.com/y", enabled=False
    )
    [prompt_id] = await _finish_prompts(default_api, user_id)
    now = utcnow()
    async with default_api.sessions() as session, session.begin():
        session.add(
            WebhookDelivery(
                id=uuid.uuid4(),
                endpoint_id=endpoint_id,
                prompt_id=prompt_id,
                event=WebhookEvent.PROMPT_COMPLETED,
                status=DeliveryStatus.SENDING,
                attempts=DEFAULT_MAX_ATTEMPTS,  # the last one, whose sender stopped
                attempts_at_requeue=0,
                next_attempt_at=now,
                lease_expires_at=now,
                created_at=now,
            )
        )
    async with default_api.sessions() as session, session.begin():
        await session.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(enabled=True)
        )

    delivery = await _final_log(default_api, headers, endpoint_id)
    assert delivery["status"] == "failed" and delivery["attempts"] == DEFAULT_MAX_ATTEMPTS
    assert delivery["last_error"].startswith("abandoned: ")
    assert [a["error"][:10] for a in delivery["attempt_log"]] == ["abandoned:"]
    await asyncio.sleep(3 * POLL_SECONDS)
    async with default_api.sessions() as session:
        count = await session.scalar(
            select(func.count()).where(WebhookDelivery.prompt_id == prompt_id)
        )
        attempts = await session.scalar(
            select(WebhookDelivery.attempts).where(WebhookDelivery.prompt_id == prompt_id)
        )
    assert count == 1 and attempts == DEFAULT_MAX_ATTEMPTS


# --- 4. Fairness -----------------------------------------------------------------------------

HOLD_MS = 1000  # how long the flooded receiver takes to answer each POST
FLOOD = 6 * CONCURRENCY


async def test_one_users_backlog_does_not_hold_up_another_users_delivery(
    api: Api, receiver: Receiver
):
    """User A's 24 deliveries to a receiver that takes a second each fill the pump's four
    slots for six seconds. User B's single delivery, due after all of them, still goes out
    within the README's bound (one POST timeout and one poll, plus a poll for the delivery to
    be created): when a slot frees it goes to B, who has nothing in flight, not to A's next."""
    flooder, other = await api.new_user(), await api.new_user()
    slow = receiver.hook(then=f"sleep-{HOLD_MS}")
    flood = await register(api, flooder, slow)
    await _finish_prompts(api, await _user_id(api, flooder), FLOOD)
    [first, *_] = await receiver.wait(slow, CONCURRENCY)  # every slot is A's now

    fast = receiver.hook()
    await register(api, other, fast)
    due = time.monotonic()
    await _finish_prompts(api, await _user_id(api, other))
    [post] = await receiver.wait(fast, 1, timeout=15)

    waited = post.at - due
    served_first = [r for r in receiver.received(slow) if r.at < post.at]
    try:
        assert len(served_first) < FLOOD, "B waited for A's whole backlog"
        assert waited < TIMEOUT_SECONDS + 2 * POLL_SECONDS + 0.5, waited
        assert json.loads(post.body)["type"] == "prompt.completed"

        # A pass claims no more than its free slots: none of A's POSTs waited for a
        # connection until it timed out (a claim on PostgreSQL once took every due delivery
        # at once, and all but four ran out of time queued behind the others).
        await asyncio.sleep(max(0.0, first.at + TIMEOUT_SECONDS + 0.5 - time.monotonic()))
        async with api.sessions() as session:
            errors = list(
                await session.scalars(
                    select(WebhookAttempt.error)
                    .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
                    .where(WebhookDelivery.endpoint_id == uuid.UUID(flood["id"]))
                )
            )
        assert len(errors) >= CONCURRENCY and not any(errors), errors
    finally:
        await api.client.delete(f"/webhooks/{flood['id']}", headers=flooder)
        await asyncio.sleep(HOLD_MS / 1000)  # the POSTs in flight end before the next test


# --- Text fields -------------------------------------------------------------------------------


async def test_text_no_database_can_hold_is_a_422_not_a_500(api: Api):
    """A NUL in `description` once reached PostgreSQL's insert (a 500); a lone surrogate
    cannot even be encoded. Both are refused before anything is stored, on every backend."""
    headers = await api.new_user() | {"Content-Type": "application/json"}
    url = "https://hooks.example.com/t"
    for body in [
        b'{"url": "%s", "events": ["prompt.completed"], "description": "a\\u0000b"}' % url.encode(),
        b'{"url": "%s\\ud800", "events": ["prompt.completed"]}' % url.encode(),
        b'{"url": "%s", "events": ["prompt.completed"], "description": "\\udfff"}' % url.encode(),
    ]:
        response = await api.client.post("/webhooks", content=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["code"] == "invalid_text", response.text
    created = await register(api, headers, Hook("text", url))
    patched = await api.client.patch(
        f"/webhooks/{created['id']}", content=b'{"description": "x\\u0000"}', headers=headers
    )
    assert patched.status_code == 422 and patched.json()["code"] == "invalid_text"
    listed = (await api.client.get("/webhooks", headers=headers)).json()
    assert [w["description"] for w in listed] == [None]
