"""Accounts that admins can manage, over the real server and the `snapdesk user` command: enable,
change role, reset a password (changed at the next sign-in), sign out everywhere, one's own
password change, and the page a console shows to a role that may not use it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from bot.accounts import Accounts
from bot.store import CLAIMED, WAITING, Store
from engine.stub import StubEngine
from tests.live_server import PASSWORD, live_server

TEMPORARY = "temporary password 1"
CHOSEN = "my very own password"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("account-admin")
    with live_server(data, engine=StubEngine(), login_rate_per_ip=100_000,
                     users={"admin": "admin", "olga": "operator"}) as (base, app):
        yield base, app, Accounts(Store(data))


def sign_in(base: str, name: str, password: str = PASSWORD) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=httpx.Timeout(10.0))
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"name": name, "password": password, "csrf_token": csrf})
    if response.status_code == 303:
        client.headers["X-CSRF-Token"] = client.get("/console/api/me").json()["csrf_token"]
    return client, response


def signed_in(base: str, name: str, password: str = PASSWORD) -> httpx.Client:
    client, response = sign_in(base, name, password)
    assert response.status_code == 303, response.text
    return client


def change_password(client: httpx.Client, current: str, new: str, repeat: str | None = None,
                    next_path: str = "/") -> httpx.Response:
    page = client.get("/account/password")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/account/password", data={"csrf_token": csrf, "current_password": current,
                                                  "new_password": new, "repeat_password": repeat or new,
                                                  "next": next_path})


def new_agent(accounts: Accounts, name: str) -> None:
    accounts.add_user(name, "agent", PASSWORD)


def claim_for(app, agent: str, key: str) -> int:
    store = app.state.runtime.store
    conversation = store._ensure_conversation("widget", key, key, "Visitor", "2026-01-01T00:00:00")
    store.set_owner(conversation["id"], CLAIMED, agent)
    return conversation["id"]


def audit_actions(app, target: str) -> list[str]:
    rows = app.state.runtime.store._all("select action from audit_log where target = ? order by id", [target])
    return [r["action"] for r in rows]


def test_a_reset_password_works_once_and_must_be_replaced_before_any_console(server):
    base, app, accounts = server
    new_agent(accounts, "mei")
    admin = signed_in(base, "admin")
    laptop, phone = signed_in(base, "mei"), signed_in(base, "mei")

    weak = admin.post("/admin/api/users/mei/reset-password", json={"password": "short"})
    assert weak.status_code == 422 and "at least 10" in weak.json()["message"]
    reset = admin.post("/admin/api/users/mei/reset-password", json={"password": TEMPORARY})
    assert reset.status_code == 200 and reset.json()["sessions_ended"] == 2
    assert laptop.get("/console/api/me").status_code == 401 and phone.get("/agent/api/queue").status_code == 401
    assert sign_in(base, "mei", PASSWORD)[1].status_code == 401  # the old password is gone

    mei, landed = sign_in(base, "mei", TEMPORARY)
    assert landed.status_code == 303 and landed.headers["location"] == "/account/password?next=/agent"
    assert mei.get("/console/api/me").json()["must_change_password"] is True
    # Nothing but the password page until it is changed: pages send there, the API refuses.
    assert mei.get("/agent").headers["location"] == "/account/password?next=/agent"
    refused = mei.get("/agent/api/queue")
    assert refused.status_code == 403 and refused.json()["error"] == "password_change_required"
    page = mei.get("/account/password?next=/agent")
    assert page.status_code == 200 and "An admin set a temporary password" in page.text
    assert "Back to the console" not in page.text

    wrong = change_password(mei, "not the temporary one", CHOSEN)
    assert wrong.status_code == 400 and "The current password is wrong." in wrong.text
    differ = change_password(mei, TEMPORARY, CHOSEN, repeat=CHOSEN + "!")
    assert differ.status_code == 400 and "The two new passwords differ." in differ.text
    same = change_password(mei, TEMPORARY, TEMPORARY)
    assert same.status_code == 400 and "different from the current one" in same.text
    short = change_password(mei, TEMPORARY, "short")
    assert short.status_code == 400 and "at least 10 characters" in short.text
    no_csrf = httpx.post(f"{base}/account/password", cookies=mei.cookies,
                         data={"current_password": TEMPORARY, "new_password": CHOSEN, "repeat_password": CHOSEN})
    assert no_csrf.status_code == 403

    done = change_password(mei, TEMPORARY, CHOSEN, next_path="/agent")
    assert done.status_code == 303 and done.headers["location"] == "/agent"
    assert mei.get("/agent").status_code == 200 and mei.get("/agent/api/queue").status_code == 200
    assert sign_in(base, "mei", TEMPORARY)[1].status_code == 401
    assert sign_in(base, "mei", CHOSEN)[1].headers["location"] == "/agent"
    assert [u for u in admin.get("/admin/api/users").json()["users"] if u["name"] == "mei"][0][
        "must_change_password"] is False
    actions = audit_actions(app, "user:mei")
    assert {"user_password_reset", "password_change_failed", "password_change", "login"} <= set(actions)
    detail = app.state.runtime.store._all("select detail from audit_log where target = 'user:mei'")
    assert not any(secret in row["detail"] for row in detail for secret in (PASSWORD, TEMPORARY, CHOSEN))


def test_a_user_changes_their_own_password_and_their_other_sessions_end(server):
    base, app, accounts = server
    new_agent(accounts, "wen")
    here, elsewhere = signed_in(base, "wen"), signed_in(base, "wen")
    page = here.get("/account/password")
    assert page.status_code == 200 and "Back to the console" in page.text and 'href="/agent"' in page.text
    assert change_password(here, PASSWORD, CHOSEN).headers["location"] == "/agent"
    assert here.get("/agent/api/queue").status_code == 200  # this session goes on
    assert elsewhere.get("/agent/api/queue").status_code == 401  # the others end
    assert httpx.get(f"{base}/account/password", follow_redirects=False).headers["location"] == \
        "/login?next=/account/password"


def test_admins_enable_change_roles_and_sign_accounts_out_everywhere(server):
    base, app, accounts = server
    new_agent(accounts, "li")
    admin = signed_in(base, "admin")
    first, second = signed_in(base, "li"), signed_in(base, "li")

    out = admin.post("/admin/api/users/li/sign-out")
    assert out.status_code == 200 and out.json()["sessions_ended"] == 2
    assert first.get("/console/api/me").status_code == 401 and second.get("/agent/api/queue").status_code == 401
    again = signed_in(base, "li")  # signing out is not disabling

    held = claim_for(app, "li", "held-by-li")
    disabled = admin.post("/admin/api/users/li/disable")
    assert disabled.status_code == 200 and disabled.json()["released"] == [held]
    assert app.state.runtime.store.conversation(held)["status"] == WAITING
    assert again.get("/console/api/me").status_code == 401
    assert sign_in(base, "li")[1].status_code == 401
    enabled = admin.post("/admin/api/users/li/enable")
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    li = signed_in(base, "li")

    held = claim_for(app, "li", "held-again")
    promoted = admin.post("/admin/api/users/li/role", json={"role": "admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin" and promoted.json()["released"] == []
    assert li.get("/admin/api/users").status_code == 200  # at once, in the same session
    moved = admin.post("/admin/api/users/li/role", json={"role": "operator"})
    assert moved.json()["released"] == [held]  # an operator cannot answer: the queue gets it back
    assert app.state.runtime.store.conversation(held)["status"] == WAITING
    assert li.post(f"/agent/api/conversations/{held}/claim").status_code == 403  # operators read, never answer
    assert li.get("/agent/api/queue").status_code == 200 and li.get("/operator/api/templates").status_code == 200
    assert admin.post("/admin/api/users/li/role", json={"role": "owner"}).status_code == 422

    for path, body in (("role", {"role": "agent"}), ("reset-password", {"password": TEMPORARY}), ("disable", None),
                       ("sign-out", None)):
        refused = admin.post(f"/admin/api/users/admin/{path}", json=body)
        assert refused.status_code == 409 and refused.json()["error"] == "self"
    for path, body in (("role", {"role": "agent"}), ("reset-password", {"password": TEMPORARY}),
                       ("enable", None), ("sign-out", None), ("disable", None)):
        assert admin.post(f"/admin/api/users/nobody/{path}", json=body).status_code == 404
        assert httpx.post(f"{base}/admin/api/users/li/{path}", json=body, cookies=admin.cookies).status_code == 403
    operator = signed_in(base, "olga")
    assert operator.post("/admin/api/users/li/enable").status_code == 403
    assert operator.post("/admin/api/users/li/sign-out").status_code == 403

    actions = audit_actions(app, "user:li")
    for action in ("user_sign_out_everywhere", "user_disable", "user_enable", "user_role"):
        assert action in actions
    changes = app.state.runtime.store._all(
        "select actor, detail from audit_log where target = 'user:li' and action = 'user_role' order by id")
    assert [(c["actor"], json.loads(c["detail"])["role"]) for c in changes] == [("admin", "admin"),
                                                                               ("admin", "operator")]


def console_stream(client: httpx.Client) -> httpx.Response:
    response = client.send(client.build_request("GET", "/agent/api/events"), stream=True)
    assert response.status_code == 200
    response.lines = response.iter_lines()  # type: ignore[attr-defined]
    assert next(response.lines).startswith("retry:")  # type: ignore[attr-defined]
    return response


def ends_within(response: httpx.Response, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    try:
        for _ in response.lines:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                return False
    except httpx.ReadTimeout:
        return False
    return time.monotonic() <= deadline


@pytest.mark.parametrize("action", ["sign-out", "reset-password", "disable"])
def test_ending_an_accounts_sessions_closes_its_open_console_pages_at_once(server, action):
    base, _, accounts = server
    name = f"streamer-{action}"
    new_agent(accounts, name)
    admin = signed_in(base, "admin")
    console = signed_in(base, name)
    stream = console_stream(console)
    body = {"password": TEMPORARY} if action == "reset-password" else None
    assert admin.post(f"/admin/api/users/{name}/{action}", json=body).status_code == 200
    assert ends_within(stream, 3.0)  # not at the next keep-alive, 15 s away
    stream.close()
    console.close()


def test_a_console_the_role_may_not_use_shows_the_way_to_the_one_it_may(server):
    base, _, accounts = server
    new_agent(accounts, "tao")
    agent = signed_in(base, "tao")
    page = agent.get("/operator")
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert "This is the operator console" in page.text and 'href="/agent"' in page.text
    assert "Open the agent console" in page.text
    assert 'href="/account/password"' in page.text and 'action="/logout"' in page.text
    assert page.headers["x-frame-options"] == "DENY" and "default-src 'self'" in page.headers["content-security-policy"]
    # The sign-out form on that page works (it carries the session's CSRF token).
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form_post = httpx.post(f"{base}/logout", data={"csrf_token": csrf}, cookies=agent.cookies)
    assert form_post.status_code == 303 and agent.get("/console/api/me").status_code == 401
    operator = signed_in(base, "olga")
    assert operator.get("/agent").status_code == 200  # operators read the agent console
    admin = signed_in(base, "admin")
    assert admin.get("/agent").status_code == 200 and admin.get("/operator").status_code == 200


def run_cli(data, *args, stdin: str = "") -> subprocess.CompletedProcess:
    """`snapdesk user ...` as its own process."""
    env = {**os.environ, "SNAPDESK_DATA_DIR": str(data)}
    return subprocess.run([sys.executable, "-m", "bot.cli", "user", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.fixture
def cli(monkeypatch, capsys):
    """`snapdesk user ...` through the same entry point, in this process (each process start costs
    seconds of imports)."""
    import io

    from bot.cli import main

    def run(data, *args, stdin: str = "") -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            code = main(["user", *args[:1], "--data", str(data), *args[1:]])
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def test_the_user_command_manages_accounts(tmp_path, cli):
    store = Store(tmp_path)
    accounts = Accounts(store)
    accounts.add_user("mei", "agent", PASSWORD)
    token, _ = accounts.open_session(accounts.user("mei"))
    claimed = store._ensure_conversation("widget", "k", "v", "Visitor", "2026-01-01T00:00:00")
    store.set_owner(claimed["id"], CLAIMED, "mei")

    signed_out = cli(tmp_path, "sign-out", "mei")
    assert signed_out.returncode == 0 and "1 session ended" in signed_out.stdout
    assert accounts.session(token) is None

    disabled = cli(tmp_path, "disable", "mei")
    assert disabled.returncode == 0 and "1 claimed conversation went back to the queue" in disabled.stdout
    assert store.conversation(claimed["id"])["status"] == WAITING
    assert "mei\tagent\tdisabled" in cli(tmp_path, "list").stdout
    assert cli(tmp_path, "enable", "mei").returncode == 0
    assert "mei\tagent\tactive" in cli(tmp_path, "list").stdout

    role = cli(tmp_path, "role", "mei", "admin")
    assert role.returncode == 0 and "mei is now an admin" in role.stdout
    assert cli(tmp_path, "role", "mei", "owner").returncode == 2  # argparse: not a role
    named = cli(tmp_path, "display-name", "mei", "Mei Zhang")
    assert named.returncode == 0 and accounts.user("mei").display_name == "Mei Zhang"
    assert cli(tmp_path, "display-name", "mei", "   ").returncode == 2

    token, _ = accounts.open_session(accounts.user("mei"))
    short = cli(tmp_path, "reset-password", "mei", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 10" in short.stderr
    reset = run_cli(tmp_path, "reset-password", "mei", "--password-stdin", stdin=TEMPORARY + "\n")
    assert reset.returncode == 0 and "must choose their own" in reset.stdout
    assert accounts.session(token) is None
    listed = cli(tmp_path, "list").stdout
    assert "mei\tadmin\tactive\tMei Zhang\tmust change password" in listed
    for command in (("enable", "nobody"), ("sign-out", "nobody"), ("role", "nobody", "agent"),
                    ("disable", "nobody")):
        failed = cli(tmp_path, *command)
        assert failed.returncode == 2 and "no user called nobody" in failed.stderr
    actions = [r["action"] for r in store._all("select action from audit_log where actor = 'cli' order by id")]
    for action in ("user_sign_out_everywhere", "user_disable", "user_enable", "user_role", "user_display_name",
                   "user_password_reset"):
        assert action in actions

    # The new password works once, and only for choosing another.
    with live_server(tmp_path, engine=StubEngine()) as (base, _):
        mei, landed = sign_in(base, "mei", TEMPORARY)
        assert landed.headers["location"] == "/account/password?next=/operator"
        assert change_password(mei, TEMPORARY, CHOSEN).headers["location"] == "/operator"
        assert mei.get("/admin/api/users").status_code == 200
