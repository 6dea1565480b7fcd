"""The console and widget assets shipped inside the package (no build step)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

# The consoles' scripts are ES modules: a browser runs a module only when it is served with a
# JavaScript type (nosniff makes that strict for classic scripts too).
ASSETS = {"console.css": "text/css; charset=utf-8", "agent.js": "text/javascript; charset=utf-8",
          "operator.js": "text/javascript; charset=utf-8", "knowledge.js": "text/javascript; charset=utf-8",
          "console-common.js": "text/javascript; charset=utf-8", "stats.js": "text/javascript; charset=utf-8"}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=32)
def static_text(name: str) -> str:
    return resources.files("bot.web").joinpath("static").joinpath(name).read_text(encoding="utf-8")


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such file."})
    try:
        body = static_text(name)
    except FileNotFoundError:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such file."}) from None
    return Response(body, media_type=ASSETS[name],
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
