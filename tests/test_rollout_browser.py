"""The operator console's Rollout view in Chromium: start a rollout, watch both arms, change the
share, promote and roll back through the buttons, and roll out the editor's draft."""

from __future__ import annotations

import time

import httpx
import pytest

from bot import rollouts
from engine.stub import StubEngine
from tests.browser import chromium, editor_text, needs_chromium, set_editor, sign_in, wait_for_editor
from tests.live_server import PASSWORD, live_server, wait_for
from tests.test_rollouts import TEMPLATE, stored_candidate

VISITORS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("rollout-page"), engine=StubEngine(reply="Your renewal was 88."),
                     login_rate_per_ip=1000, widget_rate_per_ip=10_000, widget_rate_per_visitor=1000,
                     users={"olga": "operator"}) as (base, app):
        yield base, app


@pytest.fixture
def page(server):
    base, _ = server
    with chromium() as browser:
        page = sign_in(browser, base, "olga", PASSWORD, "/operator")
        page.wait_for_selector("[data-testid=template-item]")
        yield page


def visitors_ask(base: str, store, count: int) -> None:
    """`count` new widget conversations, each asking once; returns when all are answered."""
    for _ in range(count):
        token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
        response = httpx.post(f"{base}/widget/api/messages", headers={"Authorization": f"Bearer {token}"},
                              data={"client_message_id": f"c{time.monotonic_ns()}", "text": "Why was I charged?"})
        assert response.status_code == 202
    wait_for(lambda: not store.select("select id from messages where role = 'user' and status = 'pending'"),
             what="the visitors' answers")


def figure(page, name: str, arm: str) -> str:
    return page.inner_text(f"[data-testid=rollout-card] tr[data-figure={name}] td[data-arm={arm}]")


@needs_chromium
def test_start_watch_both_arms_change_the_share_and_promote(server, page):
    base, app = server
    store = app.state.runtime.store
    live = rollouts.live_version(store, TEMPLATE)
    version = stored_candidate(store, "Acme Page")
    page.click("[data-testid=nav-rollout]")
    page.wait_for_selector(f"[data-testid=rollout-template] option[value={TEMPLATE}]", state="attached")
    page.select_option("[data-testid=rollout-template]", TEMPLATE)
    page.wait_for_selector(f"[data-testid=rollout-version] option[value='{version}']", state="attached")
    assert page.locator(f"[data-testid=rollout-version] option[value='{live}']").is_disabled(), "the live one"
    page.select_option("[data-testid=rollout-version]", str(version))
    page.select_option("[data-testid=rollout-channel]", "widget")
    page.fill("[data-testid=rollout-percent]", "50")
    page.click("[data-testid=rollout-start]")
    card = page.wait_for_selector("[data-testid=rollout-card]")
    assert f"{TEMPLATE} v{version}" in card.inner_text()
    assert rollouts.active(store, "widget").version == version

    visitors_ask(base, store, VISITORS)
    page.click("[data-testid=rollout-refresh]")
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=rollout-card] tr[data-figure=conversations] td')]"
        ".reduce((a, td) => a + Number(td.textContent), 0) === n", arg=VISITORS)
    drawn = {arm: int(figure(page, "conversations", arm)) for arm in ("candidate", "live")}
    assert all(drawn.values()), drawn  # both arms, side by side
    for arm in ("candidate", "live"):
        assert figure(page, "answered", arm) == "100%" and figure(page, "messages", arm) == str(drawn[arm])
    headers = page.locator("[data-testid=rollout-arms] thead th").all_text_contents()
    assert headers[1] == f"Candidate (v{version}, 50%)" and headers[2] == f"Live (v{live})"

    page.fill("[data-testid=rollout-percent-input]", "30")
    page.click("[data-testid=rollout-save-percent]")
    page.wait_for_function("() => document.querySelector('[data-testid=rollout-arms] thead').textContent"
                           ".includes('30%')")
    assert rollouts.active(store, "widget").percent == 30

    page.click("[data-testid=rollout-promote]")
    page.wait_for_selector("[data-testid=rollout-ended-row][data-status=promoted]")
    assert any(d.startswith(f"Promote {TEMPLATE} v{version}?") for d in page.dialogs)
    assert page.is_visible("[data-testid=rollout-none]")
    assert rollouts.live_version(store, TEMPLATE) == version
    page.click("[data-testid=nav-templates]")
    page.wait_for_function(
        "v => document.querySelector('[data-testid=template-item][data-name=general]').textContent"
        ".includes('v' + v + ' live')", arg=version)


@needs_chromium
def test_roll_out_the_editors_draft_then_roll_it_back(server, page):
    _, app = server
    store = app.state.runtime.store
    live = rollouts.live_version(store, TEMPLATE)
    page.click(f"[data-testid=template-item][data-name={TEMPLATE}] [data-testid=edit-template]")
    wait_for_editor(page, f"name: {TEMPLATE}")
    set_editor(page, editor_text(page).replace("company: Acme", "company: Globex Draft", 1))
    page.click("[data-testid=rollout-draft]")
    page.wait_for_selector("#view-rollout:not([hidden])")
    page.wait_for_function("() => document.querySelector('[data-testid=rollout-version]').value === 'draft'")
    page.fill("[data-testid=rollout-percent]", "20")
    page.click("[data-testid=rollout-start]")
    page.wait_for_selector("[data-testid=rollout-card]")
    rollout = rollouts.active(store, "widget")
    stored = store.template_versions(TEMPLATE)[-1]
    assert rollout.version == stored["version"] and stored["published_at"] is None
    assert "company: Globex Draft" in stored["body"]

    page.click("[data-testid=rollout-rollback]")
    page.wait_for_selector(f"[data-testid=rollout-ended-row][data-rollout-id='{rollout.id}'][data-status=rolled_back]")
    assert any(d.startswith(f"Roll back {TEMPLATE} v{rollout.version}?") for d in page.dialogs)
    assert rollouts.active(store, "widget") is None and rollouts.live_version(store, TEMPLATE) == live
