"""The operator statistics against hand-counted data in a real Store, and on the page in Chromium."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from bot.messages import utcnow
from bot.operator_stats import RESOLUTION_WINDOW, stats
from bot.store import ANSWERED, FOR_AGENT, HANDED_OVER, PENDING, Store, iso
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium, sign_in
from tests.live_server import PASSWORD, live_server, wait_for

NOW = utcnow()
SHOTS = Path(os.environ.get("SNAPDESK_SCREENSHOTS", tempfile.gettempdir()))


class Fixture:
    """Conversations written the way the bot stores them, at chosen times."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def conversation(self, key: str) -> int:
        return self.store._ensure_conversation("widget", key, key, key, iso(NOW))["id"]

    def ask(self, conversation_id: int, at, status: str) -> int:
        return self.store.add_message(conversation_id, "user", "a question", status=status, created_at=iso(at))

    def answer(self, conversation_id: int, turn: int, at, version: int | None, latency_ms: float = 900.0) -> int:
        return self.store.add_message(conversation_id, "bot", "an answer", kind="answer", reply_to=turn,
                                      created_at=iso(at), latency_ms=latency_ms, confidence=0.9,
                                      **self._template(version))

    def hand_over(self, conversation_id: int, turn: int, at, reason: str, version: int | None) -> None:
        self.store.add_message(conversation_id, "system", "a person will answer", kind="handover", reply_to=turn,
                               created_at=iso(at), **self._template(version))
        escalation = self.store.add_escalation(conversation_id, turn, reason, "", None, "")
        self.store.update_escalation(escalation, created_at=iso(at))

    def verdict(self, conversation_id: int, helpful: bool) -> None:
        self.store.add_feedback(conversation_id, 1, helpful=helpful, comment="")

    @staticmethod
    def _template(version: int | None) -> dict:
        return {} if version is None else {"template_name": "billing", "template_version": version}


def hand_counted(store: Store) -> None:
    """Nine episodes (twelve user messages) in the last week, one a month ago.

    billing v1: A answered (2 s), B answered twice (4 s), H unreadable image (3 s) then a thumbs down.
    billing v2: C answered (10 s) then asked again 3 h later (no reply yet), D low confidence (0.8 s) and a
    message for the agent, E no knowledge (125 s), F answered 2 h ago (6 s), G answered (1.5 s) with a thumbs up.
    no template: I asked for a person (0.5 s).
    """
    f = Fixture(store)
    day = timedelta(days=1)
    a = f.conversation("A")
    f.answer(a, f.ask(a, NOW - 3 * day, ANSWERED), NOW - 3 * day + timedelta(seconds=2), 1, latency_ms=44956.5)
    b = f.conversation("B")
    f.answer(b, f.ask(b, NOW - 2 * day, ANSWERED), NOW - 2 * day + timedelta(seconds=4), 1, latency_ms=800.0)
    at = NOW - 2 * day + timedelta(hours=1)
    f.answer(b, f.ask(b, at, ANSWERED), at + timedelta(seconds=3), 1, latency_ms=1200.0)
    h = f.conversation("H")
    f.hand_over(h, f.ask(h, NOW - 5 * day, HANDED_OVER), NOW - 5 * day + timedelta(seconds=3), "unreadable_image", 1)
    f.verdict(h, helpful=False)
    c = f.conversation("C")
    f.answer(c, f.ask(c, NOW - 2 * day, ANSWERED), NOW - 2 * day + timedelta(seconds=10), 2, latency_ms=2500.0)
    f.ask(c, NOW - 2 * day + timedelta(hours=3), PENDING)
    d = f.conversation("D")
    f.hand_over(d, f.ask(d, NOW - 1.5 * day, HANDED_OVER), NOW - 1.5 * day + timedelta(seconds=0.8),
                "low_confidence", 2)
    f.ask(d, NOW - 1.5 * day + timedelta(seconds=60), FOR_AGENT)
    e = f.conversation("E")
    f.hand_over(e, f.ask(e, NOW - timedelta(hours=30), HANDED_OVER), NOW - timedelta(hours=30, seconds=-125),
                "no_knowledge", 2)
    g = f.conversation("F")
    f.answer(g, f.ask(g, NOW - timedelta(hours=2), ANSWERED), NOW - timedelta(hours=2, seconds=-6), 2,
             latency_ms=3000.0)
    g = f.conversation("G")
    f.answer(g, f.ask(g, NOW - timedelta(hours=3), ANSWERED), NOW - timedelta(hours=3, seconds=-1.5), 2,
             latency_ms=1100.0)
    f.verdict(g, helpful=True)
    i = f.conversation("I")
    f.hand_over(i, f.ask(i, NOW - 4 * day, HANDED_OVER), NOW - 4 * day + timedelta(seconds=0.5), "user_request", None)
    old = f.conversation("old")
    f.answer(old, f.ask(old, NOW - 30 * day, ANSWERED), NOW - 30 * day + timedelta(seconds=1), 1, latency_ms=5.0)


