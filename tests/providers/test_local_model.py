"""The bundled local model, for real: SmolLM2-135M through llama.cpp, offline, on the CPU."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.providers.base import CompletionRequest
from app.providers.catalogue import load_catalogue
from app.providers.local import LOCAL_MODEL_NAME, LocalProvider, bundled_model_path
from app.providers.registry import build_providers
from tests.conftest import Api, make_settings

# The documented defaults (README, LOCAL_MODEL_*): llama.cpp's own are 0.8, 1.0 (no penalty)
# and an 8 GiB prompt cache, and the local model used to stop at 256 tokens.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_REPEAT_PENALTY = 1.15
DEFAULT_MAX_TOKENS = 128


def test_the_model_file_ships_with_the_install():
    path = bundled_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


async def test_local_prompt_gets_real_generated_text(api: Api):
    headers = await api.new_user()
    created = await api.submit(
        headers, model="local", prompt_text="What is the capital of France?", max_tokens=16
    )
    assert created["provider"] == "local"
    done = await api.wait_final(headers, created["id"], timeout=60)
    assert done["status"] == "completed", done["error"]
    answer = done["response"]
    assert answer["response_text"].strip()
    assert answer["usage_estimated"] is False
    assert 0 < answer["output_tokens"] <= 16 and answer["input_tokens"] > 5
    assert answer["upstream_model"] == "smollm2-135m-instruct"
    assert float(answer["cost_usd"]) == 0


def _degenerate(text: str) -> bool:
    """What a runaway small model produces: one character over and over ("Hiiiiii…", the same
    emoji 200 times), or a wall of symbols with hardly a word in it."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return True
    longest_run = max(len(list(run)) for _, run in itertools.groupby(text))
    return longest_run >= 6 or sum(c.isalpha() for c in visible) < len(visible) / 2


async def test_say_hello_with_the_defaults_gets_a_short_sane_answer(api: Api):
    """The README's first prompt, with nothing but the text. With llama.cpp's sampling
    defaults about one answer in eight was 256 tokens of a repeated emoji; now each answer
    ends within the default max_tokens and none is such a wall."""
    headers = await api.new_user()
    created = [
        await api.submit(headers, model="local", prompt_type="text", prompt_text="Say hello")
        for _ in range(6)
    ]
    answers = []
    for prompt in created:
        done = await api.wait_final(headers, prompt["id"], timeout=180)
        assert done["status"] == "completed", done["error"]
        answers.append(done["response"])
    for answer in answers:
        text = answer["response_text"]
        assert text.strip()
        assert 0 < answer["output_tokens"] <= DEFAULT_MAX_TOKENS, answer
        # A long answer that is still words is fine; a loop cut off by the limit is not.
        assert answer["finish_reason"] == "stop" or not _degenerate(text), answer
    assert sum(answer["finish_reason"] == "stop" for answer in answers) >= len(answers) // 2


@pytest.fixture
async def local() -> AsyncIterator[LocalProvider]:
    """The local provider exactly as the app builds it from its default settings."""
    provider = build_providers(make_settings("sqlite+aiosqlite://"), load_catalogue())["local"]
    assert isinstance(provider, LocalProvider)
    try:
        yield provider
    finally:
        await provider.aclose()


async def _llama(provider: LocalProvider, path: str) -> Any:
    """GET one of llama.cpp's own endpoints (with the server's per-process key)."""
    server = provider.server
    address = await server.address()
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{address}{path}", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def _last_task_params(provider: LocalProvider) -> dict[str, Any]:
    """The sampling llama.cpp used for the most recent generation (from `/slots`)."""
    slots = [slot for slot in await _llama(provider, "/slots") if "id_task" in slot]
    params: dict[str, Any] = max(slots, key=lambda slot: slot["id_task"])["params"]
    return params


def _ask(text: str, **values: Any) -> CompletionRequest:
    return CompletionRequest(
        model=LOCAL_MODEL_NAME, messages=[{"role": "user", "content": text}], **values
    )


async def test_llama_cpp_starts_with_our_sampling_defaults(local: LocalProvider):
    await local.complete(_ask("Hi", max_tokens=1))  # starts the server
    defaults = (await _llama(local, "/props"))["default_generation_settings"]["params"]
    assert defaults["temperature"] == pytest.approx(DEFAULT_TEMPERATURE)
    assert defaults["repeat_penalty"] == pytest.approx(DEFAULT_REPEAT_PENALTY)


async def test_a_requests_own_values_win_over_the_defaults(local: LocalProvider):
    mine = await local.complete(_ask("Count from one to twenty.", temperature=1.3, max_tokens=5))
    assert 0 < mine.output_tokens <= 5
    used = await _last_task_params(local)
    assert used["temperature"] == pytest.approx(1.3)
    assert used["n_predict"] == 5
    # Not an OpenAI field: the server's default applies to every request.
    assert used["repeat_penalty"] == pytest.approx(DEFAULT_REPEAT_PENALTY)

    plain = await local.complete(_ask("Say hi"))
    assert 0 < plain.output_tokens <= DEFAULT_MAX_TOKENS
    used = await _last_task_params(local)
    assert used["temperature"] == pytest.approx(DEFAULT_TEMPERATURE)
    assert used["n_predict"] == DEFAULT_MAX_TOKENS


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_distinct_prompts_do_not_grow_memory_past_the_cache_limit():
    """llama.cpp keeps each finished prompt's KV state (about 22 KB a token here) in its
    prompt cache, inside this process. Under its own 8 GiB limit, 8 distinct prompts of 150
    tokens grew the process by 27 MB and every further one added 3.3 MB; with
    LOCAL_MODEL_CACHE_MIB=4 the process does not grow at all once the cache is full."""
    settings = make_settings("sqlite+aiosqlite://", local_model_cache_mib=4)
    provider = build_providers(settings, load_catalogue())["local"]
    assert isinstance(provider, LocalProvider)
    filler = " ".join(f"item{n}" for n in range(40))  # 150 tokens with the chat template

    async def ask(i: int) -> None:
        request = _ask(f"Prompt {i}. Which item comes last? {filler} {i}", max_tokens=1)
        await provider.complete(request)

    try:
        for i in range(3):  # the model loaded, both slots' context pages touched, cache full
            await ask(i)
        before = _rss_mb()
        for i in range(3, 11):
            await ask(i)
        await asyncio.sleep(0.2)
        grown = _rss_mb() - before
    finally:
        await provider.aclose()
    assert grown < 10, f"RSS grew by {grown:.1f} MB over 8 distinct prompts"
