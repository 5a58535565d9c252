"""The same prompt through every vendor's real SDK, each against its own wire-level mock:
what the user sees (status, text, tokens, cost) and what each vendor saw (its own key only)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import Api
from tests.mocks import anthropic_server, gemini_server, openai_server
from tests.prompts.test_validation import VALID, assert_problem

KEYS = {
    "openai": openai_server.MOCK_API_KEY,
    "gemini": gemini_server.MOCK_API_KEY,
    "anthropic": anthropic_server.MOCK_API_KEY,
}


def _mock(request: pytest.FixtureRequest, provider: str) -> Any:
    return request.getfixturevalue(f"mock_{provider}")


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4.1-nano"), ("gemini", "gemini-2.5-flash"), ("anthropic", "claude-haiku-4-5")],
)
async def test_a_catalogue_model_on_each_provider(
    api: Api, request: pytest.FixtureRequest, provider: str, model: str
):
    mock = _mock(request, provider)
    headers = await api.new_user()
    text = f"Exact text for {provider}: ünïcode ✓ {time.monotonic_ns()}"
    before = len(mock.calls)
    created = await api.submit(
        headers, model=model, prompt_text=text, system_prompt="Be brief.", max_tokens=50
    )
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed", done["error"]
    assert done["provider"] == provider
    answer = done["response"]
    assert answer["response_text"] == f"echo: {text}"
    assert answer["input_tokens"] > 0 and answer["output_tokens"] > 0
    assert answer["usage_estimated"] is False
    entry = api.app.state.services.models.catalogue.get(model)
    expected = (
        entry.input * answer["input_tokens"] + entry.output * answer["output_tokens"]
    ) / 10**6
    assert Decimal(answer["cost_usd"]) == expected
    assert answer["catalogue_version"] == api.app.state.services.models.catalogue.version

    [call] = mock.calls[before:]
    seen = " ".join(call.headers.values())
    assert KEYS[provider] in seen
    assert all(key not in seen for name, key in KEYS.items() if name != provider)
    assert text in str(call.body)  # the stored prompt, unchanged, reached the vendor
    assert "Be brief." in str(call.body)


async def test_anthropic_refuses_a_temperature_at_submission(api: Api):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/",
        json={**VALID, "model": "claude-haiku-4-5", "temperature": 0.5},
        headers=headers,
    )
    body = assert_problem(response, 422, "unsupported_parameter")
    assert body["parameter"] == "temperature" and "anthropic" in body["detail"]
    # And as a fallback too: the whole chain must be able to honour the request.
    response = await api.client.post(
        "/ai/prompts/",
        json={**VALID, "temperature": 0.5, "fallbacks": ["claude-haiku-4-5"]},
        headers=headers,
    )
    assert_problem(response, 422, "unsupported_parameter")


@pytest.mark.parametrize(
    ("provider", "failing", "code"),
    [
        ("gemini", "error-503-no-retry-after", "provider_unavailable"),
        ("anthropic", "error-529-no-retry-after", "provider_unavailable"),
        ("gemini", "error-429-no-retry-after", "rate_limited"),
        ("anthropic", "error-401", "authentication_failed"),
    ],
)
async def test_failures_are_the_same_codes_on_every_provider(
    api: Api, request: pytest.FixtureRequest, provider: str, failing: str, code: str
):
    mock = _mock(request, provider)
    headers = await api.new_user()
    before = len(mock.calls_for(failing))
    created = await api.submit(headers, model=f"{provider}/{failing}")
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "failed" and done["error"]["code"] == code
    assert KEYS[provider] not in done["error"]["message"]
    calls = len(done["attempts"])
    assert len(mock.calls_for(failing)) == before + calls
    assert calls == (1 if code == "authentication_failed" else 3)


async def test_fallback_across_vendors(api: Api, mock_gemini: Any):
    headers = await api.new_user()
    rescue = f"rescue-{time.monotonic_ns()}"
    created = await api.submit(
        headers, model="anthropic/error-500", fallbacks=[f"gemini/{rescue}"], prompt_text="hi"
    )
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert done["response"]["provider"] == "gemini"
    assert [a["provider"] for a in done["attempts"]] == ["anthropic"] * 3 + ["gemini"]
    assert len(mock_gemini.calls_for(rescue)) == 1
