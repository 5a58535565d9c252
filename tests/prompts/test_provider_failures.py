"""A provider error ends the prompt `failed` with a stable code and a useful message, after
the gateway's own retries for the retryable ones, with every call on the record."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Api
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI


@pytest.mark.parametrize(
    ("model", "code", "http_status", "calls"),
    [
        ("error-401", "authentication_failed", 401, 1),
        ("error-400", "bad_request", 400, 1),
        ("error-404", "bad_request", 404, 1),
        ("context-length", "context_length_exceeded", 400, 1),
        # Retryable: the first call and RETRY_MAX_RETRIES (2) more.
        ("error-429-no-retry-after", "rate_limited", 429, 3),
        ("error-500", "provider_unavailable", 500, 3),
        ("error-503-no-retry-after", "provider_unavailable", 503, 3),
        ("malformed", "malformed_response", None, 3),
        ("reset", "connection_error", None, 3),
    ],
)
async def test_provider_error_fails_the_prompt_with_its_code(
    api: Api, mock_openai: MockOpenAI, model: str, code: str, http_status: int | None, calls: int
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
    # One attempt row per provider call, and exactly as many calls reached the provider:
    # the SDK's own retries are off, the gateway's loop is the only one.
    assert len(done["attempts"]) == calls
    assert len(mock_openai.calls_for(model)) == before + calls
    for attempt in done["attempts"]:
        assert attempt["outcome"] == "error"
        assert attempt["error_code"] == code
        assert attempt["http_status"] == http_status
    if calls > 1:
        assert f"after {calls} provider calls" in done["error"]["message"]


async def test_a_flaky_provider_is_retried_until_it_answers(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    model = f"flaky-2-{time.monotonic_ns()}"
    created = await api.submit(headers, model=f"openai/{model}", prompt_text="third time")
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"
    assert done["response"]["response_text"] == "echo: third time"
    assert [a["outcome"] for a in done["attempts"]] == ["error", "error", "success"]
    assert [a["http_status"] for a in done["attempts"]] == [503, 503, None]
    assert len(mock_openai.calls_for(model)) == 3


async def test_retry_after_is_honoured(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    model = f"retry-after-1-{time.monotonic_ns()}"
    started = time.monotonic()
    created = await api.submit(headers, model=f"openai/{model}")
    done = await api.wait_final(headers, created["id"])
    elapsed = time.monotonic() - started
    assert done["status"] == "failed" and done["error"]["code"] == "rate_limited"
    assert len(done["attempts"]) == 3
    assert elapsed >= 2.0  # two waits of the Retry-After's one second


async def test_a_retry_after_beyond_the_cap_is_not_waited_for(api: Api):
    headers = await api.new_user()
    cap = api.app.state.settings.retry_after_cap_seconds
    model = f"retry-after-{int(cap) + 100}-{time.monotonic_ns()}"
    started = time.monotonic()
    created = await api.submit(headers, model=f"openai/{model}")
    done = await api.wait_final(headers, created["id"])
    assert time.monotonic() - started < cap
    assert done["status"] == "failed" and done["error"]["code"] == "rate_limited"
    assert len(done["attempts"]) == 1


async def test_a_hanging_provider_times_out(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model="openai/hang", timeout_seconds=0.3)
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "timeout"
    assert len(done["attempts"]) == 3
