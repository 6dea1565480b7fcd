"""What an attacker on the network, or another user of the same machine, can no longer do to a
running server: fill its disk or memory with a chunked upload, read its data files, scrape its
metrics, or dodge per-address limits with a forged X-Forwarded-For."""

from __future__ import annotations

import io
import os
import re
import stat
import threading
import tracemalloc

import httpx
import pytest
from PIL import Image
from starlette.datastructures import UploadFile

from bot.store import Store
from bot.web.client_address import limit_key
from engine.stub import StubEngine
from tests.live_server import PASSWORD, live_server
from tests.raw_http import refused_upload

MB = 1024 * 1024
BOUNDARY = "snapdeskboundary42"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("hardening")
    with live_server(data, engine=StubEngine(), widget_max_images=1, image_max_bytes=MB, login_rate_per_ip=1000,
                     metrics_token="scrape-me-please", users={"ada": "admin"}) as (base, app):
        yield base, app, data


class UploadMeter:
    """Counts, inside the server, the bytes any form parser writes into uploaded files (what
    would reach the temporary files on disk) and the peak of Python memory meanwhile."""

    def __init__(self, monkeypatch) -> None:
        self.written = 0
        self._lock = threading.Lock()
        original = UploadFile.write

        async def counting_write(upload, data: bytes) -> None:
            with self._lock:
                self.written += len(data)
            await original(upload, data)

        monkeypatch.setattr(UploadFile, "write", counting_write)

    def __enter__(self) -> "UploadMeter":
        tracemalloc.start()
        return self

    def __exit__(self, *exc) -> None:
        _, self.peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()


def test_a_chunked_screenshot_upload_stops_at_the_limit_on_disk_and_in_memory(server, monkeypatch):
    base, _, _ = server
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"client_message_id\"\r\n\r\nchunked-0001\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nmy bill\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"bill.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    with UploadMeter(monkeypatch) as meter:
        status, sent = refused_upload(base, "/widget/api/messages", {
            "Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            400 * MB, head)
    route_limit = 1 * MB + 4 * 1024 + 4 * 4000 + 64 * 1024  # one 1 MB screenshot, its text, the form around it
    assert status == 413
    assert meter.written <= route_limit, f"{meter.written} bytes reached the upload files"
    assert sent < route_limit + 16 * MB, f"the server read {sent / MB:.0f} MB before refusing"
    assert meter.peak < route_limit + 8 * MB, f"Python memory peaked {meter.peak / MB:.1f} MB during the upload"


def test_a_chunked_sign_in_form_stops_at_its_limit(server, monkeypatch):
    base, _, _ = server
    with UploadMeter(monkeypatch) as meter:
        status, sent = refused_upload(base, "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                                      200 * MB, b"name=ada&password=")
    assert status == 413
    assert sent < 16 * MB, f"the server read {sent / MB:.0f} MB of a sign-in form before refusing"
    assert meter.peak < 8 * MB, f"Python memory peaked {meter.peak / MB:.1f} MB during the sign-in flood"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), "navy").save(buffer, "PNG")
    return buffer.getvalue()


def test_the_data_directory_is_readable_by_its_owner_only(server):
    base, _, data = server
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    response = httpx.post(f"{base}/widget/api/messages", headers={"Authorization": f"Bearer {token}"},
                          data={"client_message_id": "private-0001", "text": "my bill"},
                          files=[("images", ("bill.png", _png(), "image/png"))])
    assert response.status_code == 202
    attachments = [p for p in (data / "attachments").rglob("*.png")]
    assert attachments, "the screenshot was stored"
    for directory in [data, data / "attachments", *{p.parent for p in attachments}]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in ("snapdesk.db", "snapdesk.db-wal", "snapdesk.db-shm", "secret_key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    for path in attachments:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_existing_open_data_directory_is_closed_at_start(tmp_path):
    data = tmp_path / "shared"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    Store(data).close()
    database = data / "snapdesk.db"
    os.chmod(database, 0o644)
    Store(data).close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_metrics_need_the_token_and_readyz_names_no_path(server):
    base, _, _ = server
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer scrape-me-please"})
    assert scraped.status_code == 200 and "snapdesk_messages_total" in scraped.text
    ready = httpx.get(f"{base}/readyz")
    assert ready.json() == {"status": "ready"}
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_api_docs_can_be_hidden(tmp_path):
    with live_server(tmp_path, engine=StubEngine(), api_docs=False) as (base, _):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{base}{path}").status_code == 404, path
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_console_answers_are_never_cached(server):
    base, _, _ = server
    client = httpx.Client(base_url=base)
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    assert client.post("/login", data={"name": "ada", "password": PASSWORD, "csrf_token": csrf}).status_code == 303
    for path in ("/console/api/me", "/agent/api/queue", "/operator/api/templates", "/admin/api/users"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store", path


def widget_statuses(base: str, forwarded_for: list[str]) -> list[int]:
    return [httpx.post(f"{base}/widget/api/session", json={}, headers={"X-Forwarded-For": address}).status_code
            for address in forwarded_for]


def test_a_forged_forwarded_for_does_not_buy_more_requests(tmp_path):
    """Rotating X-Forwarded-For from a peer that is not a trusted proxy changes nothing."""
    with live_server(tmp_path, engine=StubEngine(), widget_rate_per_ip=3) as (base, _):
        statuses = widget_statuses(base, [f"203.0.113.{i}" for i in range(10)])
    assert statuses[:3] == [200] * 3 and statuses.count(429) >= 6


def test_forwarded_for_is_believed_from_a_trusted_proxy(tmp_path):
    with live_server(tmp_path, engine=StubEngine(), widget_rate_per_ip=3, trusted_proxies="127.0.0.1") as (base, _):
        assert widget_statuses(base, [f"203.0.113.{i}" for i in range(10)]) == [200] * 10
        assert widget_statuses(base, ["198.51.100.7"] * 5).count(429) >= 2  # one client behind the proxy


def test_ipv6_clients_share_their_64_block():
    assert limit_key("2001:db8:1:2::1") == limit_key("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:192.0.2.9") == "192.0.2.9" and limit_key("192.0.2.9") == "192.0.2.9"
