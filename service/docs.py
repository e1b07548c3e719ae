"""The API docs with no internet: Swagger UI (/docs) and ReDoc (/redoc) load their scripts and
styles from this service (the assets fastapi-offline ships), never from a CDN.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

ASSETS_PATH = "/docs-assets"  # Swagger UI's and ReDoc's JavaScript, CSS and favicon
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def is_docs_path(path: str) -> bool:
    return path in DOCS_PATHS or path.startswith(ASSETS_PATH + "/")


def app_with_local_docs(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc pages use the local assets."""
    return FastAPIOffline(static_url=ASSETS_PATH, **kwargs)
