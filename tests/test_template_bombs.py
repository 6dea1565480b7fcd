"""Template bombs and leaks, sent by a signed-in operator to a real server over HTTP.

Each bomb once froze the whole server or ate gigabytes: 20 KB of nested brackets in the YAML
(31 s without any HTTP answered, then a 500), a `~` joining a long variable thousands of times
(1.8 GB), deeply nested Jinja, huge repetitions. Now each is refused with a 400 naming the limit
and where, in well under a second, on every route that reads a draft, while other clients are
served as usual and the process's memory stays small. Object representations (a method and its
memory address) never reach rendered text, for the operator or in a prompt.
"""

from __future__ import annotations

import statistics
import threading
import time
import tracemalloc

import httpx
import pytest
import yaml

from engine.stub import StubEngine
from tests.live_server import live_server, wait_for
from tests.test_agent_console import ROLES, signed_in

ENGINE = StubEngine(reply="Your membership renewed automatically for 88.", confidence=0.83)
BIG = 60_000  # characters of a variable; the YAML itself may hold at most 128 KB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("template-bombs"), engine=ENGINE, login_rate_per_ip=1000,
                     widget_rate_per_ip=100_000, widget_rate_per_visitor=100_000,
                     users={role: role for role in ROLES}) as (base, app):
        yield base, app


@pytest.fixture(scope="module")
def operator(server):
    return signed_in(server[0], "operator")


@pytest.fixture(scope="module")
def billing(operator) -> str:
    return operator.get("/operator/api/templates/billing").json()["yaml"]


def draft(base: str, en: str | None = None, **variables: str) -> str:
    data = yaml.safe_load(base)
    if en is not None:
        data["system_prompt"]["en"] = en + "\n{{ decline_marker }}"
    data["variables"].update(variables)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1_000_000)


# name: (how to make it from the shipped billing template, what the refusal says)
BOMBS = {
    "yaml_nested_brackets": (lambda y: y + "extra: " + "[" * 10_000 + "]" * 10_000 + "\n",
                             "nested more than 24 levels deep"),
    "yaml_nested_mappings": (lambda y: y + "extra: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
                             "nested more than 24 levels deep"),
    "tilde_join_as_reported": (lambda y: draft(y, "{{ " + " ~ ".join(["big"] * 12_000) + " }}", big="a" * 150_000),
                               "longer than 131072 characters"),
    "tilde_join": (lambda y: draft(y, "{{ " + " ~ ".join(["big"] * 2_500) + " }}", big="a" * BIG),
                   "joining text with ~ beyond 100000 characters"),
    "plus_join": (lambda y: draft(y, "{{ (big + big) + (big + big) }}", big="a" * BIG),
                  "joining text with + beyond 100000 characters"),
    "nested_brackets": (lambda y: draft(y, "{{ " + "(" * 5_000 + "company" + ")" * 5_000 + " }}"),
                        "brackets nested more than 20 deep"),
    "nested_ifs": (lambda y: draft(y, "{% if company %}" * 1_500 + "x" + "{% endif %}" * 1_500),
                   "blocks nested more than 20 deep"),
    "filter_chain": (lambda y: draft(y, "{{ company" + "|trim" * 3_000 + " }}"), "an expression is too complex"),
    "operator_chain": (lambda y: draft(y, "{{ " + "not " * 5_000 + "company }}"), "operators in a row"),
    "huge_repeat": (lambda y: draft(y, "{{ company * 1000000000 }}"), "repeating text beyond 10000 characters"),
    "list_repeat": (lambda y: draft(y, "{{ [big] * 100000 }}", big="a" * BIG), "repeating text beyond"),
    "list_shown": (lambda y: draft(y, "{{ [" + ", ".join(["big"] * 2_000) + "] }}", big="a" * BIG),
                   "the rendered text is longer than 100000 characters"),
    "list_as_string": (lambda y: draft(y, "{{ [" + ", ".join(["big"] * 2_000) + "]|string|length }}", big="a" * BIG),
                       "the value given to the 'string' filter is longer than"),
    "huge_power": (lambda y: draft(y, "{{ 2 ** 100000000 }}"), "powers above 64"),
    "huge_number": (lambda y: draft(y, "{{ 1" + "0" * 40_000 + " }}"), "numbers longer than 100 digits"),
    "too_many_values": (lambda y: y + "extra: [" + ",".join(["1"] * 30_000) + "]\n", "more than 5000 values"),
}


