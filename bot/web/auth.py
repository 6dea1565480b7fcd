"""Console login: the login page, session cookies, CSRF checks and role guards.

Agents and operators sign in with a password; the session cookie is HttpOnly,
SameSite=Strict, Secure behind HTTPS, and replaced at every login. Every state-changing
console request must carry the session's CSRF token (header `X-CSRF-Token` or form field
`csrf_token`). Roles are checked on the server for every route (`require("agent")`; a route
that only shows what a console holds says `reading=True`, and the roles that may only read
that console reach it too: see `User.can_read`), and an account whose password an admin reset
reaches nothing but `/account/password` until its owner has chosen a new one.

A failed sign-in answers the same (status, page, headers, cookie) after the same work
whether the name is unknown, the account disabled or the password wrong; repeated failures
make further tries wait (`bot.login_throttle`), and that answer too is the same for real and
made-up names.
"""

from __future__ import annotations

import html
import secrets
from typing import Annotated, Callable
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..accounts import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, AccountError, Role, Session, TooManyAttempts, same_token
from .client_address import client_key
from .deps import RuntimeDep, ServerDep

SESSION_COOKIE = "snapdesk_session"
LOGIN_CSRF_COOKIE = "snapdesk_login_csrf"
PASSWORD_PAGE = "/account/password"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
CONSOLE_NAMES = {"/agent": "agent console", "/operator": "operator console"}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def current_session(request: Request, runtime: RuntimeDep) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    return await runtime.manager.db(runtime.accounts.session, token)


def require(role: Role | None = None, password_change: bool = False, reading: bool = False) -> Callable:
    """A dependency: the signed-in session of a user allowed `role` (admins always are;
    None: any signed-in user). `reading`: the route only shows what the console holds, so a
    role that may only read that console is let in too. `password_change`: also a session
    that must change its password first (only the password page and signing out are open to
    those)."""

    async def guard(request: Request, session: Annotated[Session | None, Depends(current_session)]) -> Session:
        if session is None:
            raise HTTPException(401, detail={"error": "login_required", "message": "Please sign in."})
        if role is not None and not (session.user.can_read(role) if reading else session.user.can(role)):
            raise HTTPException(403, detail={"error": "forbidden", "message": "Your role may not do this."})
        if session.user.must_change_password and not password_change:
            raise HTTPException(403, detail={"error": "password_change_required",
                                             "message": f"Choose a new password first at {PASSWORD_PAGE}."})
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

CARD_STYLE = """
 body { font: 16px/1.5 system-ui, sans-serif; background: #f4f5fb; margin: 0; display: grid; place-items: center;
        min-height: 100vh; color: #1d1f2b; }
 .card { background: #fff; padding: 2rem; border-radius: 14px; box-shadow: 0 8px 30px rgba(30,30,60,.12);
        width: min(380px, 90vw); box-sizing: border-box; }
 h1 { font-size: 1.35rem; margin: 0 0 1rem; }
 p { margin: .6rem 0; }
 label { display: block; margin: .8rem 0 .3rem; font-weight: 600; }
 input { width: 100%; box-sizing: border-box; padding: .6rem .7rem; border: 1px solid #c9cbe0; border-radius: 8px;
         font: inherit; }
 input:focus, button:focus, a:focus { outline: 3px solid #8b7cf6; outline-offset: 1px; }
 button, .button { display: block; box-sizing: border-box; margin-top: 1.2rem; width: 100%; padding: .7rem; border: 0;
          border-radius: 8px; background: #5b45e0; color: #fff; font: inherit; font-weight: 600; cursor: pointer;
          text-align: center; text-decoration: none; }
 .secondary { background: #fff; color: #3f32b3; border: 1px solid #c9cbe0; }
 .links { margin-top: 1rem; display: flex; justify-content: space-between; gap: 1rem; font-size: .92rem; }
 .links a, .links button { color: #4a3bc4; background: none; border: 0; padding: 0; margin: 0; width: auto;
          font: inherit; font-weight: 400; cursor: pointer; text-decoration: underline; }
 .help { color: #5b5e73; font-size: .88rem; margin: .3rem 0 0; }
 .error { background: #fdecec; color: #8a1c1c; padding: .6rem .8rem; border-radius: 8px; }
 .note { background: #eef0ff; color: #2f2796; padding: .6rem .8rem; border-radius: 8px; }
"""


