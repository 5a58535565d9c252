"""`budget.threshold`: the first time in a period that a budget's spending passes its warning
share, its owners' subscribed endpoints are told, once, signed like every delivery."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

from tests.conftest import Api
from tests.webhooks.conftest import Receiver, verify
from tests.webhooks.test_webhooks import register, settled_log


async def test_a_team_budget_warns_its_owners_once_a_period(api: Api, receiver: Receiver):
    admin = await api.new_user(is_admin=True)
    team = await api.call(admin, "POST", "/ai/admin/teams", 201, name=f"t-{uuid.uuid4().hex[:8]}")
    people = {}
    for role in ("owner", "member"):
        user = await api.call(
            admin, "POST", "/ai/admin/users", 201, email=f"{uuid.uuid4().hex[:10]}@example.com"
        )
        await api.call(admin, "PUT", f"/ai/admin/teams/{team['id']}/members/{user['id']}", 200,
                       role=role)  # fmt: skip
        key = await api.call(admin, "POST", "/ai/admin/keys", 201, user_id=user["id"],
                             team_id=team["id"])  # fmt: skip
        people[role] = {"Authorization": f"Bearer {key['key']}"}
    owner_hook, member_hook = receiver.hook(), receiver.hook()
    created = await register(api, people["owner"], owner_hook, "budget.threshold")
    await register(api, people["member"], member_hook, "budget.threshold")
    # Each chat costs about a millionth of a dollar (a few tokens of gpt-4o-mini); the
    # warning is at 10 % of $0.00001, so the second chat crosses it.
    await api.call(admin, "PUT", f"/ai/admin/limits/team/{team['id']}", 200,
                   budget_usd="0.00001", budget_period="week", warn_at=0.1)  # fmt: skip
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1}  # fmt: skip
    costs = []
    for _ in range(3):
        answer = await api.client.post("/v1/chat/completions", json=chat, headers=people["member"])
        assert answer.status_code == 200, answer.text
        prompt = await api.call(
            people["member"], "GET", f"/ai/prompts/{answer.headers['X-Prompt-Id']}", 200
        )
        costs.append(Decimal(prompt["response"]["cost_usd"]))
    assert costs[0] < Decimal("0.000001") <= costs[0] + costs[1]

    [post] = await receiver.wait(owner_hook, 1)
    assert verify(created["secret"], post.headers, post.body)
    message = json.loads(post.body)
    assert message["type"] == "budget.threshold"
    data = message["data"]
    assert data["scope"] == "team" and data["subject_id"] == team["id"]
    assert data["budget_usd"] == "0.00001" and data["warn_at"] == 0.1
    assert Decimal(data["spent_usd"]) == costs[0] + costs[1]  # the two chats so far
    assert data["period"] == "week" and data["period_end"] > data["period_start"]
    [delivery] = await settled_log(api, people["owner"], created["id"])
    assert delivery["prompt_id"] is None and delivery["event"] == "budget.threshold"

    await asyncio.sleep(1.0)
    assert len(receiver.received(owner_hook)) == 1  # once a period, however much is spent
    assert receiver.received(member_hook) == []  # a member does not answer for the budget
    budgets = await api.call(people["owner"], "GET", "/ai/usage/budgets", 200)
    [standing] = [b for b in budgets["items"] if b["subject_id"] == team["id"]]
    assert standing["warning"] is True and Decimal(standing["spent_usd"]) == sum(costs)
