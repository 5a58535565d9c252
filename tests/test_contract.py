"""The OpenAPI document is the contract: schemathesis, run against `/openapi.json` of a real
server with a valid key, must find no server error and no response that breaks the schema.

The server is `python -m app serve` on a free port with a SQLite database of its own and the
mock OpenAI upstream (so generated prompts that name a real model run to completion), exactly
as a user would start it. The number of examples is bounded so that the suite stays fast; the
seed is fixed so that a failure reproduces (schemathesis prints the `curl` that shows it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.kit.sealing import generate_key
from app.kit.settings import Settings
from tests.conftest import ROOT, migrate
from tests.jobs.services import free_port
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI

EXAMPLES = 12
SEED = 20261125


def _env(database_url: str, port: int, mock: MockOpenAI) -> dict[str, str]:
    # The machine's environment minus any setting of ours, then exactly these settings.
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(
        {
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "warning",
            "OPENAI_API_KEY": MOCK_API_KEY,
            "OPENAI_BASE_URL": mock.base_url,
            "LOCAL_MODEL_ENABLED": "false",
            "RETRY_BASE_DELAY_SECONDS": "0.01",
            "ENCRYPTION_KEYS": generate_key(),
        }
    )
    return env


def _run(
    args: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tmp_path: Path, mock_openai: MockOpenAI
):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'contract.db'}"
    await migrate(database_url)
    port = free_port()
    env = _env(database_url, port, mock_openai)
    created = await asyncio.to_thread(
        _run,
        [sys.executable, "-m", "app", "create-user", "contract@example.com", "--admin"],
        env,
        60,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1].split()[-1]
    assert key.startswith("pm_")

    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the server did not start"
                await asyncio.sleep(0.2)
        result = await asyncio.to_thread(
            _run,
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                "--generation-deterministic",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance,response_headers_conformance",
                "--request-timeout",
                "30",
                "--no-color",
            ],
            env,
            300,
            tmp_path,  # where schemathesis keeps its example database and reports
        )
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or "passed" in result.stdout, report