def card_page(title: str, body: str) -> str:
    """A small page in the sign-in page's look: `body` is already-escaped HTML."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Snapdesk</title>
<style>{CARD_STYLE}</style></head>
<body>{body}</body></html>"""


def _message(error: str, kind: str = "error") -> str:
    role = "alert" if kind == "error" else "status"
    return f'<p class="{kind}" role="{role}" data-testid="{kind}">{html.escape(error)}</p>' if error else ""


def _sign_out_form(session: Session) -> str:
    return (f'<form method="post" action="/logout"><input type="hidden" name="csrf_token" '
            f'value="{html.escape(session.csrf_token)}"><button type="submit" data-testid="sign-out">Sign out</button>'
            f'</form>')


def console_page(session: Session | None, role: Role, path: str, page: str) -> Response:
    """A console page: sign-in first, a new password if an admin reset it, then only for the
    roles that may use or read that console (the page shows a reader no way to change anything)."""
    from .static_files import static_text

    if session is None:
        return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
    if session.user.must_change_password:
        return RedirectResponse(f"{PASSWORD_PAGE}?next={quote(path)}", status_code=303)
    if not session.user.can_read(role):
        return HTMLResponse(card_page("Not for this account", forbidden_page(session, role)), status_code=403,
                            headers=PAGE_HEADERS)
    return HTMLResponse(static_text(page), headers=PAGE_HEADERS)


def forbidden_page(session: Session, role: Role) -> str:
    """What a signed-in user sees at a console their role may not use: the way to the one it may."""
    user = session.user
    home = user.home
    return f"""<main class="card" data-testid="forbidden">
<h1>This is the {html.escape(role)} console</h1>
<p>You are signed in as <strong>{html.escape(user.name)}</strong> ({html.escape(user.role)}), and that role may not
use the {html.escape(role)} console. Ask an admin if you need it.</p>
<a class="button" href="{home}" data-testid="console-link">Open the {CONSOLE_NAMES[home]}</a>
<div class="links"><a href="{PASSWORD_PAGE}">Change password</a>{_sign_out_form(session)}</div>
</main>"""


def _login_page(error: str = "", next_path: str = "/", csrf: str = "") -> str:
    return card_page("Sign in", f"""<form class="card" method="post" action="/login">
<h1>Sign in to Snapdesk</h1>{_message(error)}
<input type="hidden" name="csrf_token" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>""")


def _safe_next(next_path: str) -> str:
    """Only same-site paths: never an open redirect."""
    return next_path if next_path.startswith("/") and not next_path.startswith("//") and "\\" not in next_path else "/"


def _page(body: str, request: Request, status: int = 200, csrf: str | None = None,
          headers: dict[str, str] | None = None) -> HTMLResponse:
    response = HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})
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
    server: ServerDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=MAX_PASSWORD_CHARS)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    fresh = secrets.token_urlsafe(24)
    if not same_token(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token):
        return _page(_login_page("The sign-in form expired. Please try again.", next, fresh), request, 403, fresh)
    limiter = server.login_limiter
    if limiter.check(client_key(request)) is not None:
        return _page(_login_page("Too many sign-in attempts. Please wait a minute.", next, fresh), request, 429, fresh)
    try:
        user = await runtime.accounts.sign_in(name, password, client_key(request))
    except TooManyAttempts as exc:
        return _page(_login_page(str(exc), next, fresh), request, 429, fresh,
                     headers={"Retry-After": str(exc.retry_after)})
    if user is None:
        return _page(_login_page("Wrong user name or password.", next, fresh), request, 401, fresh)
    token, _ = await runtime.manager.db(runtime.accounts.open_session, user)
    target = _safe_next(next) if next not in ("", "/") else user.home
    if user.must_change_password:
        target = f"{PASSWORD_PAGE}?next={quote(target)}"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, runtime: RuntimeDep, server: ServerDep,
                 session: Annotated[Session, Depends(require(password_change=True))]) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    await runtime.manager.db(runtime.accounts.close_session, token)
    await runtime.manager.db(runtime.store.audit, session.user.name, "logout", f"user:{session.user.name}")
    server.console_hub.end_sessions(session_token=token)  # the console pages of this session close
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/console/api/me", summary="The signed-in console user and the CSRF token for their requests")
async def me(session: Annotated[Session | None, Depends(current_session)]) -> JSONResponse:
    if session is None:
        return JSONResponse({"error": "login_required", "message": "Please sign in."}, status_code=401)
    return JSONResponse({"name": session.user.name, "role": session.user.role, "csrf_token": session.csrf_token,
                         "display_name": session.user.display_name,
                         "must_change_password": session.user.must_change_password},
                        headers={"Cache-Control": "no-store"})


