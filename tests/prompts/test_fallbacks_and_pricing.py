"""Fallbacks, the circuit breaker, named OpenAI-compatible servers, per-provider parameter
checks, and costs with the catalogue version they were computed with."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

from tests.conftest import Api, make_settings, migrate, running_api
from tests.mocks.openai_server import MOCK_API_KEY, OTHER_API_KEY, MockOpenAI
from tests.prompts.test_validation import VALID, assert_problem


def _unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


async def test_retryable_failure_moves_to_the_fallback(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    rescue = _unique("rescue")
    created = await api.submit(
        headers, model="openai/error-500", fallbacks=[f"backup/{rescue}"], prompt_text="help"
    )
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert done["response"]["response_text"] == "echo: help"
    assert done["response"]["provider"] == "backup"
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
        ("openai", "error"),
        ("openai", "error"),
        ("openai", "error"),
        ("backup", "success"),
    ]
    assert done["parameters"]["fallbacks"] == [f"backup/{rescue}"]
    # Each server got its own key, never the other's.
    [call] = mock_openai.calls_for(rescue)
    assert call.headers["Authorization"] == f"Bearer {OTHER_API_KEY}"
    assert all(
        c.headers["Authorization"] == f"Bearer {MOCK_API_KEY}"
        for c in mock_openai.calls_for("error-500")
    )


async def test_a_bad_request_does_not_fall_back(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    unused = _unique("unused")
    created = await api.submit(headers, model="openai/error-400", fallbacks=[f"backup/{unused}"])
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "bad_request"
    assert len(done["attempts"]) == 1
    assert mock_openai.calls_for(unused) == []


async def test_an_authentication_failure_falls_back_without_retrying(api: Api):
    headers = await api.new_user()
    created = await api.submit(
        headers, model="openai/error-401", fallbacks=[f"backup/{_unique('ok')}"]
    )
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert [a["outcome"] for a in done["attempts"]] == ["error", "success"]


async def test_fallbacks_are_checked_at_submission(api: Api):
    headers = await api.new_user()
    for fallbacks, code in [
        (["gpt-4o-mni"], "unknown_model"),
        (["mistral/large"], "unknown_model"),
        ([f"backup/m{i}" for i in range(6)], "validation_error"),
    ]:
        response = await api.client.post(
            "/ai/prompts/", json={**VALID, "fallbacks": fallbacks}, headers=headers
        )
        assert_problem(response, 422, code)


async def test_a_provider_without_its_key_is_named_with_the_fix(
    tmp_path: Path, mock_openai: MockOpenAI
):
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-gemini.db'}"
    await migrate(url)
    async with running_api(make_settings(url, mock_openai)) as api:
        headers = await api.new_user()
        for body in (
            {**VALID, "model": "gemini-2.5-flash"},
            {**VALID, "fallbacks": ["claude-haiku-4-5"]},
        ):
            response = await api.client.post("/ai/prompts/", json=body, headers=headers)
            problem = assert_problem(response, 422, "provider_not_configured")
            assert "_API_KEY" in problem["detail"]
        models = (await api.client.get("/ai/models/", headers=headers)).json()
        assert {m["provider"] for m in models["models"]} == {"openai", "local"}


async def test_parameters_a_model_cannot_honour_are_refused(api: Api):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/",
        json={**VALID, "model": "gpt-4o-mini", "max_tokens": 20_000},
        headers=headers,
    )
    body = assert_problem(response, 422, "unsupported_parameter")
    assert body["parameter"] == "max_tokens" and "16384" in body["detail"]


async def test_cost_uses_the_catalogue_price_and_cached_tokens(api: Api):
    headers = await api.new_user()
    catalogue = api.app.state.services.models.catalogue
    created = await api.submit(
        headers, model="openai/cached-2-gpt-4o-mini", prompt_text="one two three four"
    )
    done = await api.wait_final(headers, created["id"])
    # Outside the catalogue (the upstream name differs): cost 0 and no catalogue version.
    assert Decimal(done["response"]["cost_usd"]) == 0
    assert done["response"]["catalogue_version"] is None

    created = await api.submit(headers, model="gpt-4o-mini", prompt_text="one two three")
    done = await api.wait_final(headers, created["id"])
    [attempt] = done["attempts"]
    assert attempt["catalogue_version"] == catalogue.version
    assert done["response"]["catalogue_version"] == catalogue.version
    assert Decimal(attempt["cost_usd"]) == Decimal(done["response"]["cost_usd"]) > 0


async def test_the_circuit_opens_fails_fast_and_recovers(tmp_path: Path, mock_openai: MockOpenAI):
    url = f"sqlite+aiosqlite:///{tmp_path / 'breaker.db'}"
    await migrate(url)
    settings = make_settings(
        url, mock_openai, circuit_failure_threshold=2, circuit_cooldown_seconds=1.0
    )
    async with running_api(settings) as api:
        headers = await api.new_user()
        first = await api.submit(headers, model="openai/error-503-no-retry-after")
        done = await api.wait_final(headers, first["id"])
        # Two failures open the circuit; the third call is never made.
        assert done["status"] == "failed" and done["error"]["code"] == "circuit_open"
        assert len(done["attempts"]) == 2

        healthy = _unique("healthy")
        blocked = await api.submit(
            headers, model=f"openai/{healthy}", fallbacks=[f"backup/{healthy}"]
        )
        done = await api.wait_final(headers, blocked["id"])
        assert done["status"] == "completed" and done["response"]["provider"] == "backup"
        assert [a["provider"] for a in done["attempts"]] == ["backup"]  # openai not even tried

        await asyncio.sleep(1.1)
        probe = await api.submit(headers, model=f"openai/{_unique('probe')}")
        done = await api.wait_final(headers, probe["id"])
        assert done["status"] == "completed" and done["response"]["provider"] == "openai"


async def test_models_lists_what_this_server_can_run(api: Api):
    headers = await api.new_user()
    response = await api.client.get("/ai/models/", headers=headers)
    assert response.status_code == 200
    body = response.json()
    names = {m["name"] for m in body["models"]}
    assert {"local", "gpt-4o-mini", "gpt-4.1-nano"} <= names
    assert {"claude-haiku-4-5", "gemini-2.5-flash"} <= names
    assert set(body["providers"]) == {"openai", "backup", "gemini", "anthropic", "local"}
    mini = next(m for m in body["models"] if m["name"] == "gpt-4o-mini")
    assert Decimal(mini["input_price"]) == Decimal("0.15")
    assert body["catalogue_version"] == api.app.state.services.models.catalogue.version
    assert "backup" in body["providers"]
    assert_problem(await api.client.get("/ai/models/"), 401, "missing_api_key")
