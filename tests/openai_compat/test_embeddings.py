"""/v1/embeddings through the official `openai` SDK, on OpenAI, Gemini and the bundled local
model: the vectors (as the SDK's default base64, and as floats), the prompt each call leaves in
/ai/prompts (type `embedding`, tokens, cost), and the refusals, which record nothing."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest

from app.db.base import utcnow
from app.engine.embedding_prompts import embedding_parameters, stored_text
from tests.mocks.gemini_server import MockGemini
from tests.mocks.openai_server import MockOpenAI, mock_vector
from tests.openai_compat.conftest import V1
from tests.records import openai_prompt, seed

LOCAL_DIMENSIONS = 576  # SmolLM2-135M's hidden size


async def _prompts(v1: V1, headers: dict[str, str]) -> list[dict[str, Any]]:
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    items: list[dict[str, Any]] = page["items"]
    return items


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _price(v1: V1, model: str, tokens: int) -> Decimal:
    entry = v1.api.app.state.services.models.catalogue.get(model)
    return entry.input * tokens / 10**6


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def _unique(text: str) -> str:
    return f"{text} {time.monotonic_ns()}"


@pytest.mark.parametrize(
    ("model", "provider", "dimensions"),
    [
        ("text-embedding-3-small", "openai", 1536),
        ("gemini-embedding-001", "gemini", 3072),
        ("local-embedding", "local", LOCAL_DIMENSIONS),
    ],
)
async def test_a_string_with_the_sdks_defaults_on_each_provider(
    v1: V1, model: str, provider: str, dimensions: int
):
    """The SDK asks for base64 when no format is given, and decodes the vectors itself."""
    key, headers = await v1.user()
    text = _unique(f"Embed me on {provider} ✓")
    async with v1.client(key) as client:
        raw = await client.embeddings.with_raw_response.create(model=model, input=text)
    answer = raw.parse()
    prompt_id = raw.headers["x-prompt-id"]

    assert answer.object == "list" and answer.model == model
    [item] = answer.data
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == dimensions
    assert math.isclose(math.sqrt(sum(v * v for v in item.embedding)), 1.0, rel_tol=1e-3)
    if provider != "local":
        assert item.embedding == mock_vector(text, dimensions)  # passed on exactly
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens

    prompt = await v1.prompt(headers, prompt_id)
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["prompt_type"] == "embedding"
    assert prompt["model"] == model and prompt["provider"] == provider
    assert prompt["prompt_text"] == text
    assert prompt["parameters"] == {
        "operation": "embeddings",
        "model": model,
        "input_count": 1,
        "input_lengths": [len(text)],
        "encoding_format": "base64",
    }
    response = prompt["response"]
    assert response["response_text"] == f"1 embedding of {dimensions} dimensions"
    assert response["input_tokens"] == answer.usage.prompt_tokens
    assert response["output_tokens"] == 0
    # The Gemini API reports no usage for embeddings: estimated, and said so.
    assert response["usage_estimated"] is (provider == "gemini")
    assert Decimal(response["cost_usd"]) == _price(v1, model, answer.usage.prompt_tokens)
    [attempt] = prompt["attempts"]
    assert attempt["outcome"] == "success" and attempt["provider"] == provider
    assert attempt["input_tokens"] == response["input_tokens"] and attempt["output_tokens"] == 0
    assert attempt["cost_usd"] == response["cost_usd"]


@pytest.mark.parametrize(
    ("model", "provider"),
    [("text-embedding-3-large", "openai"), ("gemini-embedding-001", "gemini")],
)
async def test_a_list_with_dimensions_as_floats_and_as_base64(
    v1: V1, request: pytest.FixtureRequest, model: str, provider: str
):
    key, headers = await v1.user()
    texts = [_unique("first"), "second text\nwith a line feed", "third"]
    mock: MockOpenAI | MockGemini = request.getfixturevalue(f"mock_{provider}")
    before = len(mock.calls)
    async with v1.client(key) as client:
        floats = await client.embeddings.create(
            model=model, input=texts, dimensions=256, encoding_format="float", user="end-user-9"
        )
        encoded = await client.embeddings.create(
            model=model, input=texts, dimensions=256, encoding_format="base64"
        )
    expected = [mock_vector(text, 256) for text in texts]
    assert [item.index for item in floats.data] == [0, 1, 2]
    assert [item.embedding for item in floats.data] == expected
    # Asked for explicitly, base64 is left to the caller to decode (as OpenAI sends it).
    assert all(isinstance(item.embedding, str) for item in encoded.data)
    assert [_floats(item.embedding) for item in encoded.data] == expected  # type: ignore[arg-type]

    # One upstream call each, the dimensions forwarded.
    calls = mock.calls[before:]
    assert len(calls) == 2
    if provider == "openai":
        assert calls[0].path == "/v1/embeddings"
        assert calls[0].body["input"] == texts and calls[0].body["dimensions"] == 256
        assert calls[0].body["user"] == "end-user-9"
        assert calls[0].body["encoding_format"] == "base64"  # what the gateway asks for
    else:
        assert calls[0].path.endswith(":batchEmbedContents")
        assert [r["outputDimensionality"] for r in calls[0].body["requests"]] == [256] * 3

    [second, first] = await _prompts(v1, headers)
    assert first["prompt_text"] == "\n".join(texts)
    detail = await v1.prompt(headers, first["id"])
    parameters = detail["parameters"]
    assert parameters["input_count"] == 3 and parameters["dimensions"] == 256
    assert parameters["encoding_format"] == "float" and parameters["user"] == "end-user-9"
    assert detail["response"]["response_text"] == "3 embeddings of 256 dimensions"
    assert (await v1.prompt(headers, second["id"]))["parameters"]["encoding_format"] == "base64"


async def test_the_local_model_embeds_offline(v1: V1):
    """The bundled model's own server for embeddings: one vector per input, unit length, the
    same text the same vector (to float rounding: batched with others or not), a different
    text another."""
    key, headers = await v1.user()
    texts = ["The cat sat on the mat.", "A database stores rows.", "The cat sat on the mat."]
    async with v1.client(key) as client:
        answer = await client.embeddings.create(
            model="local-embedding", input=texts, encoding_format="float"
        )
        alone = await client.embeddings.create(model="local-embedding", input=texts[0])
    vectors = [item.embedding for item in answer.data]
    assert [len(v) for v in vectors] == [LOCAL_DIMENSIONS] * 3
    assert _cosine(vectors[0], vectors[2]) > 0.9999
    assert _cosine(vectors[0], alone.data[0].embedding) > 0.9999
    assert _cosine(vectors[0], vectors[1]) < 0.95
    [_, prompt] = await _prompts(v1, headers)
    assert prompt["status"] == "completed" and prompt["provider"] == "local"
    detail = await v1.prompt(headers, prompt["id"])
    assert detail["response"]["usage_estimated"] is False
    assert detail["response"]["input_tokens"] == answer.usage.prompt_tokens > 3
    assert Decimal(detail["response"]["cost_usd"]) == 0


async def test_an_input_too_long_for_the_local_model_is_refused_by_it(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.embeddings.create(model="local-embedding", input="word " * 1000)
    assert raised.value.code == "context_length_exceeded"
    [prompt] = await _prompts(v1, headers)
    assert prompt["status"] == "failed"
    detail = await v1.prompt(headers, prompt["id"])
    assert [a["error_code"] for a in detail["attempts"]] == ["context_length_exceeded"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "text-embedding-3-small", "input": []}, "validation_error", "input"),
        ({"model": "text-embedding-3-small", "input": ""}, "validation_error", "input"),
        ({"model": "text-embedding-3-small", "input": ["a", ""]}, "validation_error", "input"),
        ({"model": "text-embedding-3-small", "input": ["a"] * 2049}, "validation_error", "input"),
        ({"model": "text-embedding-3-small", "input": ["a\u0000"]}, "invalid_text", "input"),
        ({"model": "text-embedding-3-small", "input": [1, 2, 3]}, "unsupported_parameter", "input"),
        ({"model": "text-embedding-3-small", "input": [[1, 2]]}, "unsupported_parameter", "input"),
        ({"model": "gpt-4o-mini", "input": "hi"}, "model_not_supported", "model"),
        ({"model": "claude-haiku-4-5", "input": "hi"}, "model_not_supported", "model"),
        ({"model": "anthropic/voyage-3", "input": "hi"}, "model_not_supported", "model"),
        (
            {"model": "local-embedding", "input": "hi", "dimensions": 64},
            "unsupported_parameter",
            "dimensions",
        ),
        (
            {"model": "text-embedding-3-small", "input": "hi", "encoding_format": "hex"},
            "validation_error",
            "encoding_format",
        ),
        ({"model": "text-embedding-3-small", "input": "x" * 100_001}, "prompt_too_large", "input"),
    ],
)
async def test_bad_input_is_a_400_and_records_nothing(
    v1: V1, mock_openai: MockOpenAI, body: dict[str, Any], code: str, param: str
):
    key, headers = await v1.user()
    before = len(mock_openai.calls)
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.post("/embeddings", body=body, cast_to=object)
    assert raised.value.status_code == 400
    assert raised.value.code == code and raised.value.param == param, raised.value.message
    assert await _prompts(v1, headers) == []
    assert len(mock_openai.calls) == before


async def test_refusals_name_the_embedding_models(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as chat_model:
            await client.embeddings.create(model="gpt-4o-mini", input="hi")
        with pytest.raises(openai.BadRequestError) as anthropic:
            await client.embeddings.create(model="anthropic/voyage-3", input="hi")
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.embeddings.create(model="text-embedding-3-smal", input="hi")
    assert "'gpt-4o-mini' is a chat model" in chat_model.value.message
    assert "text-embedding-3-small" in chat_model.value.message
    assert "anthropic provider has no embeddings API" in anthropic.value.message
    assert unknown.value.code == "model_not_found"


async def test_an_embedding_model_cannot_chat(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="text-embedding-3-small", messages=[{"role": "user", "content": "hi"}]
            )
    assert raised.value.code == "model_not_supported" and raised.value.param == "model"
    assert "embedding model" in raised.value.message
    response = await v1.api.client.post(
        "/ai/prompts/",
        json={"model": "gemini-embedding-001", "prompt_type": "text", "prompt_text": "hi"},
        headers=headers,
    )
    assert response.status_code == 422 and response.json()["code"] == "model_not_supported"
    response = await v1.api.client.post(
        "/ai/prompts/",
        json={
            "model": "gpt-4o-mini",
            "prompt_type": "text",
            "prompt_text": "hi",
            "fallbacks": ["local-embedding"],
        },
        headers=headers,
    )
    assert response.status_code == 422 and response.json()["code"] == "model_not_supported"
    assert response.json()["parameter"] == "fallbacks"
    assert await _prompts(v1, headers) == []


async def test_an_upstream_rate_limit_is_answered_as_for_a_chat(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    model = f"error-429-no-retry-after-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.embeddings.create(model=f"openai/{model}", input=["a", "b"])
    assert raised.value.status_code == 429 and raised.value.code == "rate_limited"
    assert "after 3 provider calls" in raised.value.message
    assert len(mock_openai.calls_for(model)) == 3  # the first call and RETRY_MAX_RETRIES more
    prompt_id = raised.value.response.headers["x-prompt-id"]
    prompt = await v1.prompt(headers, prompt_id)
    assert prompt["status"] == "failed" and prompt["error"]["code"] == "rate_limited"
    assert prompt["prompt_type"] == "embedding"
    assert [a["http_status"] for a in prompt["attempts"]] == [429, 429, 429]
    assert all(a["outcome"] == "error" for a in prompt["attempts"])


async def test_a_flaky_upstream_is_retried(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    model = f"flaky-1-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        answer = await client.embeddings.create(model=f"openai/{model}", input="hello")
    assert answer.data[0].embedding == mock_vector("hello", 1536)
    [prompt] = await _prompts(v1, headers)
    detail = await v1.prompt(headers, prompt["id"])
    assert [a["outcome"] for a in detail["attempts"]] == ["error", "success"]
    # Outside the catalogue: no price, so a cost of 0.
    assert Decimal(detail["response"]["cost_usd"]) == 0


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fixed-8", 400, "bad_request"),  # a server that ignores `dimensions`
        ("short", 502, "malformed_response"),
        ("malformed", 502, "malformed_response"),
    ],
)
async def test_answers_that_are_not_what_was_asked_fail_the_prompt(
    v1: V1, model: str, status: int, code: str
):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.embeddings.create(
                model=f"openai/{model}-{time.monotonic_ns()}", input=["a", "b"], dimensions=16
            )
    assert (raised.value.status_code, raised.value.code) == (status, code)
    [prompt] = await _prompts(v1, headers)
    assert prompt["status"] == "failed"


@pytest.mark.parametrize("model", ["shuffled", "floats", "no-usage"])
async def test_compatible_servers_variations_are_read(v1: V1, model: str):
    key, headers = await v1.user()
    texts = ["one", "two words", "three more words"]
    async with v1.client(key) as client:
        answer = await client.embeddings.create(
            model=f"openai/{model}-{time.monotonic_ns()}", input=texts, dimensions=32
        )
    assert [item.embedding for item in answer.data] == [mock_vector(t, 32) for t in texts]
    [prompt] = await _prompts(v1, headers)
    detail = await v1.prompt(headers, prompt["id"])
    assert detail["response"]["usage_estimated"] is (model == "no-usage")


async def test_models_lists_the_embedding_models(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        models = {model.id: model for model in (await client.models.list()).data}
    for name in ("text-embedding-3-small", "text-embedding-3-large", "gemini-embedding-001"):
        assert models[name].model_extra["capabilities"] == ["embeddings"]  # type: ignore[index]
    assert "local-embedding" in models


async def _final(v1: V1, headers: dict[str, str], prompt_id: str) -> dict[str, Any]:
    for _ in range(500):
        prompt = await v1.prompt(headers, prompt_id)
        if prompt["status"] not in ("pending", "running"):
            return prompt
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} is still {prompt['status']}")


async def test_a_client_that_gives_up_cancels_the_call(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    model = f"hang-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.embeddings.create(model=f"openai/{model}", input="hi", timeout=0.5)
    [item] = await _prompts(v1, headers)
    prompt = await _final(v1, headers, item["id"])
    assert prompt["status"] == "cancelled" and prompt["response"] is None
    [attempt] = prompt["attempts"]
    assert attempt["outcome"] == "cancelled"
    assert len(mock_openai.calls_for(model)) == 1


async def test_cancelling_the_prompt_answers_409(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        call = asyncio.create_task(
            client.embeddings.create(model=f"openai/hang-{time.monotonic_ns()}", input="hi")
        )
        while not (items := await _prompts(v1, headers)):
            await asyncio.sleep(0.02)
        cancelled = await v1.api.client.post(
            f"/ai/prompts/{items[0]['id']}/cancel", headers=headers
        )
        assert cancelled.status_code in (200, 202), cancelled.text
        with pytest.raises(openai.ConflictError) as raised:
            await call
    assert raised.value.code == "prompt_cancelled"
    assert raised.value.response.headers["x-prompt-id"] == items[0]["id"]
    prompt = await _final(v1, headers, items[0]["id"])
    assert prompt["status"] == "cancelled"
    assert [a["outcome"] for a in prompt["attempts"]] == ["cancelled"]


async def test_an_embedding_prompt_handed_back_is_run_by_any_runner(v1: V1):
    """A prompt whose process was lost before it ran goes back to `pending`, and the sweeper
    has any runner (the embedded one, or a Celery worker) run it: as an embedding, not a chat."""
    texts = ["one", "two\nlines"]
    parameters = embedding_parameters(
        model="text-embedding-3-small",
        inputs=texts,
        encoding_format="float",
        dimensions=8,
        user=None,
    )
    old = utcnow() - timedelta(seconds=30)  # due for redispatch at the sweeper's next pass
    headers = await seed(
        v1.api.sessions,
        [
            openai_prompt(
                "text-embedding-3-small",
                model="text-embedding-3-small",
                prompt_type="embedding",
                prompt_text=stored_text(texts),
                parameters=parameters,
                created_at=old,
            )
        ],
    )
    [item] = await _prompts(v1, headers)
    prompt = await _final(v1, headers, item["id"])
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["response"]["response_text"] == "2 embeddings of 8 dimensions"
    assert Decimal(prompt["response"]["cost_usd"]) == _price(
        v1, "text-embedding-3-small", prompt["response"]["input_tokens"]
    )
