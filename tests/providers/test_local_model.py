"""The bundled local model, for real: SmolLM2-135M through llama.cpp, offline, on the CPU."""

from __future__ import annotations

from app.providers.local import bundled_model_path
from tests.conftest import Api


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
