"""/docs and /redoc work with no internet: every script, style sheet and icon their pages use
is served by the service itself; so is every asset of the web page at `GET /` (the page in a
browser: tests/test_page.py). Every `python -m` tool's --help explains each of its flags."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import flags_without_help

from service.app import create_app
from service.settings import Settings

with warnings.catch_warnings():  # starlette's notice about httpx2, not about our code
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")
ROOT = Path(__file__).resolve().parents[1]
MAIN_BLOCK = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)


def command_line_tools() -> list[str]:
    """Modules of bench/, training/ and service/ that build an argparse parser and run as
    `python -m <module>` (an `if __name__ == "__main__":` block, or a package's __main__.py).
    training.cli is left to tests/test_training_cli.py, through its own entry points."""
    tools = []
    for folder in ("bench", "training", "service"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            parts = path.relative_to(ROOT).with_suffix("").parts
            if path.name == "__main__.py":
                parts = parts[:-1]
            elif not MAIN_BLOCK.search(text):
                continue
            module = ".".join(parts)
            if "ArgumentParser" in text and module != "training.cli":
                tools.append(module)
    return tools


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


@pytest.mark.parametrize("module", command_line_tools())
def test_every_flag_of_each_tool_has_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert flags_without_help(out.stdout) == [], out.stdout
