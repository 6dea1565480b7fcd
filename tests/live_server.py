"""Running the real Snapdesk app on a loopback port inside the test process."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from bot.settings import Settings
from bot.web.app import create_app, server_config


def sse_events(lines):
    """(event, data) pairs from the lines of a server-sent event stream."""
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            yield event, json.loads(line[6:])


def wait_for(predicate, timeout: float = 10.0, what: str = "a condition"):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PASSWORD = "correct horse battery"  # every console account the test servers create has it


def add_accounts(data_dir: Path, users: dict[str, str]) -> None:
    """Console accounts (name -> role), all with PASSWORD, before a server opens the data."""
    from bot.accounts import Accounts
    from bot.store import Store

    store = Store(data_dir)
    try:
        accounts = Accounts(store)
        for name, role in users.items():
            accounts.add_user(name, role, PASSWORD)
    finally:
        store.close()


@contextmanager
def live_server(data_dir: Path, engine=None, users: dict[str, str] | None = None, **settings):
    """Serve create_app(...) on 127.0.0.1 until the block ends; yields (base_url, app).
    `users` (name -> role) are console accounts created first, with PASSWORD."""
    if users:
        add_accounts(data_dir, users)
    port = free_port()
    config = Settings(data_dir=data_dir, host="127.0.0.1", port=port, **settings)
    app = create_app(config, engine=engine)
    server = uvicorn.Server(server_config(app, config, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        raise RuntimeError("the test server did not become ready")
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(timeout=15)
