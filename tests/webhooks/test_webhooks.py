"""Signed webhooks, end to end: a real receiver on 127.0.0.1 gets POSTs from the pump of the
API process (embedded) or of the Celery worker, signed as the README says, retried with
backoff, logged, and redelivered on request."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import func, select, update

from app.db.base import utcnow
from app.db.models import PromptRequest, PromptStatus, WebhookDelivery, WebhookEndpoint
from app.kit.sealing import SecretBox, generate_key
from app.services.auth import service as auth_service
from app.services.webhooks import queue
from tests.conftest import SUITE_ENCRYPTION_KEY, Api
from tests.webhooks.conftest import (
    POLL_SECONDS,
    RETRY_BASE_SECONDS,
    TIMEOUT_SECONDS,
    Hook,
    Receiver,
    verify,
)

T = TypeVar("T")
Headers = dict[str, str]


async def until(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.05)


async def register(api: Api, headers: Headers, hook: Hook, *events: str) -> dict[str, Any]:
    body = {"url": hook.url, "events": list(events or ["prompt.completed"])}
    response = await api.client.post("/webhooks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def deliveries(api: Api, headers: Headers, webhook_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/webhooks/{webhook_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


async def settled_log(
    api: Api, headers: Headers, webhook_id: str, *, status: str = "delivered", count: int = 1
) -> list[dict[str, Any]]:
    """The delivery log once `count` deliveries have `status` (the log is written after the
    receiver answered, so a test that saw the POST may be a moment early)."""

    async def probe() -> list[dict[str, Any]] | None:
        log = await deliveries(api, headers, webhook_id)
        return log if sum(d["status"] == status for d in log) >= count else None

    return await until(probe)


async def test_a_completed_prompt_is_posted_once_signed_with_the_secret_shown_once(
    api: Api, receiver: Receiver
):
    headers = await api.new_user()
    hook = receiver.hook()
    created = await register(api, headers, hook)
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert created["events"] == ["prompt.completed"] and created["enabled"] is True

    read = (await api.client.get(f"/webhooks/{created['id']}", headers=headers)).json()
    listed = (await api.client.get("/webhooks", headers=headers)).json()
    assert "secret" not in read and [w["id"] for w in listed] == [created["id"]]
    assert all("secret" not in w for w in listed) and secret not in json.dumps([read, listed])

    prompt = await api.submit(headers, model="gpt-4o-mini", prompt_text="announce me")
    final = await api.wait_final(headers, prompt["id"])
    [post] = await receiver.wait(hook, 1)

    assert post.headers["Content-Type"] == "application/json"
    assert verify(secret, post.headers, post.body)
    assert not verify("whsec_not-the-secret", post.headers, post.body)
    assert not verify(secret, post.headers, post.body + b" ")
    message = json.loads(post.body)
    assert set(message) == {"id", "type", "created_at", "data"}
    assert message["type"] == "prompt.completed"
    assert message["id"] == post.headers["Webhook-Id"]
    assert message["data"] == final  # the prompt as GET /ai/prompts/{id} returns it
    assert message["data"]["response"]["response_text"] == "echo: announce me"

    [delivery] = await settled_log(api, headers, created["id"])
    assert delivery["id"] == message["id"]
    assert delivery["prompt_id"] == prompt["id"] and delivery["event"] == "prompt.completed"
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 200
    assert delivery["last_error"] is None and delivery["delivered_at"]
    [attempt] = delivery["attempt_log"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["duration_ms"] >= 0

    await asyncio.sleep(3 * POLL_SECONDS)
    assert len(receiver.received(hook)) == 1  # sent once, however many passes since


async def test_failures_and_cancellations_go_only_to_endpoints_subscribed_to_them(
    api: Api, receiver: Receiver
):
    headers = await api.new_user()
    outcomes, successes = receiver.hook(), receiver.hook()
    bad_news = await register(api, headers, outcomes, "prompt.failed", "prompt.cancelled")
    good_news = await register(api, headers, successes, "prompt.completed")

    failed = await api.submit(headers, model=f"openai/error-400-{uuid.uuid4().hex[:6]}")
    hanging = await api.submit(headers, model=f"openai/hang-{uuid.uuid4().hex[:6]}")
    failed_final = await api.wait_final(headers, failed["id"])
    assert failed_final["status"] == "failed"
    cancel = await api.client.post(f"/ai/prompts/{hanging['id']}/cancel", headers=headers)
    assert cancel.status_code in (200, 202), cancel.text
    assert (await api.wait_final(headers, hanging["id"]))["status"] == "cancelled"

    posts = await receiver.wait(outcomes, 2)
    messages = {m["type"]: m for m in (json.loads(p.body) for p in posts)}
    assert set(messages) == {"prompt.failed", "prompt.cancelled"}
    assert messages["prompt.failed"]["data"] == failed_final
    assert messages["prompt.failed"]["data"]["error"]["code"] == "bad_request"
    assert messages["prompt.cancelled"]["data"]["id"] == hanging["id"]
    assert all(verify(bad_news["secret"], p.headers, p.body) for p in posts)

    await settled_log(api, headers, bad_news["id"], count=2)
    await asyncio.sleep(3 * POLL_SECONDS)
    assert receiver.received(successes) == []
    assert await deliveries(api, headers, good_news["id"]) == []


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    api: Api, receiver: Receiver
):
    headers = await api.new_user()
    hook = receiver.hook("500", "500", "200")
    created = await register(api, headers, hook)
    prompt = await api.submit(headers, model="gpt-4o-mini")

    posts = await receiver.wait(hook, 3)
    assert len({p.headers["Webhook-Id"] for p in posts}) == 1  # one message, three attempts
    assert all(verify(created["secret"], p.headers, p.body) for p in posts)
    # Backoff: WEBHOOK_RETRY_BASE_SECONDS after the first failure, six times it after the second.
    assert posts[1].at - posts[0].at >= RETRY_BASE_SECONDS * 0.9
    assert posts[2].at - posts[1].at >= 6 * RETRY_BASE_SECONDS * 0.9

    [delivery] = await settled_log(api, headers, created["id"])
    assert delivery["prompt_id"] == prompt["id"]
    assert delivery["attempts"] == 3 and delivery["last_status_code"] == 200
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
    await asyncio.sleep(3 * POLL_SECONDS)
    assert len(receiver.received(hook)) == 3


async def test_a_hanging_receiver_times_out_and_is_retried_while_others_are_served_at_once(
    api: Api, receiver: Receiver
):
    headers = await api.new_user()
    slow, fast = receiver.hook(then="hang"), receiver.hook()
    stuck = await register(api, headers, slow)
    quick = await register(api, headers, fast)

    first = await api.submit(headers, model="gpt-4o-mini", prompt_text="one")
    [held] = await receiver.wait(slow, 1)
    [one] = await receiver.wait(fast, 1)
    # While the slow receiver holds its POST, the next prompt runs and is announced at once.
    second = await api.submit(headers, model="gpt-4o-mini", prompt_text="two")
    await api.wait_final(headers, second["id"])
    [_, two] = await receiver.wait(fast, 2)
    assert max(one.at, two.at) < held.at + TIMEOUT_SECONDS
    assert [json.loads(p.body)["data"]["id"] for p in (held, one, two)] == [
        first["id"],
        first["id"],
        second["id"],
    ]

    # The slow receiver's attempts end in a timeout, recorded, and are tried again.
    async def timed_out() -> list[dict[str, Any]] | None:
        log = await deliveries(api, headers, stuck["id"])
        return log if len(log) == 2 and all(d["attempt_log"] for d in log) else None

    for delivery in await until(timed_out):
        attempt = delivery["attempt_log"][0]
        assert attempt["status_code"] is None and attempt["error"].startswith("timeout")
        assert attempt["duration_ms"] >= TIMEOUT_SECONDS * 1000 * 0.9
        assert delivery["last_error"].startswith("timeout")
        assert delivery["status"] in ("pending", "sending")
    assert await receiver.wait(slow, 3)  # a retry
    await settled_log(api, headers, quick["id"], count=2)

    deleted = await api.client.delete(f"/webhooks/{stuck['id']}", headers=headers)
    assert deleted.status_code == 204  # and with it, the retries


async def test_redeliver_sends_the_same_message_again(api: Api, receiver: Receiver):
    headers = await api.new_user()
    hook = receiver.hook()
    created = await register(api, headers, hook)
    await api.submit(headers, model="gpt-4o-mini")
    [first] = await receiver.wait(hook, 1)
    [delivery] = await settled_log(api, headers, created["id"])

    response = await api.client.post(
        f"/webhooks/deliveries/{delivery['id']}/redeliver", headers=headers
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending" and response.json()["id"] == delivery["id"]

    [_, again] = await receiver.wait(hook, 2)
    assert again.headers["Webhook-Id"] == first.headers["Webhook-Id"]
    assert json.loads(again.body)["data"] == json.loads(first.body)["data"]
    assert verify(created["secret"], again.headers, again.body)

    async def twice() -> dict[str, Any] | None:
        [d] = await deliveries(api, headers, created["id"])
        return d if d["status"] == "delivered" and d["attempts"] == 2 else None

    redelivered = await until(twice)
    assert [a["status_code"] for a in redelivered["attempt_log"]] == [200, 200]


async def test_another_users_webhooks_and_deliveries_do_not_exist_for_you(
    api: Api, receiver: Receiver
):
    mine, theirs = await api.new_user(), await api.new_user()
    hook = receiver.hook()
    created = await register(api, mine, hook)
    await api.submit(mine, model="gpt-4o-mini")
    [delivery] = await settled_log(api, mine, created["id"])

    webhook = f"/webhooks/{created['id']}"
    for method, url, body in [
        ("GET", webhook, None),
        ("PATCH", webhook, {"enabled": False}),
        ("DELETE", webhook, None),
        ("POST", f"{webhook}/rotate-secret", None),
        ("GET", f"{webhook}/deliveries", None),
        ("POST", f"/webhooks/deliveries/{delivery['id']}/redeliver", None),
        ("GET", f"/webhooks/{uuid.uuid4()}", None),
        ("POST", f"/webhooks/deliveries/{uuid.uuid4()}/redeliver", None),
    ]:
        response = await api.client.request(method, url, json=body, headers=theirs)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["code"] == "not_found"
    assert (await api.client.get("/webhooks", headers=theirs)).json() == []
    assert (await api.client.get("/webhooks")).status_code == 401

    # Untouched: still enabled, and delivered once.
    assert (await api.client.get(webhook, headers=mine)).json()["enabled"] is True
    await asyncio.sleep(3 * POLL_SECONDS)
    assert len(receiver.received(hook)) == 1


async def test_unusable_urls_and_unknown_events_are_refused(api: Api):
    headers = await api.new_user()
    for url in [
        "ftp://example.com/hook",
        "/relative/hook",
        "example.com/hook",
        "http://",
        "https://exa mple.com/hook",
        "http://example.com:99999/hook",
        "https://example.com/" + "a" * 2048,
    ]:
        response = await api.client.post(
            "/webhooks", json={"url": url, "events": ["prompt.completed"]}, headers=headers
        )
        assert response.status_code == 422, url
        assert response.json()["code"] == "invalid_webhook_url", url
    for body in [
        {"url": "https://example.com/h", "events": ["prompt.started"]},
        {"url": "https://example.com/h", "events": []},
        {"url": "https://example.com/h", "events": ["prompt.completed"], "secret": "mine"},
    ]:
        response = await api.client.post("/webhooks", json=body, headers=headers)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    assert (await api.client.get("/webhooks", headers=headers)).json() == []


async def test_disable_change_rotate_and_delete(api: Api, receiver: Receiver):
    headers = await api.new_user()
    before, after = receiver.hook(), receiver.hook()
    created = await register(api, headers, before)
    webhook = f"/webhooks/{created['id']}"

    off = await api.client.patch(webhook, json={"enabled": False}, headers=headers)
    assert off.status_code == 200 and off.json()["enabled"] is False
    unannounced = await api.submit(headers, model="gpt-4o-mini")
    await api.wait_final(headers, unannounced["id"])
    await asyncio.sleep(3 * POLL_SECONDS)
    assert receiver.received(before) == []

    changed = await api.client.patch(
        webhook, json={"enabled": True, "url": after.url, "description": "v2"}, headers=headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["url"] == after.url and changed.json()["description"] == "v2"
    bad = await api.client.patch(webhook, json={"url": "mailto:me@example.com"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_webhook_url"
    rotated = await api.client.post(f"{webhook}/rotate-secret", headers=headers)
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"]

    announced = await api.submit(headers, model="gpt-4o-mini")
    [post] = await receiver.wait(after, 1)
    assert json.loads(post.body)["data"]["id"] == announced["id"]  # not the one from before
    assert verify(new_secret, post.headers, post.body)
    assert not verify(created["secret"], post.headers, post.body)
    assert receiver.received(before) == []

    assert (await api.client.delete(webhook, headers=headers)).status_code == 204
    assert (await api.client.get(webhook, headers=headers)).status_code == 404
    assert (await api.client.get(f"{webhook}/deliveries", headers=headers)).status_code == 404


async def test_a_prompt_finished_anywhere_is_found_in_the_database_once_by_any_number_of_pumps(
    api: Api, receiver: Receiver
):
    """Nothing tells the pump that a prompt finished: here the row is written directly, as by
    a process that died right after committing it, and four passes race the running pump."""
    headers = await api.new_user()
    hook = receiver.hook()
    created = await register(api, headers, hook)
    async with api.sessions() as session:
        user, _ = await auth_service.authenticate(
            session, plaintext=headers["Authorization"].removeprefix("Bearer ")
        )
        now = utcnow()
        prompt = PromptRequest(
            id=uuid.uuid4(),
            user_id=user.id,
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
        session.add(prompt)
        await session.commit()

    await asyncio.gather(*(queue.enqueue_finished(api.sessions, now=utcnow()) for _ in range(4)))
    [post] = await receiver.wait(hook, 1)
    assert json.loads(post.body)["data"]["id"] == str(prompt.id)
    async with api.sessions() as session:
        count = await session.scalar(
            select(func.count()).where(WebhookDelivery.prompt_id == prompt.id)
        )
    assert count == 1
    await settled_log(api, headers, created["id"])
    await asyncio.sleep(3 * POLL_SECONDS)
    assert len(receiver.received(hook)) == 1


async def _sealed_secret(api: Api, webhook_id: str) -> str:
    async with api.sessions() as session:
        row = (
            await session.execute(
                select(WebhookEndpoint.__table__).where(WebhookEndpoint.id == uuid.UUID(webhook_id))
            )
        ).one()
    assert set(row._mapping) >= {"sealed_secret", "url"} and "secret" not in row._mapping
    return str(row.sealed_secret)


async def test_the_database_holds_each_secret_sealed_never_in_the_clear(
    api: Api, receiver: Receiver
):
    headers = await api.new_user()
    created = await register(api, headers, receiver.hook())
    webhook = f"/webhooks/{created['id']}"
    rotated = (await api.client.post(f"{webhook}/rotate-secret", headers=headers)).json()

    async with api.sessions() as session:
        rows = (await session.execute(select(WebhookEndpoint.__table__))).all()
    stored = json.dumps([[str(value) for value in row] for row in rows])
    assert created["secret"] not in stored and rotated["secret"] not in stored
    sealed = await _sealed_secret(api, created["id"])
    assert SecretBox([SUITE_ENCRYPTION_KEY]).open(sealed) == rotated["secret"]


async def test_a_secret_this_server_cannot_open_fails_the_delivery_and_sends_nothing_unsigned(
    api: Api, receiver: Receiver
):
    """An endpoint sealed under a key the pump does not hold (ENCRYPTION_KEYS differing
    between processes, say) is not POSTed; its delivery log says why, and once the keys
    agree again the retry goes out, signed."""
    headers = await api.new_user()
    hook = receiver.hook()
    created = await register(api, headers, hook)
    right = await _sealed_secret(api, created["id"])
    wrong = SecretBox([generate_key()]).seal(created["secret"])
    endpoint_id = uuid.UUID(created["id"])

    async def reseal(value: str) -> None:
        async with api.sessions() as session, session.begin():
            await session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(sealed_secret=value)
            )

    await reseal(wrong)
    prompt = await api.submit(headers, model="gpt-4o-mini", prompt_text="sealed away")
    await api.wait_final(headers, prompt["id"])

    async def refused() -> list[dict[str, Any]] | None:
        log = await deliveries(api, headers, created["id"])
        errors = [a["error"] or "" for d in log for a in d["attempt_log"]]
        return log if any(e.startswith("secret_unreadable:") for e in errors) else None

    [delivery] = await until(refused)
    assert delivery["last_error"].startswith("secret_unreadable:")
    assert "ENCRYPTION_KEYS" in delivery["last_error"]
    assert created["secret"] not in json.dumps(delivery)
    assert receiver.received(hook) == []

    await reseal(right)
    [post] = await receiver.wait(hook, 1)
    assert verify(created["secret"], post.headers, post.body)
    [delivered] = await settled_log(api, headers, created["id"])
    assert delivered["attempts"] >= 2
