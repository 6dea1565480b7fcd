"""/v1 bodies are bounded before they are parsed: too large is 413 before any JSON is read,
too deeply nested is 400 with a readable message, never a 500 from the parser's recursion."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from bot.apikeys import ApiKeys
from bot.settings import Settings
from bot.store import Store
from bot.web.body_limits import BodyLimits
from bot.web.openai_api import MAX_JSON_DEPTH
from engine.stub import StubEngine
from tests.live_server import live_server
from tests.raw_http import chunked_post

MB = 1024 * 1024
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("v1-limits")
    store = Store(data)
    key = ApiKeys(store).create("fuzz", actor="test")[1]
    store.close()
    with live_server(data, engine=StubEngine()) as (base, app):
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        yield base, key, client
        client.close()


def post_raw(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(CHAT, content=body, headers={"Content-Type": "application/json"})


def nested(depth: int) -> bytes:
    """A chat request whose first message's content is nested `depth` levels in all."""
    inner = "[" * (depth - 4) + '{"type": "text", "text": "hi"}' + "]" * (depth - 4)
    return f'{{"model": "stub", "messages": [{{"role": "user", "content": {inner}}}]}}'.encode()


def test_a_hundred_thousand_brackets_answer_400_not_500(api):
    _, _, client = api
    response = post_raw(client, b"[" * 100_000)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "json_too_deep"
    assert "nested too deeply" in error["message"]
    assert post_raw(client, b"{" * 50_000 + b'"a":' * 1 + b"}" * 50_000).status_code == 400
    # the server is fine afterwards
    ok = client.post(CHAT, json={"model": "stub", "messages": [{"role": "user", "content": "hello"}]})
    assert ok.status_code == 200, ok.text


def test_valid_json_deeper_than_the_limit_is_refused_and_the_limit_itself_is_not(api):
    _, _, client = api
    too_deep = post_raw(client, nested(MAX_JSON_DEPTH + 1))
    assert too_deep.status_code == 400 and too_deep.json()["error"]["code"] == "json_too_deep"
    at_limit = post_raw(client, nested(MAX_JSON_DEPTH))
    # parsed, then refused for what it says (content parts are not lists), never for its depth
    assert at_limit.status_code == 400 and at_limit.json()["error"]["code"] != "json_too_deep", at_limit.text


def test_brackets_inside_strings_are_text_not_nesting(api):
    _, _, client = api
    text = '[{"\\"' * 1000
    response = client.post(CHAT, json={"model": "stub", "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text


def test_a_declared_oversized_body_is_413_before_it_is_sent(api):
    base, key, _ = api
    limit = BodyLimits.from_settings(Settings()).for_path(CHAT)
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
        answer = sock.recv(4096).decode("latin-1")  # nothing of the body was sent
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    error = json.loads(answer.split("\r\n\r\n", 1)[1])["error"]  # OpenAI's shape, as every /v1 error
    assert error["code"] == "too_large" and error["type"] == "invalid_request_error" and "too large" in error["message"]


def test_a_chunked_body_past_the_limit_is_413_before_parsing_and_the_rest_is_not_read(api):
    """Unparseable JSON past the limit: a 400 would mean the body was parsed; 413 means it never was."""
    base, key, _ = api
    limit = BodyLimits.from_settings(Settings()).for_path(CHAT)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for _ in range(3):
        answer, sent = chunked_post(base, CHAT, headers, 4 * limit, filler=b"[" * (64 * 1024))
        assert sent < limit + 8 * MB  # refused while the body was still arriving: never read to the end
        if answer:
            break
    assert answer.startswith(b"HTTP/1.1 413") and b"too large" in answer, answer[:300]


@pytest.mark.parametrize("body, param", [
    (b'{"model": "stub", "messages": [{"role": ["user"], "content": "Hi"}]}', "messages[0].role"),
    (b'{"model": "stub", "messages": [{"role": {"a": 1}, "content": "Hi"}]}', "messages[0].role"),
    (b'{"model": "stub", "temperature": 1' + b"0" * 400 + b', "messages": [{"role": "user", "content": "Hi"}]}',
     "temperature"),
], ids=["role-list", "role-object", "400-digit-temperature"])
def test_a_role_of_the_wrong_type_or_a_number_beyond_a_float_is_a_400_naming_the_field(api, body, param):
    _, _, client = api
    response = post_raw(client, body)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