# Changing one's own password ----------------------------------------------------------
def _password_page(session: Session, next_path: str, error: str = "") -> str:
    user = session.user
    if user.must_change_password:
        intro = _message("An admin set a temporary password for this account. Choose your own to continue.", "note")
        back = ""
    else:
        intro = ""
        back = f'<a href="{html.escape(next_path if next_path != "/" else user.home)}" data-testid="back">Back to the console</a>'
    return card_page("Change password", f"""<main class="card"><form method="post" action="{PASSWORD_PAGE}" data-testid="password-form">
<h1>Change your password</h1>{intro}{_message(error)}
<p class="help">Signed in as <strong>{html.escape(user.name)}</strong>.</p>
<input type="hidden" name="csrf_token" value="{html.escape(session.csrf_token)}">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<input type="text" name="username" value="{html.escape(user.name)}" autocomplete="username" hidden>
<label for="current_password">Current password</label>
<input id="current_password" name="current_password" type="password" autocomplete="current-password" required autofocus>
<label for="new_password">New password</label>
<input id="new_password" name="new_password" type="password" autocomplete="new-password" required
       minlength="{MIN_PASSWORD_CHARS}" maxlength="{MAX_PASSWORD_CHARS}" aria-describedby="new-help">
<p class="help" id="new-help">At least {MIN_PASSWORD_CHARS} characters. Your other sessions are signed out.</p>
<label for="repeat_password">Repeat the new password</label>
<input id="repeat_password" name="repeat_password" type="password" autocomplete="new-password" required
       maxlength="{MAX_PASSWORD_CHARS}">
<button type="submit">Change password</button>
</form>
<div class="links">{back}{_sign_out_form(session)}</div>
</main>""")


@router.get(PASSWORD_PAGE, response_class=HTMLResponse, include_in_schema=False)
async def password_form(request: Request, session: Annotated[Session | None, Depends(current_session)],
                        next: str = "/") -> Response:
    if session is None:
        return RedirectResponse(f"/login?next={quote(PASSWORD_PAGE)}", status_code=303)
    return _page(_password_page(session, _safe_next(next)), request)


@router.post(PASSWORD_PAGE, include_in_schema=False)
async def change_password(
    request: Request,
    runtime: RuntimeDep,
    server: ServerDep,
    session: Annotated[Session, Depends(require(password_change=True))],
    current_password: Annotated[str, Form(max_length=MAX_PASSWORD_CHARS)],
    new_password: Annotated[str, Form(max_length=MAX_PASSWORD_CHARS)],
    repeat_password: Annotated[str, Form(max_length=MAX_PASSWORD_CHARS)],
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    next_path = _safe_next(next)
    if new_password != repeat_password:
        return _page(_password_page(session, next_path, "The two new passwords differ."), request, 400)
    token = request.cookies.get(SESSION_COOKIE, "")
    try:
        await runtime.accounts.change_password(session.user.name, current_password, new_password,
                                               client_key(request), keep_token=token)
    except TooManyAttempts as exc:
        return _page(_password_page(session, next_path, str(exc)), request, 429,
                     headers={"Retry-After": str(exc.retry_after)})
    except AccountError as exc:
        return _page(_password_page(session, next_path, str(exc)), request, 400)
    server.console_hub.end_sessions(user_name=session.user.name)  # this page's own streams reconnect
    target = next_path if next_path not in ("/", PASSWORD_PAGE) else session.user.home
    return RedirectResponse(target, status_code=303)
