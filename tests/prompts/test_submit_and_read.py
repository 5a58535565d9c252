"""The whole path: submit → run on the provider (real SDK, local mock) → read the outcome."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import select, text

from app.db.models import PromptResponse
from tests.conftest import Api
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI


async def test_submit_answers_202_with_location_then_completes(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/",
        json={"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "Tell me a joke"},
        headers=headers,
    )
    assert response.status_code == 202
    created = response.json()
    assert response.headers["location"] == f"/ai/prompts/{created['id']}"
    assert created["status"] in ("pending", "running", "completed")
    assert created["model"] == "gpt-4o-mini" and created["provider"] == "openai"
    assert created["prompt_text"] == "Tell me a joke"

    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert done["error"] is None
    answer = done["response"]
    assert answer["response_text"] == "echo: Tell me a joke"
    assert answer["input_tokens"] == 4 and answer["output_tokens"] == 5
    assert answer["usage_estimated"] is False
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output.
    assert Decimal(answer["cost_usd"]) == (Decimal("0.15") * 4 + Decimal("0.60") * 5) / 10**6
    assert answer["duration_ms"] >= 0
    assert done["started_at"] and done["finished_at"]
    assert [a["outcome"] for a in done["attempts"]] == ["success"]
    assert done["executions"] == 1


async def test_provider_receives_exactly_what_was_stored(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    model = f"exact-{uuid.uuid4().hex[:8]}"
    prompt_text = "Line one\n  line two with ünïcode ✓ and trailing space "
    created = await api.submit(
        headers,
        model=f"openai/{model}",
        prompt_text=prompt_text,
        system_prompt="You are terse.",
        temperature=0.25,
        max_tokens=50,
        metadata={"team": "search"},
    )
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert done["upstream_model"] == model
    assert done["parameters"] == {
        "system_prompt": "You are terse.",
        "temperature": 0.25,
        "max_tokens": 50,
    }
    assert done["metadata"] == {"team": "search"}

    [call] = mock_openai.calls_for(model)
    assert call.headers["Authorization"] == f"Bearer {MOCK_API_KEY}"
    assert call.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": prompt_text},
    ]
    assert call.body["temperature"] == 0.25 and call.body["max_tokens"] == 50


async def test_explicit_provider_route_outside_the_catalogue_costs_nothing(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model="openai/my-finetune")
    done = await api.wait_final(headers, created["id"])
    assert done["provider"] == "openai" and done["upstream_model"] == "my-finetune"
    assert Decimal(done["response"]["cost_usd"]) == 0


async def test_missing_usage_is_estimated_and_marked(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model="openai/no-usage", prompt_text="one two three")
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert done["response"]["usage_estimated"] is True
    assert done["response"]["output_tokens"] > 0


async def test_one_response_row_per_prompt(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model="gpt-4o-mini")
    await api.wait_final(headers, created["id"])
    async with api.sessions() as session:
        rows = (
            await session.scalars(
                select(PromptResponse).where(PromptResponse.prompt_id == uuid.UUID(created["id"]))
            )
        ).all()
    assert len(rows) == 1


async def test_keys_never_reach_the_database(api: Api):
    headers = await api.new_user()
    user_key = headers["Authorization"].removeprefix("Bearer ")
    created = await api.submit(headers, model="openai/error-401")
    await api.wait_final(headers, created["id"])
    async with api.sessions() as session:
        dump = []
        for table in ("api_keys", "prompt_requests", "prompt_attempts", "prompt_responses"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()
            dump.extend(str(value) for row in rows for value in row)
    everything = "\n".join(dump)
    assert user_key not in everything
    assert MOCK_API_KEY not in everything
