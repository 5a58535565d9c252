"""A provider error ends the prompt `failed` with a stable code and a useful message."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI


@pytest.mark.parametrize(
    ("model", "code", "http_status"),
    [
        ("error-401", "authentication_failed", 401),
        ("error-429", "rate_limited", 429),
        ("error-500", "provider_unavailable", 500),
        ("error-404", "bad_request", 404),
        ("context-length", "context_length_exceeded", 400),
    ],
)
async def test_provider_error_fails_the_prompt_with_its_code(
    api: Api, mock_openai: MockOpenAI, model: str, code: str, http_status: int
):
    headers = await api.new_user()
    before = len(mock_openai.calls_for(model))
    created = await api.submit(headers, model=f"openai/{model}")
    done = await api.wait_final(headers, created["id"])

    assert done["status"] == "failed"
    assert done["response"] is None
    assert done["error"]["code"] == code
    assert done["error"]["message"]
    assert MOCK_API_KEY not in done["error"]["message"]
    assert "Traceback" not in done["error"]["message"]
    [attempt] = done["attempts"]
    assert attempt["outcome"] == "error"
    assert attempt["error_code"] == code
    assert attempt["http_status"] == http_status
    # The SDK's own retries are off: one provider call, one attempt row.
    assert len(mock_openai.calls_for(model)) == before + 1
