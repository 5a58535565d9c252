"""With the broker unreachable the API keeps answering 202 (the row is safe), says so on
/readyz, and does not make every request wait for a connect timeout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import make_settings, migrate, running_api
from tests.mocks.openai_server import MockOpenAI


async def test_submissions_are_accepted_while_the_broker_is_down(
    tmp_path: Path, mock_openai: MockOpenAI
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    url = f"sqlite+aiosqlite:///{tmp_path / 'nobroker.db'}"
    await migrate(url)
    settings = make_settings(
        url, mock_openai, celery_broker_url=f"redis://127.0.0.1:{closed_port}/0"
    )
    async with running_api(settings) as api:
        headers = await api.new_user()
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["code"] == "not_ready" and body["checks"]["database"] == "ok"
        assert body["checks"]["broker"].startswith("unreachable")

        ids, durations = [], []
        for _ in range(5):
            started = time.monotonic()
            created = await api.submit(headers, model="gpt-4o-mini")
            durations.append(time.monotonic() - started)
            ids.append(created["id"])
        # Only the first request paid for discovering the outage.
        assert max(durations[1:]) < 0.5, durations
        for prompt_id in ids:
            detail = (await api.client.get(f"/ai/prompts/{prompt_id}", headers=headers)).json()
            assert detail["status"] == "pending"  # committed, waiting for a worker's sweeper
