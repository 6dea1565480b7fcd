"""Event streams are capped per visitor, per address, per console session and in total.

Each test attacks a real server over HTTP: it opens streams up to a cap, checks that the next
one is refused with 429 before it starts, that a closed stream gives its place back, and that
the server's count of open streams returns to zero whatever the clients did.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from bot.accounts import Accounts
from bot.store import Store
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium
from tests.live_server import live_server, wait_for

PASSWORD = "correct horse battery"
PER_VISITOR, PER_IP, PER_SESSION, TOTAL = 3, 5, 2, 9
WIDGET_EVENTS = "/widget/api/events"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("streams")
    accounts = Accounts(Store(data))
    for name in ("agent", "mei"):
        accounts.add_user(name, "agent", PASSWORD)
    with live_server(data, engine=StubEngine(), trusted_proxies="127.0.0.1", login_rate_per_ip=1000,
                     widget_rate_per_ip=100_000, widget_rate_per_visitor=100_000,
                     widget_streams_per_visitor=PER_VISITOR, widget_streams_per_ip=PER_IP,
                     console_streams_per_session=PER_SESSION, event_streams_total=TOTAL) as (base, app):
        yield base, app, data


@pytest.fixture(autouse=True)
def all_places_given_back(server):
    """After every test, every stream it opened has given its place back."""
    yield
    _, app, _ = server
    wait_for(lambda: open_streams(app) == 0, timeout=10, what="every stream's place to be given back")


def open_streams(app) -> int:
    return app.state.server.stream_caps.open


def visitor_token(base: str) -> str:
    return httpx.post(f"{base}/widget/api/session", json={}).json()["token"]


def from_address(address: str) -> dict:
    return {"X-Forwarded-For": address}


class Streams:
    """Streams opened by one client; closes them all when the block ends."""

    def __init__(self, base: str, **client) -> None:
        self.client = httpx.Client(base_url=base, timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=200),
                                   **client)
        self.open: list[httpx.Response] = []

    def __enter__(self) -> "Streams":
        return self

    def __exit__(self, *exc) -> None:
        for response in self.open:
            response.close()
        self.client.close()

    def get(self, path: str, **kwargs) -> httpx.Response:
        """Open a stream: a 200 has sent its first line; anything else is read whole."""
        response = self.client.send(self.client.build_request("GET", path, **kwargs), stream=True)
        if response.status_code == 200:
            response.lines = response.iter_lines()  # type: ignore[attr-defined]
            assert next(response.lines).startswith("retry:")  # type: ignore[attr-defined]
            self.open.append(response)
        else:
            response.read()
        return response

    def widget(self, token: str, address: str = "10.0.0.1") -> httpx.Response:
        return self.get(WIDGET_EVENTS, params={"token": token}, headers=from_address(address))

    def close(self, response: httpx.Response) -> None:
        self.open.remove(response)
        response.close()


def assert_refused(response: httpx.Response, wording: str) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"] == "too_many_streams"
    assert wording in body["message"]
    assert int(response.headers["retry-after"]) >= 1


def signed_in(base: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=httpx.Timeout(5.0))
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf})
    assert response.status_code == 303, response.text
    client.headers["X-CSRF-Token"] = client.get("/console/api/me").json()["csrf_token"]
    client.streams = []  # type: ignore[attr-defined]
    return client


def close_console(client: httpx.Client) -> None:
    for response in client.streams:  # type: ignore[attr-defined]
        response.close()
    client.close()


def console_stream(console: httpx.Client) -> httpx.Response:
    # A short read timeout: a reader that has seen nothing for a while lets go of the connection.
    request = console.build_request("GET", "/agent/api/events", timeout=httpx.Timeout(5.0, read=1.5))
    response = console.send(request, stream=True)
    console.streams.append(response)  # type: ignore[attr-defined]
    if response.status_code == 200:
        response.lines = response.iter_lines()  # type: ignore[attr-defined]
        assert next(response.lines).startswith("retry:")  # type: ignore[attr-defined]
    else:
        response.read()
    return response


def ends_within(response: httpx.Response, seconds: float) -> bool:
    """Whether the server ends the stream within `seconds` (keep-alives do not count as ending)."""
    ended = getattr(response, "ended", None)
    if ended is None:
        ended = response.ended = threading.Event()  # type: ignore[attr-defined]

        def read_to_the_end() -> None:
            try:
                for _ in response.lines:  # type: ignore[attr-defined]
                    pass
                ended.set()
            except (httpx.HTTPError, RuntimeError):  # nothing for a while (see console_stream), or closed
                pass

        threading.Thread(target=read_to_the_end, daemon=True).start()
    return ended.wait(seconds)


def test_one_visitor_gets_at_most_its_cap_and_a_closed_stream_frees_a_place(server):
    base, app, _ = server
    token, other = visitor_token(base), visitor_token(base)
    with Streams(base) as streams:
        admitted = [streams.widget(token) for _ in range(PER_VISITOR)]
        assert [r.status_code for r in admitted] == [200] * PER_VISITOR
        assert_refused(streams.widget(token), "too many tabs")
        assert streams.widget(other).status_code == 200  # another visitor is not held back
        streams.close(admitted[0])
        wait_for(lambda: streams.widget(token).status_code == 200, timeout=5, what="the closed stream's place")
        assert_refused(streams.widget(token), "too many tabs")


def test_one_address_gets_at_most_its_cap_whoever_the_visitors_are(server):
    base, _, _ = server
    with Streams(base) as streams:
        statuses = [streams.widget(visitor_token(base), "10.0.1.1").status_code for _ in range(PER_IP)]
        assert statuses == [200] * PER_IP
        assert_refused(streams.widget(visitor_token(base), "10.0.1.1"), "from your network")
        assert streams.widget(visitor_token(base), "10.0.1.2").status_code == 200


def test_ipv6_addresses_of_one_subscriber_share_the_address_cap(server):
    base, _, _ = server
    with Streams(base) as streams:
        for n in range(PER_IP):  # every stream from a different address inside one /64
            assert streams.widget(visitor_token(base), f"2001:db8:7:1::{n + 1:x}").status_code == 200
        assert_refused(streams.widget(visitor_token(base), "2001:db8:7:1:ffff::9"), "from your network")
        assert streams.widget(visitor_token(base), "2001:db8:7:2::1").status_code == 200


def test_the_total_counts_widget_and_console_streams_together(server):
    base, app, _ = server
    consoles = [signed_in(base, "agent"), signed_in(base, "mei")]
    held: list[httpx.Response] = []
    try:
        with Streams(base) as streams:
            for console in consoles:
                for _ in range(PER_SESSION):
                    held.append(console_stream(console))
            assert [r.status_code for r in held] == [200] * (2 * PER_SESSION)
            for n in range(TOTAL - 2 * PER_SESSION):  # each from its own address: only the total is reached
                assert streams.widget(visitor_token(base), f"10.0.2.{n + 1}").status_code == 200
            assert open_streams(app) == TOTAL
            assert_refused(streams.widget(visitor_token(base), "10.0.3.1"), "too many live connections")
            third = signed_in(base, "agent")
            assert_refused(console_stream(third), "too many live connections")
            held.pop().close()
            wait_for(lambda: console_stream(third).status_code == 200, timeout=5, what="a place in the total")
            close_console(third)
    finally:
        for response in held:
            response.close()
        for console in consoles:
            close_console(console)


def test_a_console_session_gets_at_most_its_cap(server):
    base, _, _ = server
    first, second = signed_in(base, "agent"), signed_in(base, "agent")
    try:
        held = [console_stream(first) for _ in range(PER_SESSION)]
        assert [r.status_code for r in held] == [200] * PER_SESSION
        assert_refused(console_stream(first), "console session")
        extra = console_stream(second)  # the same user's other session has its own places
        assert extra.status_code == 200
    finally:
        close_console(first)
        close_console(second)


def test_signing_out_ends_the_sessions_console_streams(server):
    base, _, _ = server
    console, other = signed_in(base, "mei"), signed_in(base, "mei")
    try:
        stream, kept = console_stream(console), console_stream(other)
        assert stream.status_code == kept.status_code == 200
        assert console.post("/logout").status_code == 303
        assert ends_within(stream, 3.0)
        assert console.get("/agent/api/events").status_code == 401
        assert not ends_within(kept, 1.0)  # the user's other session is still signed in
    finally:
        close_console(console)
        close_console(other)


def test_end_sessions_closes_a_users_streams_at_once(server):
    base, app, _ = server
    first, second, bystander = signed_in(base, "agent"), signed_in(base, "agent"), signed_in(base, "mei")
    try:
        streams = [console_stream(first), console_stream(second)]
        watching = console_stream(bystander)

        async def end():
            return app.state.server.console_hub.end_sessions(user_name="agent")

        assert asyncio.run_coroutine_threadsafe(end(), app.state.runtime.loop).result(5) == 2
        assert all(ends_within(s, 2.0) for s in streams)  # not at the next keep-alive, 15 s away
        assert not ends_within(watching, 1.0)
    finally:
        for client in (first, second, bystander):
            close_console(client)


@pytest.mark.parametrize("name, change", [("gone", "update users set disabled = 1 where name = 'gone'"),
                                          ("moved", "update users set role = 'operator' where name = 'moved'")])
def test_an_account_changed_by_another_process_loses_its_stream_at_the_next_keep_alive(server, monkeypatch, name,
                                                                                      change):
    """The backstop: an account disabled or moved off the agent role behind the hub's back (by
    `snapdesk user` in another process; here, in the database directly) is noticed at the next
    keep-alive tick."""
    import bot.web.console_events as console_events

    base, _, data = server
    monkeypatch.setattr(console_events, "KEEPALIVE_S", 0.5)
    accounts = Accounts(Store(data))
    accounts.add_user(name, "agent", PASSWORD)
    console = signed_in(base, name)
    try:
        stream = console_stream(console)
        assert stream.status_code == 200
        assert not ends_within(stream, 1.2)  # keep-alives flow while the account is fine
        with accounts.store.transaction():
            accounts.store.db.conn.execute(change)
        assert ends_within(stream, 3.0)
    finally:
        close_console(console)


def test_concurrent_opens_admit_exactly_the_cap(server):
    base, app, _ = server
    token = visitor_token(base)
    attempts = 24
    barrier = threading.Barrier(attempts)
    results: list[int] = []
    done = threading.Event()

    def attempt() -> None:
        with Streams(base) as streams:
            barrier.wait()
            results.append(streams.widget(token, "10.0.4.1").status_code)
            done.wait(10)

    threads = [threading.Thread(target=attempt) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(results) == attempts, timeout=20, what="every attempt to be answered")
    assert sorted(results) == [200] * PER_VISITOR + [429] * (attempts - PER_VISITOR)
    assert open_streams(app) == PER_VISITOR
    done.set()
    for thread in threads:
        thread.join()


def test_clients_that_vanish_before_or_during_the_stream_give_their_places_back(server):
    base, app, _ = server
    token = visitor_token(base)
    host, port = base.removeprefix("http://").split(":")
    request = (f"GET {WIDGET_EVENTS}?token={token} HTTP/1.1\r\nHost: {host}\r\n"
               "X-Forwarded-For: 10.0.5.1\r\n\r\n").encode()
    for n in range(30):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(request)
        if n % 3 == 1:
            sock.recv(64)  # the response started
        if n % 3 == 2:  # a reset rather than an orderly close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    wait_for(lambda: open_streams(app) == 0, timeout=10, what="the vanished clients' places")
    with Streams(base) as streams:
        assert [streams.widget(token, "10.0.5.1").status_code for _ in range(PER_VISITOR)] == [200] * PER_VISITOR


ATTACKER = textwrap.dedent("""
    import json, sys, time, httpx
    base, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = httpx.Client(base_url=base, timeout=5, limits=httpx.Limits(max_connections=1000))
    held, statuses = [], []
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = client.send(client.build_request("GET", "/widget/api/events", params={"token": token}), stream=True)
        statuses.append(r.status_code)
        held.append(r) if r.status_code == 200 else r.close()
    print(json.dumps({"admitted": statuses.count(200), "refused": statuses.count(429), "all": len(statuses)}))
