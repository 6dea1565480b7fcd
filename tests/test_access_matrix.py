"""Every console route and API call, anonymous and with each role: exactly the allowed set.

The routes are read from the console routers themselves, so a new route cannot escape the check.
Operators read the agent console (every GET route there, the live events included) and change
nothing in it; agents never reach the operator console.
"""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from bot.web.admin_console import router as admin_router
from bot.web.agent_console import router as agent_router
from bot.web.auth import router as auth_router
from bot.web.knowledge_console import router as knowledge_router
from bot.web.operator_console import router as operator_router
from bot.web.regression_console import router as regression_router
from bot.web.rollout_console import router as rollout_router

from engine.stub import StubEngine
from tests.live_server import live_server
from tests.test_agent_console import ROLES, signed_in, visitor_hands_over

ALLOWED = {"/agent": {"agent", "admin"}, "/operator": {"operator", "admin"}, "/admin": {"admin"},
           "/console": set(ROLES), "/logout": set(ROLES)}
READ_ONLY = {"/agent": {"operator"}}  # the roles that may only read a console: its GET routes
PARAMS = {"conversation_id": "{conversation_id}", "name": "billing", "sha256": "0" * 64, "article_id": "1",
          "message_id": "1", "case_id": "1", "number": "1", "run_id": "1", "rollout_id": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("matrix"), engine=StubEngine(), login_rate_per_ip=10_000,
                     widget_rate_per_ip=10_000, users={role: role for role in ROLES}) as (base, app):
        visitor_hands_over(base, image=False)
        yield base, app


def console_routes(app) -> list[tuple[str, str, set[str]]]:
    routes = []
    for route in [*agent_router.routes, *operator_router.routes, *regression_router.routes, *rollout_router.routes,
                  *knowledge_router.routes, *admin_router.routes, *auth_router.routes]:
        if not isinstance(route, APIRoute):
            continue
        prefix = next((p for p in ALLOWED if route.path == p or route.path.startswith(p + "/")), None)
        if prefix is None:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            readers = READ_ONLY.get(prefix, set()) if method == "GET" else set()
            routes.append((method, route.path, ALLOWED[prefix] | readers))
    return routes


def request(client: httpx.Client, method: str, path: str, conversation_id: int) -> int:
    url = re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path).format(conversation_id=conversation_id)
    if url.endswith("/events"):
        with client.stream(method, url, timeout=5) as response:
            return response.status_code
    body = {"json": {"text": "x", "yaml": "name: x", "version": 1, "channel": "widget", "template": "general",
                     "name": "x", "role": "agent", "password": "short"}} \
        if method == "POST" and not url.endswith(("/try", "/logout")) else {}
    return client.request(method, url, **body).status_code


def test_every_console_route_admits_exactly_its_roles(server):
    base, app = server
    conversation_id = app.state.runtime.store._one("select id from conversations order by id limit 1")["id"]
    routes = console_routes(app)
    assert len(routes) >= 20, "the console routes were not found"
    failures = []
    for method, path, allowed in routes:
        anonymous = httpx.Client(base_url=base, follow_redirects=False)
        status = request(anonymous, method, path, conversation_id)
        if status not in (401, 303, 403):
            failures.append((method, path, "anonymous", status))
        for role in ROLES:
            status = request(signed_in(base, role), method, path, conversation_id)
            admitted = status not in (401, 403)
            if admitted != (role in allowed):
                failures.append((method, path, role, status))
    assert not failures, failures
    operator_reads = {path for method, path, allowed in routes if "operator" in allowed and path.startswith("/agent")}
    assert {"/agent", "/agent/api/conversations/{conversation_id}", "/agent/api/events"} <= operator_reads
    assert not any(method == "POST" and "operator" in allowed for method, path, allowed in routes
                   if path.startswith("/agent")), "an operator may change something in the agent console"
    assert not any("agent" in allowed for _, path, allowed in routes if path.startswith("/operator"))


def test_state_changes_without_the_csrf_token_are_refused_everywhere(server):
    base, app = server
    conversation_id = app.state.runtime.store._one("select id from conversations order by id limit 1")["id"]
    admin = signed_in(base, "admin")
    bare = httpx.Client(base_url=base, cookies=admin.cookies, follow_redirects=False)
    for method, path, _ in console_routes(app):
        if method != "POST":
            continue
        status = request(bare, method, path, conversation_id)
        assert status == 403, (path, status)
