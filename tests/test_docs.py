"""/docs and /redoc work with no internet: every script, style sheet and icon their pages use
is served by the service itself; so is every asset of the web page at `GET /` (the page in a
browser: tests/test_page.py)."""

from __future__ import annotations

import re
import warnings

import pytest

from service.app import create_app
from service.settings import Settings

with warnings.catch_warnings():  # starlette's notice about httpx2, not about our code
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # no model needed: the docs do not depend on one (the service stays not ready)
    missing = tmp_path_factory.mktemp("empty") / "models"
    app = create_app(Settings(model_dir=missing, warmup=False, api_key="s3cret"))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_local_assets(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    urls = {a or b for a, b in ASSET.findall(r.text)}
    assert "/openapi.json" in urls or "/openapi.json" in r.text
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, r.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)  # public even with an API key set
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert client.get("/openapi.json").json()["info"]["title"] == "FaceSR"


def test_swagger_and_redoc_bundles_are_the_real_ones(client):
    swagger = client.get("/docs-assets/swagger-ui-bundle.js")
    assert swagger.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "SwaggerUIBundle" in swagger.text
    assert "Redoc" in client.get("/docs-assets/redoc.standalone.js").text
    assert client.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")


def test_root_is_the_page_with_local_assets_and_no_key(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text
    urls = {a or b for a, b in ASSET.findall(r.text)}
    assert {"/page/page.js", "/page/page.css", "/docs"} <= urls, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert client.get(url).status_code == 200, url  # public even with an API key set
    script = client.get("/page/page.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "http://" not in script.text and "https://" not in script.text  # no CDN
    assert "Authorization" in script.text  # the page sends the key it is given
    assert client.get("/page/index.html").status_code == 404  # only the listed assets
    assert client.get("/page/..%2Fapi%2Fpage.py").status_code == 404
    assert client.get("/v1/models").status_code == 401  # the key still guards the rest
    assert client.get("/docs-assets/../v1/models").status_code in (401, 404)
