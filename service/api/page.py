"""The web page: GET / (service/static/index.html) and its script and style sheet. Public like
the API docs; the page itself sends the API key (a field on it) with every call it makes."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}  # the only files served
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidated, so a new version shows at once

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/page/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: the parameter is never used as a path
        raise HTTPException(404, f"no page asset {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=NO_CACHE)
