"""What an attacker can do to a running `snapdesk serve` (stub engine, loopback), as figures.

Sign-in answers must not tell real accounts from others (timing ratios between unknown,
disabled, throttled and wrong-password tries); a flood of bad sign-ins and a flood of event
streams must leave other clients' latency alone (ratio against the quiet median, same run);
template bombs and a chunked upload must be refused at once.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bot.accounts import Accounts
from bot.settings import Settings
from bot.store import Store
from bot.web.body_limits import BodyLimits
from tests.live_server import free_port
from tests.raw_http import refused_upload

from .figures import Figure
from .widget_load import start_server

PASSWORD = "correct horse battery"
TRIES = 15
FLOOD = 40
MB = 1024 * 1024


def _sign_in_form(client: httpx.Client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)


def _sign_in_ms(base: str, name: str, password: str) -> tuple[float, int]:
    with httpx.Client(base_url=base) as client:
        csrf = _sign_in_form(client)
        started = time.perf_counter()
        response = client.post("/login", data={"name": name, "password": password, "csrf_token": csrf})
        return (time.perf_counter() - started) * 1000, response.status_code


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _sign_in_figures(base: str) -> list[Figure]:
    for _ in range(6):  # past the free failures: the name now waits
        _sign_in_ms(base, "target", "guess")
    tries: dict[str, list[tuple[float, int]]] = {"wrong": [], "unknown": [], "disabled": [], "throttled": []}
    for i in range(TRIES):  # one of each per round: the machine's load drifts alike for all four
        tries["wrong"].append(_sign_in_ms(base, f"agent{i}", "not the password"))
        tries["unknown"].append(_sign_in_ms(base, f"nobody{i}", "not the password"))
        tries["disabled"].append(_sign_in_ms(base, f"gone{i}", PASSWORD))
        tries["throttled"].append(_sign_in_ms(base, "target", "guess"))
    medians = {kind: statistics.median(ms for ms, _ in answers) for kind, answers in tries.items()}
    spread = max(medians.values()) / min(medians.values())
    figures = [Figure(f"sign_in_{kind}_ms", value, "", f"median answer to a {kind} sign-in, {TRIES} tries")
               for kind, value in medians.items()]
    figures.append(Figure("sign_in_timing_spread", spread, "<= 2.0",
                          "slowest over fastest median of unknown, disabled, throttled and wrong sign-ins"))
    figures.append(Figure("sign_in_throttled_refusals", sum(status == 429 for _, status in tries["throttled"]), "",
                          f"of {TRIES} tries on a throttled name, answered 429"))
    return figures


def _during(background, work) -> float:
    stop = threading.Event()
    threads = [threading.Thread(target=background, args=(stop,), daemon=True) for _ in range(FLOOD)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        return work()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def _flood_figures(base: str) -> list[Figure]:
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    widget = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})

    def conversation():
        widget.get("/widget/api/conversation").raise_for_status()

    def bad_sign_ins(stop: threading.Event):
        with httpx.Client(base_url=base) as client:
            i = 0
            while not stop.is_set():
                client.post("/login", data={"name": f"flood{threading.get_ident()}-{i}", "password": "x" * 12,
                                            "csrf_token": _sign_in_form(client)})
                i += 1

    quiet = _median_ms(conversation, 60)
    flooded = _during(bad_sign_ins, lambda: _median_ms(conversation, 60))
    health = httpx.Client(base_url=base)
    quiet_health = _median_ms(lambda: health.get("/healthz"), 60)
    admitted, refused = _stream_flood(base, token)
    flooded_health = _median_ms(lambda: health.get("/healthz"), 60)
    for stream in admitted:
        stream.close()
    return [
        Figure("widget_ms_quiet", quiet, "", "median widget GET /conversation, nothing else running"),
        Figure("widget_ms_login_flood", flooded, "<= 50", f"the same during {FLOOD} clients' bad sign-ins "
               "(password checks take the other cores; before they left the database thread: ~900 ms)"),
        Figure("widget_login_flood_ratio", flooded / quiet, "", "during the flood over quiet"),
        Figure("streams_admitted_one_visitor", len(admitted), "<= 3", "event streams one visitor got of 200 tried"),
        Figure("streams_refused_one_visitor", refused, "", "of those, answered 429"),
        Figure("healthz_stream_flood_ratio", flooded_health / quiet_health, "<= 5",
               "median /healthz with the streams open over quiet"),
    ]


def _stream_flood(base: str, token: str) -> tuple[list, int]:
    admitted, refused = [], 0
    for _ in range(200):
        client = httpx.Client(base_url=base, timeout=10)
        request = client.build_request("GET", "/widget/api/events", params={"token": token})
        response = client.send(request, stream=True)
        if response.status_code == 200:
            admitted.append(client)
        else:
            refused += response.status_code == 429
            response.close()
            client.close()
    return admitted, refused


def _operator_figures(base: str) -> list[Figure]:
    operator = httpx.Client(base_url=base, timeout=30)
    csrf = _sign_in_form(operator)
    operator.post("/login", data={"name": "olga", "password": PASSWORD, "csrf_token": csrf})
    operator.headers["X-CSRF-Token"] = operator.get("/console/api/me").json()["csrf_token"]
    billing = operator.get("/operator/api/templates/billing").json()["yaml"]
    bombs = {
        "brackets": billing + "extra: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "join": billing.replace("{{ user_name }}", "{{ " + " ~ ".join(["company"] * 12_000) + " }}", 1),
    }
    slowest, statuses = 0.0, set()
    for text in bombs.values():
        started = time.perf_counter()
        statuses.add(operator.post("/operator/api/validate", json={"yaml": text}).status_code)
        slowest = max(slowest, time.perf_counter() - started)
    return [
        Figure("template_bomb_answer_ms", slowest * 1000, "<= 1000", "slowest answer to a template bomb"),
        Figure("template_bomb_not_400", len(statuses - {400}), "<= 0", "bombs answered otherwise than 400"),
    ]


def _upload_figures(base: str) -> list[Figure]:
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    boundary = "benchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"client_message_id\"\r\n\r\nbench-0001\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    status, sent = refused_upload(base, "/widget/api/messages", {
        "Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        400 * MB, head)
    limit = BodyLimits.from_settings(Settings()).for_path("/widget/api/messages")
    return [Figure("chunked_upload_sent_over_limit_mb", (sent - limit) / MB, "<= 16",
                   f"MB of a 400 MB chunked upload sent past the {limit / MB:.0f} MB limit before the {status}")]


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        accounts = Accounts(Store(Path(tmp)))
        for i in range(TRIES):
            accounts.add_user(f"agent{i}", "agent", PASSWORD)
            accounts.add_user(f"gone{i}", "agent", PASSWORD)
            accounts.disable_user(f"gone{i}", "bench")
        accounts.add_user("target", "agent", PASSWORD)
        accounts.add_user("olga", "operator", PASSWORD)
        accounts.store.close()
        port = free_port()
        server = start_server(tmp, port, {"SNAPDESK_ENGINE": "stub", "SNAPDESK_LOGIN_RATE_PER_IP": "1000000",
                                          "SNAPDESK_LOGIN_FREE_FAILURES_PER_IP": "1000000"})
        base = f"http://127.0.0.1:{port}"
        try:
            return _sign_in_figures(base) + _flood_figures(base) + _operator_figures(base) + _upload_figures(base)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    from .figures import print_figures

    print_figures(run())
