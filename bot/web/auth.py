"""Console login: the login page, session cookies, CSRF checks and role guards.

Agents and operators sign in with a password; the session cookie is HttpOnly,
SameSite=Strict, Secure behind HTTPS, and replaced at every login. Every state-changing
console request must carry the session's CSRF token (header `X-CSRF-Token` or form field
`csrf_token`). Roles are checked on the server for every route (`require("agent")`).
"""

from __future__ import annotations

import html
import secrets
from typing import Annotated, Callable

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..accounts import Role, Session, same_token
from .client_address import client_key
from .ratelimit import RateLimiter
from .runtime import RuntimeDep

SESSION_COOKIE = "snapdesk_session"
LOGIN_CSRF_COOKIE = "snapdesk_login_csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def current_session(request: Request, runtime: RuntimeDep) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    return await runtime.manager.db(runtime.accounts.session, token)


def require(role: Role | None = None) -> Callable:
    """A dependency: the signed-in session of a user allowed `role` (admins always are;
    None: any signed-in user)."""

    async def guard(request: Request, session: Annotated[Session | None, Depends(current_session)]) -> Session:
        if session is None:
            raise HTTPException(401, detail={"error": "login_required", "message": "Please sign in."})
        if role is not None and not session.user.can(role):
            raise HTTPException(403, detail={"error": "forbidden", "message": "Your role may not do this."})
        if request.method not in SAFE_METHODS:
            given = request.headers.get("x-csrf-token")
            if given is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                given = (await request.form()).get("csrf_token")  # type: ignore[assignment]
            if not same_token(session.csrf_token, given):
                raise HTTPException(403, detail={"error": "csrf", "message": "The form expired. Reload the page."})
        return session

    return guard


router = APIRouter(tags=["console"])


def console_page(session: Session | None, role: Role, path: str, page: str) -> Response:
    """A console page: sign-in first, then only for its role."""
    from .static_files import static_text

    if session is None:
        return RedirectResponse(f"/login?next={path}", status_code=303)
    if not session.user.can(role):
        return HTMLResponse(f"Your role may not use the {role} console.", status_code=403, headers=PAGE_HEADERS)
    return HTMLResponse(static_text(page), headers=PAGE_HEADERS)


def _login_page(error: str = "", next_path: str = "/", csrf: str = "") -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Snapdesk</title>
<style>
 body {{ font: 16px/1.5 system-ui, sans-serif; background: #f4f5fb; margin: 0; display: grid; place-items: center;
        min-height: 100vh; color: #1d1f2b; }}
 form {{ background: #fff; padding: 2rem; border-radius: 14px; box-shadow: 0 8px 30px rgba(30,30,60,.12);
        width: min(360px, 90vw); }}
 h1 {{ font-size: 1.35rem; margin: 0 0 1rem; }}
 label {{ display: block; margin: .8rem 0 .3rem; font-weight: 600; }}
 input {{ width: 100%; box-sizing: border-box; padding: .6rem .7rem; border: 1px solid #c9cbe0; border-radius: 8px;
         font: inherit; }}
 input:focus, button:focus {{ outline: 3px solid #8b7cf6; outline-offset: 1px; }}
 button {{ margin-top: 1.2rem; width: 100%; padding: .7rem; border: 0; border-radius: 8px; background: #5b45e0;
          color: #fff; font: inherit; font-weight: 600; cursor: pointer; }}
 .error {{ background: #fdecec; color: #8a1c1c; padding: .6rem .8rem; border-radius: 8px; }}
</style></head>
<body><form method="post" action="/login">
<h1>Sign in to Snapdesk</h1>{message}
<input type="hidden" name="csrf_token" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form></body></html>"""


def _safe_next(next_path: str) -> str:
    """Only same-site paths: never an open redirect."""
    return next_path if next_path.startswith("/") and not next_path.startswith("//") and "\\" not in next_path else "/"


def _page(body: str, request: Request, status: int = 200, csrf: str | None = None) -> HTMLResponse:
    response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
    if csrf is not None:
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=_secure(request),
                            max_age=3600, path="/login")
    return response


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    csrf = secrets.token_urlsafe(24)
    return _page(_login_page(next_path=_safe_next(next), csrf=csrf), request, csrf=csrf)


@router.post("/login", include_in_schema=False)
async def login(
    request: Request,
    runtime: RuntimeDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    fresh = secrets.token_urlsafe(24)
    if not same_token(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token):
        return _page(_login_page("The sign-in form expired. Please try again.", next, fresh), request, 403, fresh)
    limiter: RateLimiter = request.app.state.login_limiter
    if limiter.check(client_key(request)) is not None:
        return _page(_login_page("Too many sign-in attempts. Please wait a minute.", next, fresh), request, 429, fresh)
    user = await runtime.manager.db(runtime.accounts.authenticate, name, password)
    if user is None:
        locked = await runtime.manager.db(runtime.accounts.is_locked, name)
        error = ("Too many failed attempts: this account is locked for 15 minutes."
                 if locked else "Wrong user name or password.")
        return _page(_login_page(error, next, fresh), request, 401, fresh)
    token, _ = await runtime.manager.db(runtime.accounts.open_session, user)
    home = "/agent" if user.role == "agent" else "/operator"
    target = _safe_next(next) if next not in ("", "/") else home
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, runtime: RuntimeDep,
                 session: Annotated[Session, Depends(require())]) -> Response:
    await runtime.manager.db(runtime.accounts.close_session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/console/api/me", summary="The signed-in console user and the CSRF token for their requests")
async def me(session: Annotated[Session | None, Depends(current_session)]) -> JSONResponse:
    if session is None:
        return JSONResponse({"error": "login_required", "message": "Please sign in."}, status_code=401)
    return JSONResponse({"name": session.user.name, "role": session.user.role, "csrf_token": session.csrf_token},
                        headers={"Cache-Control": "no-store"})