def send(operator: httpx.Client, route: str, text: str) -> httpx.Response:
    if route == "try":
        return operator.post("/operator/api/try", data={"yaml": text, "text": "Why was I charged?"}, timeout=30)
    path = {"validate": "/operator/api/validate", "runs": "/operator/api/templates/billing/runs",
            "publish": "/operator/api/templates/billing/publish"}[route]
    return operator.post(path, json={"yaml": text}, timeout=30)


ROUTES = ("validate", "try", "runs", "publish")


@pytest.mark.parametrize("name", list(BOMBS))
def test_each_bomb_is_refused_with_a_400_naming_the_limit_on_every_route(server, operator, billing, name):
    make, says = BOMBS[name]
    text = make(billing)
    before = len(operator.get("/operator/api/templates/billing/versions").json()["versions"])
    asked = len(ENGINE.requests)
    for route in ROUTES:
        # CPU seconds of this process (the server runs in it): what the bomb cost, whatever else
        # the machine is doing; a bomb that was evaluated would cost far more.
        started = time.process_time()
        response = send(operator, route, text)
        elapsed = time.process_time() - started
        assert response.status_code == 400, (route, response.status_code, response.text[:300])
        body = response.json()
        assert body["error"] == "template_too_complex"
        assert says in body["message"], (route, body["message"])
        assert body["message"].startswith("The template is too big or too complex: ")
        assert any(says in issue["message"] for issue in body["issues"])
        assert elapsed < 1.0, f"{route}: {elapsed:.2f} CPU s"
    assert len(operator.get("/operator/api/templates/billing/versions").json()["versions"]) == before
    assert len(ENGINE.requests) == asked, "a refused draft never reaches the engine"


def test_refusals_say_where(operator, billing):
    text = BOMBS["yaml_nested_brackets"][0](billing)
    issue = send(operator, "validate", text).json()["issues"][0]
    assert issue["field"] == "yaml" and issue["line"] == billing.count("\n") + 1
    text = draft(billing, "Hello.\n{{ " + "(" * 50 + "company" + ")" * 50 + " }}")
    issue = send(operator, "validate", text).json()["issues"][0]
    assert issue["field"] == "system_prompt.en" and issue["line"] is not None


def test_range_and_calls_are_refused_as_content_not_run(operator, billing):
    started = time.process_time()  # CPU seconds of this process, which runs the server
    result = send(operator, "validate", draft(billing, "{{ range(1000000000)|length }}")).json()
    assert time.process_time() - started < 1.0
    assert result["ok"] is False and any("calling 'range()' is not allowed" in i["message"] for i in result["issues"])


def test_a_draft_gets_its_answer_within_the_time_limit(operator, billing, monkeypatch):
    # The wall behind the limits: whatever the work costs, the request is answered in time.
    data = yaml.safe_load(billing)
    data["examples"] = [{"text": f"Why was I charged {i} times?", "expect": "answer", "notes": "n" * 400}
                        for i in range(200)]
    large = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)  # within every limit, but takes a while
    assert send(operator, "validate", large).json()["ok"]
    monkeypatch.setattr("bot.template_work.TIME_LIMIT_S", 0.01)
    started = time.process_time()  # the budget counts the render's CPU time, so does this check
    response = send(operator, "validate", large)
    assert time.process_time() - started < 1.0
    assert response.status_code == 400 and "took longer than 0.01 s" in response.json()["message"]


def latencies(client: httpx.Client, path: str, headers: dict, seconds: float) -> list[float]:
    out = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        assert client.get(path, headers=headers).status_code == 200
        out.append(time.perf_counter() - started)
        time.sleep(0.01)
    return out


