"""Shared by the prompt-type tests: unique type names (the suite's database is shared) and
the PUT an admin makes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import Api


def unique(prefix: str = "pt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def put_type(api: Api, headers: dict[str, str], name: str, **policy: Any) -> httpx.Response:
    return await api.client.put(f"/ai/prompt-types/{name}", json=policy, headers=headers)


async def define(api: Api, headers: dict[str, str], name: str, **policy: Any) -> dict[str, Any]:
    response = await put_type(api, headers, name, **policy)
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body
