"""/docs and /redoc serve every script and stylesheet from the service, under a policy that
refuses inline scripts (the browser test renders them: tests/test_api_docs_browser.py)."""

import re

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import HttpSettings
from tests.conftest import make_settings, running_app

ASSETS = {
    "/docs/static/swagger-ui-bundle.js": "text/javascript",
    "/docs/static/swagger-ui-init.js": "text/javascript",
    "/docs/static/swagger-ui.css": "text/css",
    "/docs/static/redoc.standalone.js": "text/javascript",
    "/docs/static/favicon.png": "image/png",
}


def policy(response: httpx.Response) -> dict[str, list[str]]:
    directives = response.headers["content-security-policy"].split(";")
    return {name: values for name, *values in (d.split() for d in directives if d.strip())}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_load_only_same_origin_files(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = re.findall(r'(?:src|href|spec-url|data-openapi-url)="([^"]*)"', response.text)
    assert urls
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "<script>" not in response.text  # every script is a served file


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_refuse_inline_and_foreign_scripts(
    client: httpx.AsyncClient, path: str
) -> None:
    directives = policy(await client.get(path))

    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'none'"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize(("path", "content_type"), ASSETS.items())
async def test_docs_assets_are_served(
    client: httpx.AsyncClient, path: str, content_type: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.content


async def test_swagger_ui_starts_from_the_schema_the_page_names(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    init = (await client.get("/docs/static/swagger-ui-init.js")).text

    assert 'data-openapi-url="/openapi.json"' in page
    assert "SwaggerUIBundle(" in init
    assert "dataset.openapiUrl" in init


async def test_docs_assets_are_off_with_the_docs(
    database_url: str, empty_database: AsyncEngine
) -> None:
    async with running_app(make_settings(database_url, http=HttpSettings(api_docs=False))) as app:
        for path in ("/docs", "/redoc", *ASSETS):
            assert (await app.client.get(path)).status_code == 404, path