def test_other_clients_are_served_while_bombs_go_off(server, operator, billing):
    base, _ = server
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    visitor = {"Authorization": f"Bearer {token}"}
    bombs = [make(billing) for make, _ in BOMBS.values()]
    with httpx.Client(base_url=base) as client:
        latencies(client, "/healthz", {}, 0.3)  # warm up
        quiet_health = latencies(client, "/healthz", {}, 1.0)
        quiet_widget = latencies(client, "/widget/api/conversation", visitor, 1.0)

        stop = threading.Event()
        answers: list[int] = []

        def bomber(offset: int) -> None:
            bomber_client = signed_in(base, "operator")
            i = offset
            while not stop.is_set():
                answers.append(send(bomber_client, ROUTES[i % len(ROUTES)], bombs[i % len(bombs)]).status_code)
                i += 1

        threads = [threading.Thread(target=bomber, args=(n,), daemon=True) for n in range(2)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(answers) >= 3, timeout=10, what="the first bombs")
            busy_health = latencies(client, "/healthz", {}, 1.5)
            busy_widget = latencies(client, "/widget/api/conversation", visitor, 1.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert len(answers) >= 10 and set(answers) == {400}
    for quiet, busy in ((quiet_health, busy_health), (quiet_widget, busy_widget)):
        # Before the limits, one bomb held every request for seconds; now the work runs beside them.
        # (Clients, bombers and server share one process and its interpreter lock here.)
        assert statistics.median(busy) < 20 * statistics.median(quiet) + 0.1, (statistics.median(quiet),
                                                                               statistics.median(busy))
        assert max(busy) < 1.0


MEMORY_BOMBS = ("yaml_nested_brackets", "tilde_join", "plus_join", "list_repeat", "list_shown", "list_as_string",
                "huge_power")


def test_memory_stays_small_while_bombs_are_refused(operator, billing):
    texts = [BOMBS[name][0](billing) for name in MEMORY_BOMBS]
    tracemalloc.start()  # the server runs in this process: its allocations are traced too
    try:
        statuses = [send(operator, "validate", text).status_code for text in texts]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The `~` bomb alone would build 150 MB of text, the reported one 1.8 GB.
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert statuses == [400] * len(texts)


# --------------------------------------------------------------------------------------------
# Object representations


LEAKS = [
    "{{ company[k]|string }}",
    "{{ company[k] }}",
    "{{ company[k] ~ '' }}",
    "{{ company[k]|upper }}",
    "{{ company[k]|wordcount }}",
    "{{ {'a': 1}[items] }}",
    "{{ [company[k]]|string }}",
]


@pytest.mark.parametrize("source", LEAKS)
def test_no_object_representation_reaches_the_operator(operator, billing, source):
    text = draft(billing, source, k="upper", items="items")
    response = send(operator, "validate", text)
    assert response.status_code == 200
    result = response.json()
    assert result["ok"] is False and result["preview"] is None
    assert any("a function or method" in issue["message"] for issue in result["issues"]), result["issues"]
    for leak in ("0x", "built-in", "<", "object at"):
        assert leak not in response.text
    tried = send(operator, "try", text)
    assert tried.status_code == 422 and "0x" not in tried.text


def leaking(live: str) -> str:
    data = yaml.safe_load(live)
    data["variables"]["k"] = "upper"
    data["system_prompt"]["en"] = "Address: {{ company[k] }} {{ company[k]|string }}\n{{ decline_marker }}"
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


STORED = {
    "leak": leaking,
    "yaml_bomb": lambda live: live + "extra: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "tilde_bomb": lambda live: BOMBS["tilde_join"][0](live).replace("{{ decline_marker }}",
                                                                    "Address: {{ decline_marker }}"),
}


@pytest.mark.parametrize("name", list(STORED))
def test_a_stored_version_past_the_checks_never_reaches_a_prompt(server, operator, name):
    # A version stored before these checks existed (or written to the database by hand) is live.
    base, app = server
    store = app.state.runtime.store
    live = store.published_template_versions("general")[0]["body"]
    version = store.add_template_version("general", STORED[name](live), author="someone", publish=True)
    try:
        restored = operator.post("/operator/api/templates/general/restore", json={"version": version})
        assert restored.status_code == (422 if name == "leak" else 400), restored.text
        assert "0x" not in restored.text
        for attempt in range(2):
            token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            asked = len(ENGINE.requests)
            started = time.perf_counter()
            response = httpx.post(f"{base}/widget/api/messages", headers=headers,
                                  data={"client_message_id": f"{name}-{attempt:04d}", "text": "Why was I charged?"})
            assert response.status_code == 202
            wait_for(lambda: len(ENGINE.requests) > asked, what="the model to be asked")
            assert time.perf_counter() - started < 2.0
            system = ENGINE.requests[asked].messages[0].parts[0].text
            assert "built-in" not in system and "0x" not in system and "Address:" not in system
            assert "Acme" in system  # the previous published version answered instead
    finally:
        store.add_template_version("general", live, author="someone", publish=True)