""")


def healthz_latencies(base: str, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(count):
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            times.append(time.perf_counter() - start)
            time.sleep(0.01)
    return times


def test_a_stream_flood_from_one_visitor_is_refused_and_healthz_stays_fast(server):
    base, _, _ = server
    token = visitor_token(base)
    quiet = statistics.median(healthz_latencies(base, 30))
    attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, base, token, "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        during = statistics.median(healthz_latencies(base, 30))
        report = json.loads(attacker.stdout.readline())
    finally:
        attacker.kill()
        attacker.wait()
    assert report["admitted"] == PER_VISITOR
    assert report["refused"] == report["all"] - PER_VISITOR and report["refused"] > 20
    assert during < 10 * quiet + 0.05, (quiet, during)


@needs_chromium
def test_a_widget_tab_refused_a_stream_backs_off_and_gets_in_when_a_place_frees(tmp_path):
    """One place per visitor: the second tab's stream is refused, and the widget retries with a
    growing delay (1 s, 2 s, 4 s ...) rather than in a loop, then connects once the first tab closes."""
    with live_server(tmp_path, engine=StubEngine(), widget_streams_per_visitor=1) as (base, app), \
            chromium() as browser:
        context = browser.new_context(locale="en-US")
        first = context.new_page()
        first.goto(base + "/")
        first.click("[data-testid=launcher]")
        wait_for(lambda: open_streams(app) == 1, timeout=10, what="the first tab's stream")
        second = context.new_page()  # the same visitor: the token is in this browser's storage
        attempts: list[float] = []
        answers: list[int] = []
        second.on("request", lambda r: attempts.append(time.monotonic()) if WIDGET_EVENTS in r.url else None)
        second.on("response", lambda r: answers.append(r.status) if WIDGET_EVENTS in r.url else None)
        second.goto(base + "/")
        second.click("[data-testid=launcher]")
        second.wait_for_timeout(5000)
        assert 2 <= len(attempts) <= 4, attempts  # at 0 s, 1 s, 3 s: never a tight loop
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
        assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps
        assert open_streams(app) == 1 and set(answers) == {429}
        first.close()
        deadline = time.monotonic() + 15
        while 200 not in answers and time.monotonic() < deadline:
            second.wait_for_timeout(100)  # Playwright delivers the page's events while it waits
        assert 200 in answers, answers
        assert open_streams(app) == 1
        context.close()