@pytest.fixture
def figures(tmp_path):
    store = Store(tmp_path)
    hand_counted(store)
    try:
        yield stats(store, 7)
    finally:
        store.close()


def shares(figure: dict) -> dict[tuple[str, str | None], int]:
    return {(s["outcome"], s["reason"]): s["count"] for s in figure["outcomes"]["shares"]}


def by_version(figures: dict) -> dict:
    return {(v["template"], v["version"]): v for v in figures["versions"]}


def test_every_message_has_one_outcome_and_the_shares_add_up_to_one(figures):
    assert figures["outcomes"]["total"] == 12
    assert shares(figures) == {("answered", None): 6, ("handed_over", "low_confidence"): 1,
                               ("handed_over", "no_knowledge"): 1, ("handed_over", "unreadable_image"): 1,
                               ("handed_over", "user_request"): 1, ("for_agent", None): 1, ("pending", None): 1}
    for figure in (figures, *figures["versions"]):
        assert sum(s["share"] for s in figure["outcomes"]["shares"]) == pytest.approx(1.0)
    assert figures["answered_share"] == pytest.approx(6 / 12)


def test_each_day_counts_its_messages_once_by_outcome(figures):
    days = figures["days"]
    assert len(days) == 7 and days[-1]["date"] == NOW.date().isoformat()
    assert sum(d["messages"] for d in days) == 12  # the message of a month ago is left out
    for d in days:
        assert d["messages"] == d["answered"] + d["handed_over"] + d["for_agent"] + d["pending"]
    assert sum(d["handed_over"] for d in days) == 4 and sum(d["pending"] for d in days) == 1


def test_figures_are_split_by_template_version(figures):
    versions = by_version(figures)
    assert list(versions) == [("billing", 2), ("billing", 1), (None, None)]  # newest first, no template last
    v1, v2, none = versions["billing", 1], versions["billing", 2], versions[None, None]
    assert (v1["outcomes"]["total"], v2["outcomes"]["total"], none["outcomes"]["total"]) == (4, 7, 1)
    assert shares(v1) == {("answered", None): 3, ("handed_over", "unreadable_image"): 1}
    assert shares(v2) == {("answered", None): 3, ("handed_over", "low_confidence"): 1,
                          ("handed_over", "no_knowledge"): 1, ("for_agent", None): 1, ("pending", None): 1}
    assert v1["handovers_by_reason"] == {"unreadable_image": 1}
    assert v2["handovers_by_reason"] == {"low_confidence": 1, "no_knowledge": 1}
    assert none["handovers_by_reason"] == {"user_request": 1}
    assert figures["handovers_by_reason"] == {"low_confidence": 1, "no_knowledge": 1, "unreadable_image": 1,
                                              "user_request": 1}
    assert (v1["episodes"], v2["episodes"], none["episodes"], figures["episodes"]) == (3, 5, 1, 9)


def test_resolution_rate_counts_answered_episodes_without_a_follow_up_or_with_a_thumbs_up(figures):
    assert figures["resolution_window_hours"] == RESOLUTION_WINDOW.total_seconds() / 3600 == 24
    versions = by_version(figures)
    # v1: A and B resolved, H handed over. v2: G's thumbs up; C asked again, D and E handed over, F too recent.
    assert versions["billing", 1]["resolution"] == {"rate": 2 / 3, "resolved": 2, "unresolved": 1, "undecided": 0}
    assert versions["billing", 2]["resolution"] == {"rate": 1 / 4, "resolved": 1, "unresolved": 3, "undecided": 1}
    assert figures["resolution"] == {"rate": 3 / 8, "resolved": 3, "unresolved": 5, "undecided": 1}


def test_satisfaction_is_the_share_of_thumbs_up(figures):
    versions = by_version(figures)
    assert versions["billing", 1]["satisfaction"] == {"share": 0.0, "helpful": 0, "not_helpful": 1, "total": 1}
    assert versions["billing", 2]["satisfaction"] == {"share": 1.0, "helpful": 1, "not_helpful": 0, "total": 1}
    assert versions[None, None]["satisfaction"] == {"share": None, "helpful": 0, "not_helpful": 0, "total": 0}
    assert figures["satisfaction"] == {"share": 0.5, "helpful": 1, "not_helpful": 1, "total": 2}
    assert (figures["feedback"]["helpful"], figures["feedback"]["not_helpful"]) == (1, 1)


def test_times_are_in_seconds(figures):
    versions = by_version(figures)
    v1, v2 = versions["billing", 1]["first_answer_s"], versions["billing", 2]["first_answer_s"]
    assert (v1["median"], v1["p90"], v1["count"]) == (pytest.approx(3.0), pytest.approx(3.8), 3)  # 2, 3, 4 s
    assert (v2["median"], v2["p90"], v2["count"]) == (pytest.approx(6.0), pytest.approx(79.0), 5)  # 0.8 .. 125 s
    assert figures["first_answer_s"]["median"] == pytest.approx(3.0)  # 0.5, 0.8, 1.5, 2, 3, 4, 6, 10, 125
    reply = figures["reply_time_s"]  # the model's own time on each answer: 0.8, 1.1, 1.2, 2.5, 3, 44.9565 s
    assert (reply["count"], reply["p50"], reply["p95"]) == (6, pytest.approx(1.85), pytest.approx(34.4674, abs=1e-3))
    assert "latency_ms" not in figures


