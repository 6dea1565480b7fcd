"""The console and widget assets shipped inside the package (no build step).

Third-party files (CodeMirror for the template editor) sit beside our own, byte for byte as
released; static/vendored.json records their version and checksums so an upgrade is a
deliberate change. Each asset carries an ETag from its bytes: browsers revalidate (no-cache)
and get a 304 instead of the editor's 400 KB again.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
# The consoles' scripts are ES modules: a browser runs a module only when it is served with a
# JavaScript type (nosniff makes that strict for classic scripts too, such as CodeMirror's).
ASSETS = {"console.css": CSS, "agent.js": JS, "operator.js": JS, "knowledge.js": JS, "console-common.js": JS,
          "stats.js": JS, "rollout.js": JS, "yaml-editor.js": JS, "event-post.js": JS, "regression.js": JS,
          "codemirror.js": JS, "codemirror-yaml.js": JS, "codemirror.css": CSS,
          "codemirror-LICENSE.txt": "text/plain; charset=utf-8"}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=32)
def static_bytes(name: str) -> bytes:
    return resources.files("bot.web").joinpath("static").joinpath(name).read_bytes()


def static_text(name: str) -> str:
    return static_bytes(name).decode("utf-8")


@lru_cache(maxsize=32)
def _etag(name: str) -> str:
    return '"' + hashlib.sha256(static_bytes(name)).hexdigest()[:32] + '"'


@router.get("/static/{name}")
async def asset(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such file."})
    try:
        body = static_bytes(name)
    except FileNotFoundError:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such file."}) from None
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "ETag": _etag(name)}
    if headers["ETag"] in (tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=ASSETS[name], headers=headers)
