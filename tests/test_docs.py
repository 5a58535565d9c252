"""Swagger UI and ReDoc work with no internet: every asset they reference is served here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.providers import fidelity
from tests.conftest import Api


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_reference_only_assets_served_by_the_app(api: Api, page: str):
    response = await api.client.get(page)
    assert response.status_code == 200
    html = response.text
    urls = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html))
    urls |= set(re.findall(r"""url:\s*['"]([^'"]+)['"]""", html))
    urls |= set(re.findall(r"""spec-url=["']([^"']+)["']""", html))
    assert urls, html
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = await api.client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html


async def test_openapi_documents_every_endpoint_and_error(api: Api):
    spec = (await api.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths) >= {"/ai/prompts/", "/ai/prompts/{prompt_id}", "/healthz"}
    operations = [
        paths["/ai/prompts/"]["post"],
        paths["/ai/prompts/"]["get"],
        paths["/ai/prompts/{prompt_id}"]["get"],
    ]
    for operation in operations:
        assert operation["summary"] and operation["description"]
        assert {"401", "422"} <= set(operation["responses"])
        assert operation["security"] == [{"ApiKey": []}]
        problem = operation["responses"]["422"]["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}
    assert "202" in paths["/ai/prompts/"]["post"]["responses"]
    assert "413" in paths["/ai/prompts/"]["post"]["responses"]
    assert "404" in paths["/ai/prompts/{prompt_id}"]["get"]["responses"]
    create = spec["components"]["schemas"]["PromptCreate"]
    assert create["additionalProperties"] is False
    assert create["examples"]
    for name in ("model", "prompt_type", "prompt_text", "temperature", "max_tokens", "metadata"):
        assert name in create["properties"]
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


async def test_healthz_and_readyz(api: Api, backend: str):
    response = await api.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    response = await api.client.get("/readyz")
    assert response.status_code == 200
    expected = {"database": "ok"} | ({"broker": "ok"} if backend == "celery" else {})
    assert response.json() == {"status": "ready", "checks": expected}


def test_the_readme_shows_the_translation_matrix_of_the_code():
    """The README's table of what each provider makes of each field is the matrix the
    intake checks requests against, rendered."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("<!-- matrix:start -->\n", 1)[1].split("<!-- matrix:end -->", 1)[0]
    assert table == fidelity.render_markdown()