def test_an_empty_period_has_no_shares_and_no_rates(tmp_path):
    store = Store(tmp_path)
    try:
        empty = stats(store, 7)
    finally:
        store.close()
    assert empty["outcomes"] == {"total": 0, "shares": []} and empty["versions"] == []
    assert empty["resolution"]["rate"] is None and empty["satisfaction"]["share"] is None
    assert empty["first_answer_s"] == {"median": None, "p90": None, "count": 0} and empty["answered_share"] is None


# The page ---------------------------------------------------------------------------------
BARS = """() => {
  const chart = document.querySelector('[data-chart=messages]');
  const ticks = [...chart.querySelectorAll('text[data-tick]')].map(t => [Number(t.dataset.tick), Number(t.getAttribute('y'))]);
  const bars = [...chart.querySelectorAll('g.bar')].map(g => ({
    total: Number(g.dataset.total),
    label: g.querySelector('text[data-label=total]') ? g.querySelector('text[data-label=total]').textContent : null,
    height: [...g.querySelectorAll('rect')].reduce((a, r) => a + Number(r.getAttribute('height')), 0),
  }));
  return {ticks, bars};
}"""


@pytest.fixture(scope="module")
def stats_page(tmp_path_factory):
    data = tmp_path_factory.mktemp("stats-page")
    store = Store(data)
    hand_counted(store)
    store.close()
    with live_server(data, engine=StubEngine(reply="ok", confidence=0.9), login_rate_per_ip=1000,
                     users={"olga": "operator"}) as (base, app):
        # The server answers C's pending message when it starts: 7 answered of 12, C not decided yet.
        served = app.state.runtime.store
        wait_for(lambda: not served.select("select id from messages where status = ?", [PENDING]),
                 what="the pending message's answer")
        with chromium() as browser:
            page = sign_in(browser, base, "olga", PASSWORD, "/operator")
            page.wait_for_selector("[data-testid=template-item]")
            page.click("[data-testid=nav-stats]")
            page.wait_for_selector("[data-testid=version-row]")
            yield page


def percents(texts: list[str]) -> list[int]:
    return [int(text.strip().split("%")[0]) for text in texts]


@needs_chromium
def test_the_page_writes_durations_in_seconds(stats_page):
    view = stats_page.inner_text("#view-stats")
    assert " ms" not in view and "44956" not in view
    assert stats_page.inner_text("[data-testid=stat-first-answer]") == "3 s"  # median of 0.5 .. 125 s
    assert stats_page.inner_text("[data-testid=stat-reply-time]") == "1.2 s"  # 0.8, 1.1, 1.2, 2.5, 3, 44.96 and C's
    assert "p95 32 s" in stats_page.inner_text("#stat-reply-time-sub")
    v2 = stats_page.locator("[data-testid=version-row][data-template=billing][data-version='2']").inner_text()
    assert "6 s / 1 min 19 s" in v2  # median / p90 of 0.8, 1.5, 6, 10, 125 s


@needs_chromium
def test_the_shares_shown_add_up_to_100(stats_page):
    shown = percents(stats_page.locator("[data-testid=outcome-percent]").all_inner_texts())
    assert shown == [59, 9, 8, 8, 8, 8]  # 7, 1, 1, 1, 1, 1 of 12: 58.3 and 8.3, the largest remainders rounded up
    assert sum(shown) == 100
    for row in stats_page.locator("[data-testid=version-row]").all():
        cells = row.locator("td").all_inner_texts()
        assert sum(percents(cells[1:4])) == 100, cells
    assert stats_page.inner_text("[data-testid=stat-answered-share]") == "59%"  # the same figure as in the list
    assert stats_page.inner_text("[data-testid=stat-resolution]") == "43%"  # 3 of 7 decided episodes
    assert stats_page.inner_text("[data-testid=stat-satisfaction]") == "50%"
    assert "24 h" in stats_page.inner_text("#stat-resolution-how")


@needs_chromium
def test_bar_labels_are_the_numbers_the_bars_are_drawn_from(stats_page):
    drawn = stats_page.evaluate(BARS)
    (low, y_low), (high, y_high) = drawn["ticks"][0], drawn["ticks"][-1]
    per_message = (y_low - y_high) / (high - low)  # pixels per message on the axis
    labelled = [bar for bar in drawn["bars"] if bar["total"]]
    assert sum(bar["total"] for bar in labelled) == 12
    for bar in labelled:
        assert bar["label"] == str(bar["total"])
        assert bar["height"] == pytest.approx(bar["total"] * per_message, abs=1.0)
    stats_page.locator("#view-stats").screenshot(path=str(SHOTS / "operator-stats.png"))
