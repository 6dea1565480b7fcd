"""Bad input anywhere answers 4xx, never 500: a fuzzing run over Snapdesk's own OpenAPI description.

Schemathesis generates requests for every documented route from the schema the server
publishes: valid ones, invalid ones, and the boundary cases of its coverage phase. Each is
sent to a real server with the credentials its route takes (a visitor token for the widget,
an API key for /v1, an admin's session cookie and CSRF token for the consoles), and each
answer must not be a server error and must match the documented response schema. The run
is derandomized and bounded, so it finds the same things on every machine.
"""

from __future__ import annotations

import re
from typing import Callable

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from bot.accounts import Accounts
from bot.apikeys import ApiKeys
from bot.store import Store
from bot.web.params import INT64_MAX
from engine.stub import StubEngine
from tests.live_server import live_server

PASSWORD = "correct horse battery"
ADMIN = "fuzz-admin-q7"  # a name the generator will not guess: its own session must survive the run
EXAMPLES = 15  # per route and per mode (valid, invalid)
CHECKS = [not_a_server_error, response_schema_conformance]
# Streams that stay open while their credentials are good: their caps and input are tested in
# test_stream_caps.py; here they would only hold the run until its timeout.
ENDLESS = {"/agent/api/events"}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzzing")
    store = Store(data)
    Accounts(store).add_user(ADMIN, "admin", PASSWORD)
    key = ApiKeys(store).create("fuzzing", actor="test")[1]
    store.close()
    with live_server(data, engine=StubEngine(), login_rate_per_ip=1000, widget_rate_per_ip=10**6,
                     widget_rate_per_visitor=10**6, api_rate_per_key=10**6) as (base, app):
        with httpx.Client(base_url=base) as browser:
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text).group(1)
            signed_in = browser.post("/login", data={"name": ADMIN, "password": PASSWORD, "csrf_token": csrf})
            assert signed_in.status_code == 303, signed_in.text
            admin = {"Cookie": f"snapdesk_session={browser.cookies['snapdesk_session']}",
                     "X-CSRF-Token": browser.get("/console/api/me").json()["csrf_token"]}
        visitor = {"Authorization": "Bearer " + httpx.post(f"{base}/widget/api/session").json()["token"]}
        api_key = {"Authorization": f"Bearer {key}"}

        def credentials(path: str) -> dict[str, str]:
            if path.startswith("/widget/"):
                return visitor
            if path.startswith("/v1/"):
                return api_key
            if path.startswith(("/agent/", "/operator/", "/admin/", "/console/")):
                return admin
            return {}

        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        yield base, schema, credentials


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations() if result.ok().path not in ENDLESS]


def can_be_invalid(operation) -> bool:
    """Whether anything of a route can be sent wrong: a body, or a parameter with a type or bounds
    (any text is a valid unconstrained string, and looking for an invalid one only spins)."""
    spec = operation.schema.raw_schema["paths"][operation.path][operation.method.lower()]
    return "requestBody" in spec or any(_constrained(p.get("schema", {})) for p in spec.get("parameters", []))


def _constrained(schema: dict) -> bool:
    if "anyOf" in schema:
        return any(_constrained(s) for s in schema["anyOf"] if s.get("type") != "null")
    return schema.get("type") != "string" or bool(set(schema) & {"maxLength", "minLength", "pattern", "format", "enum"})


def fuzz(operation, headers: dict[str, str], failures: list[str]) -> int:
    """Send the operation's generated and boundary cases; returns how many were sent."""
    sent = 0

    def send(case) -> None:
        nonlocal sent
        sent += 1
        try:
            case.call_and_validate(headers=dict(headers), checks=CHECKS, timeout=15)
        except (AssertionError, FailureGroup) as failure:
            failures.append(f"{operation.label}: {failure}")

    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if can_be_invalid(operation) else [])
    for mode in modes:
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case) -> None:
            send(case)

        run()
    generation = operation.schema.config.generation_for(operation=operation, phase="coverage")
    for case in operation.schema.iter_coverage_cases(
        operation, generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], generation_config=generation,
    ):
        send(case)
    return sent


def test_every_route_answers_bad_input_with_4xx_as_documented(target):
    _, schema, credentials = target
    failures: list[str] = []
    routes = operations(schema)
    sent = sum(fuzz(operation, credentials(operation.path), failures) for operation in routes)
    assert not failures, f"{len(failures)} failing requests:\n\n" + "\n\n".join(failures[:20])
    labels = {operation.label for operation in routes}
    assert {"POST /v1/chat/completions", "GET /widget/api/conversation", "POST /agent/api/conversations/"
            "{conversation_id}/claim", "GET /admin/api/users"} <= labels  # all three credentials were used
    assert sent >= 20 * len(routes)


def integer_inputs(schema) -> list[tuple[str, str, str, str]]:
    """(method, path, where, name) of every integer the API documents: path and query parameters
    and the top-level fields of JSON bodies."""
    found = []
    for path, item in schema.raw_schema["paths"].items():
        for method, spec in item.items():
            for parameter in spec.get("parameters", []):
                if parameter.get("in") in ("path", "query") and _is_integer(parameter.get("schema", {})):
                    found.append((method.upper(), path, parameter["in"], parameter["name"]))
            body = spec.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            for name, field in _resolve(schema, body).get("properties", {}).items():
                if _is_integer(_resolve(schema, field)):
                    found.append((method.upper(), path, "body", name))
    return found


def _resolve(schema, node: dict) -> dict:
    while "$ref" in node:
        node = schema.raw_schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _is_integer(schema: dict) -> bool:
    return schema.get("type") == "integer" or any(_is_integer(s) for s in schema.get("anyOf", []))


def _request(base: str, method: str, path: str, where: str, name: str, value: int,
             credentials: Callable[[str], dict]) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "1", path.replace("{" + name + "}", str(value)) if where == "path" else path)
    params = {name: str(value)} if where == "query" else None
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]} if path.startswith("/v1/") else {}
    if where == "body":
        body[name] = value
    return httpx.request(method, base + url, params=params, headers=credentials(path), json=body, timeout=15)


def _refused_for(response: httpx.Response, where: str, name: str) -> bool:
    """A 4xx that names the input: FastAPI's 422 by location, or the OpenAI-shaped 400 by `param`."""
    if response.status_code == 422:
        return any(error["loc"][:2] == [where, name] for error in response.json()["detail"])
    return response.status_code == 400 and response.json()["error"]["param"] == name


def test_integers_beyond_64_bits_are_refused_with_4xx_on_every_route(target):
    """The attack the first fuzzing run found: ids past SQLite's 64-bit integers were a 500. Every
    integer the API takes, in a path, a query or a JSON body, is refused out of range by name."""
    base, schema, credentials = target
    inputs = integer_inputs(schema)
    for expected in [("GET", "/agent/api/conversations/{conversation_id}", "path", "conversation_id"),
                     ("POST", "/operator/api/templates/{name}/restore", "body", "version"),
                     ("GET", "/operator/api/stats", "query", "days"),
                     ("POST", "/v1/chat/completions", "body", "top_k")]:
        assert expected in inputs
    for method, path, where, name in inputs:
        for value in (INT64_MAX + 1, 2**64, 10**40, -(2**63) - 1):
            response = _request(base, method, path, where, name, value, credentials)
            assert _refused_for(response, where, name), (method, path, name, value, response.status_code,
                                                         response.text)
        largest = _request(base, method, path, where, name, INT64_MAX, credentials)
        assert largest.status_code < 500, (method, path, name, largest.status_code, largest.text)
