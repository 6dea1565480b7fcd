"""Console accounts: argon2id passwords, sign-in, sessions, CSRF, growing delays, the user command."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest

from bot.accounts import HASHER, Accounts, AccountError, NoSuchUser
from bot.messages import utcnow
from bot.store import Store
from engine.stub import StubEngine
from tests.live_server import PASSWORD, live_server



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("accounts"), engine=StubEngine(), login_rate_per_ip=1000,
                     users={"mei": "agent", "olga": "operator", "lock": "agent"}) as (base, app):
        yield base, app


def login(base: str, name: str, password: str, next_path: str = "/", client: httpx.Client | None = None):
    client = client or httpx.Client(base_url=base)
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"name": name, "password": password, "csrf_token": csrf, "next": next_path})
    return client, response


def test_passwords_are_argon2id_with_enough_memory_and_passes(tmp_path):
    accounts = Accounts(Store(tmp_path))
    accounts.add_user("a", "admin", PASSWORD)
    stored = accounts.store._one("select password_hash from users where name = 'a'")["password_hash"]
    match = re.match(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=\d+\$", stored)
    assert match and int(match.group(1)) >= 19 * 1024 and int(match.group(2)) >= 2
    assert PASSWORD not in stored
    with pytest.raises(AccountError):
        accounts.add_user("b", "agent", "short")
    with pytest.raises(AccountError):
        accounts.add_user("c", "superuser", PASSWORD)


def test_sign_in_sets_a_strict_session_cookie_and_lands_on_the_role_console(server):
    base, _ = server
    client, response = login(base, "mei", PASSWORD)
    assert response.status_code == 303 and response.headers["location"] == "/agent"
    cookie = response.headers["set-cookie"]
    assert "snapdesk_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    me = client.get("/console/api/me").json()
    assert me["name"] == "mei" and me["role"] == "agent" and len(me["csrf_token"]) > 20
    _, operator = login(base, "olga", PASSWORD)
    assert operator.headers["location"] == "/operator"


def test_session_id_is_new_at_every_sign_in(server):
    base, _ = server
    client = httpx.Client(base_url=base)
    client.cookies.set("snapdesk_session", "attacker-chosen-value")
    _, response = login(base, "mei", PASSWORD, client=client)
    new = response.cookies.get("snapdesk_session")
    assert new and new != "attacker-chosen-value"
    _, again = login(base, "mei", PASSWORD)
    assert again.cookies.get("snapdesk_session") != new


def test_wrong_password_and_unknown_user_look_the_same(server):
    base, _ = server
    _, wrong = login(base, "mei", "not the password")
    _, unknown = login(base, "nobody", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password." in wrong.text and "Wrong user name or password." in unknown.text
    assert "snapdesk_session" not in wrong.headers.get("set-cookie", "")


def test_failures_make_further_tries_wait_longer_each_time_and_never_lock(tmp_path):
    from bot.login_throttle import LoginThrottle, ThrottlePolicy

    now = [100.0]
    throttle = LoginThrottle(ThrottlePolicy(free_failures=3, free_failures_per_ip=100, first_delay_s=2,
                                            max_delay_s=10), clock=lambda: now[0])
    assert [throttle.begin("mei", "a") for _ in range(3)] == [0, 0, 0]  # three free failures
    assert throttle.begin("mei", "b") == 2  # from any address: the name waits
    assert throttle.begin("made-up", "a") == 0  # another name does not
    waits = []
    for _ in range(5):
        now[0] += 1000
        assert throttle.begin("mei", "c") == 0  # the wait passed: one more try
        waits.append(throttle.begin("mei", "c"))
    assert waits == [4, 8, 10, 10, 10]  # doubling, capped
    now[0] += 10
    assert throttle.begin("mei", "c") == 0
    throttle.succeeded("mei", "c")  # the right password: the name starts again
    assert [throttle.begin("mei", "c") for _ in range(3)] == [0, 0, 0]
    # Per address: more free failures, then the same growing waits whatever the names.
    throttle = LoginThrottle(ThrottlePolicy(free_failures=100, free_failures_per_ip=4, first_delay_s=2,
                                            max_delay_s=10), clock=lambda: now[0])
    assert [throttle.begin(f"name{i}", "10.0.0.1") for i in range(5)] == [0, 0, 0, 0, 2]
    assert throttle.begin("name9", "10.0.0.2") == 0


def test_sign_in_form_needs_its_csrf_token(server):
    base, _ = server
    client = httpx.Client(base_url=base)
    client.get("/login")
    response = client.post("/login", data={"name": "mei", "password": PASSWORD, "csrf_token": "forged"})
    assert response.status_code == 403


def test_sign_out_needs_the_csrf_token_and_ends_the_session(server):
    base, _ = server
    client, _ = login(base, "mei", PASSWORD)
    assert client.post("/logout").status_code == 403
    csrf = client.get("/console/api/me").json()["csrf_token"]
    assert client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 303
    assert client.get("/console/api/me").status_code == 401


def test_next_never_leaves_the_site(server):
    base, _ = server
    for target in ("//evil.example/", "https://evil.example/", "/\\\\evil.example"):
        _, response = login(base, "mei", PASSWORD, next_path=target)
        assert response.headers["location"] in ("/agent", "/")


def test_sessions_expire_when_idle_and_at_their_absolute_limit(tmp_path):
    accounts = Accounts(Store(tmp_path), idle_timeout=timedelta(minutes=30), absolute_timeout=timedelta(hours=12))
    user = accounts.add_user("mei", "agent", PASSWORD)
    start = utcnow()
    token, _ = accounts.open_session(user, now=start)
    assert accounts.session(token, now=start + timedelta(minutes=29)) is not None
    assert accounts.session(token, now=start + timedelta(minutes=58)) is not None  # activity renewed it
    assert accounts.session(token, now=start + timedelta(minutes=90)) is None  # idle too long
    token, _ = accounts.open_session(user, now=start)
    for minutes in range(20, 12 * 60, 20):
        assert accounts.session(token, now=start + timedelta(minutes=minutes)) is not None
    assert accounts.session(token, now=start + timedelta(hours=12, minutes=1)) is None


def test_disabling_a_user_closes_their_sessions(tmp_path):
    accounts = Accounts(Store(tmp_path))
    user = accounts.add_user("mei", "agent", PASSWORD)
    token, _ = accounts.open_session(user)
    accounts.disable_user("mei")
    assert accounts.session(token) is None
    assert asyncio.run(accounts.sign_in("mei", PASSWORD)) is None


def test_user_command(tmp_path):
    env = {**os.environ, "SNAPDESK_DATA_DIR": str(tmp_path)}

    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "bot.cli", "user", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=60)

    assert run("add", "mei", "--role", "agent", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    short = run("add", "li", "--role", "agent", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 10" in short.stderr
    assert "mei\tagent\tactive" in run("list").stdout
    named = run("add", "wen", "--role", "agent", "--display-name", "Wen from support", "--password-stdin",
                stdin=PASSWORD + "\n")
    assert named.returncode == 0 and "Wen from support" in named.stdout
    assert Accounts(Store(tmp_path)).user("wen").display_name == "Wen from support"
    assert run("disable", "mei").returncode == 0
    assert "mei\tagent\tdisabled" in run("list").stdout
    stored = Store(tmp_path)._one("select password_hash from users where name = 'mei'")["password_hash"]
    assert HASHER.verify(stored, PASSWORD)


def test_sign_in_attempts_are_limited_per_address(tmp_path):
    with live_server(tmp_path, engine=StubEngine(), login_rate_per_ip=3) as (base, _):
        codes = [login(base, "nobody", "wrong password")[1].status_code for _ in range(4)]
    assert codes[:3] == [401, 401, 401] and codes[3] == 429


def test_admins_manage_users_through_the_api(tmp_path):
    from tests.test_agent_console import signed_in

    accounts = Accounts(Store(tmp_path))
    accounts.add_user("admin", "admin", PASSWORD)
    with live_server(tmp_path, engine=StubEngine(), login_rate_per_ip=1000) as (base, app):
        admin = signed_in(base, "admin")
        created = admin.post("/admin/api/users", json={"name": "li", "role": "agent", "password": PASSWORD})
        assert created.status_code == 200 and created.json()["role"] == "agent"
        weak = admin.post("/admin/api/users", json={"name": "wu", "role": "agent", "password": "short"})
        assert weak.status_code == 422 and "at least 10" in weak.json()["message"]
        assert {"name": "li", "role": "agent", "disabled": False, "display_name": "li", "must_change_password": False} in \
            admin.get("/admin/api/users").json()["users"]
        li = signed_in(base, "li")
        from bot.store import CLAIMED

        store = app.state.runtime.store
        held = store._ensure_conversation("widget", "held-by-li", "v", "Visitor", "2026-01-01T00:00:00")
        store.set_owner(held["id"], CLAIMED, "li")
        disabled = admin.post("/admin/api/users/li/disable")
        assert disabled.status_code == 200 and disabled.json()["released"] == [held["id"]]
        assert store.conversation(held["id"])["status"] == "waiting"
        assert li.get("/console/api/me").status_code == 401
        assert admin.post("/admin/api/users/admin/disable").status_code == 409
        actions = {r["action"] for r in app.state.runtime.store._all("select action from audit_log where actor = 'admin'")}
        assert {"user_add", "user_disable"} <= actions


def test_display_names_default_to_the_login_are_cleaned_and_audited(tmp_path):
    accounts = Accounts(Store(tmp_path))
    plain = accounts.add_user("mei", "agent", PASSWORD)
    assert plain.display_name == "mei" and accounts.user("mei").display_name == "mei"
    named = accounts.add_user("li", "agent", PASSWORD, display_name="  Li  Wei ")
    assert named.display_name == "Li Wei" and accounts.user("li").display_name == "Li Wei"

    changed = accounts.set_display_name("mei", "Mei\n\x1b\x07Zhang\u202e", actor="admin")
    assert changed.display_name == "Mei Zhang" and accounts.user("mei").display_name == "Mei Zhang"
    token, _ = accounts.open_session(accounts.user("mei"))
    assert accounts.session(token).user.display_name == "Mei Zhang"
    for bad in ("", "   ", "\x00\x07", "x" * 61):
        with pytest.raises(AccountError):
            accounts.set_display_name("mei", bad)
    with pytest.raises(AccountError):
        accounts.add_user("wu", "agent", PASSWORD, display_name="y" * 61)
    assert accounts.user("wu") is None
    with pytest.raises(NoSuchUser):
        accounts.set_display_name("nobody", "Nobody")
    audit = accounts.store._all("select actor, action, target, detail from audit_log where action = 'user_display_name'")
    assert [(a["actor"], a["target"]) for a in audit] == [("admin", "user:mei")] and "Mei Zhang" in audit[0]["detail"]


def test_disabling_an_agent_puts_their_claimed_conversations_back_in_the_queue(tmp_path):
    from bot.store import CLAIMED, WAITING

    store = Store(tmp_path)
    accounts = Accounts(store)
    accounts.add_user("mei", "agent", PASSWORD)
    accounts.add_user("li", "agent", PASSWORD)
    ids = []
    for key, agent in (("a", "mei"), ("b", "mei"), ("c", "li")):
        conversation = store._ensure_conversation("widget", key, key, key, "2026-01-01T00:00:00")
        store.set_owner(conversation["id"], CLAIMED, agent)
        ids.append(conversation["id"])
    assert sorted(accounts.disable_user("mei")) == ids[:2]
    assert [store.conversation(i)["status"] for i in ids] == [WAITING, WAITING, CLAIMED]
    assert [store.conversation(i)["assigned_agent"] for i in ids] == [None, None, "li"]


def test_admins_set_display_names_through_the_api(tmp_path):
    from tests.test_agent_console import signed_in

    accounts = Accounts(Store(tmp_path))
    accounts.add_user("admin", "admin", PASSWORD)
    accounts.add_user("olga", "operator", PASSWORD)
    with live_server(tmp_path, engine=StubEngine(), login_rate_per_ip=1000) as (base, app):
        admin = signed_in(base, "admin")
        created = admin.post("/admin/api/users", json={"name": "mei", "role": "agent", "password": PASSWORD,
                                                        "display_name": "Mei"})
        assert created.status_code == 200 and created.json()["display_name"] == "Mei"
        renamed = admin.post("/admin/api/users/mei/display-name", json={"display_name": "Mei Zhang"})
        assert renamed.status_code == 200 and renamed.json()["display_name"] == "Mei Zhang"
        listed = {u["name"]: u["display_name"] for u in admin.get("/admin/api/users").json()["users"]}
        assert listed == {"admin": "admin", "mei": "Mei Zhang", "olga": "olga"}
        invalid = admin.post("/admin/api/users/mei/display-name", json={"display_name": "  "})
        assert invalid.status_code == 400 and "1 to 60" in invalid.json()["message"]
        assert admin.post("/admin/api/users/nobody/display-name", json={"display_name": "X"}).status_code == 404
        no_csrf = httpx.post(f"{base}/admin/api/users/mei/display-name", json={"display_name": "Evil"},
                             cookies=admin.cookies)
        assert no_csrf.status_code in (401, 403)
        operator = signed_in(base, "olga")
        assert operator.post("/admin/api/users/mei/display-name", json={"display_name": "Evil"}).status_code == 403
        assert accounts.user("mei").display_name == "Mei Zhang"
