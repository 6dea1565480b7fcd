"""Gradual rollout: the draw's share and stickiness, answers through the real manager, promote and
roll back, compare-and-set under races and interleavings, the arms' figures, audit, and the HTTP API."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bot import rollouts
from bot.messages import utcnow
from bot.rollout_stats import arm_figures
from bot.rollouts import CANDIDATE, LIVE, InvalidRollout, NoSuchRollout, RolloutConflict
from bot.store import ANSWERED, HANDED_OVER, Store, iso
from bot.template_versions import PublishedTemplates
from bot.templates import TemplateLibrary
from engine.stub import StubEngine
from tests.live_server import live_server
from tests.test_agent_console import signed_in
from tests.test_conversation import inbound, make

TEMPLATE = "general"
_keys = itertools.count(1)


def candidate_body(store: Store, company: str = "Acme Candidate") -> str:
    shipped = store.template_versions(TEMPLATE)[0]["body"]
    assert "company: Acme\n" in shipped
    return shipped.replace("company: Acme\n", f"company: {company}\n", 1)


def stored_candidate(store: Store, company: str = "Acme Candidate") -> int:
    return store.add_template_version(TEMPLATE, candidate_body(store, company), author="olga", publish=False)


def seeded(path: Path) -> tuple[Store, PublishedTemplates]:
    store = Store(path)
    templates = PublishedTemplates(store, TemplateLibrary())
    templates.seed()
    return store, templates


def new_conversation(store: Store, channel: str = "widget") -> dict:
    key = f"visitor-{next(_keys)}"
    message, _ = store.add_inbound(channel=channel, external_key=key, platform_message_id=key, user_id=key,
                                   user_name="Ana", text="Why was I charged?", attachment_ids=[], refused_images=[],
                                   received_at=utcnow(), language="en")
    return store.conversation(message["conversation_id"])


def version_for(templates: PublishedTemplates, conversation: dict) -> int:
    return templates.render_for(conversation["channel"], "en", conversation=conversation).version


@pytest.fixture
def seeded_store(tmp_path):
    store, templates = seeded(tmp_path)
    yield store, templates
    store.close()


# The draw ------------------------------------------------------------------------------
def test_the_candidate_share_of_new_conversations_is_the_percent(seeded_store):
    store, templates = seeded_store
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=30, actor="olga",
                             version=stored_candidate(store))
    n = 2000
    drawn = [rollouts.candidate_for(store, "widget", TEMPLATE, new_conversation(store)) for _ in range(n)]
    share = sum(d is not None for d in drawn) / n
    sd = math.sqrt(0.3 * 0.7 / n)  # binomial: about 0.010
    assert abs(share - 0.30) < 4.5 * sd, share
    stored = {row["arm"]: row["n"] for row in store.select(
        "select arm, count(*) as n from rollout_arms where rollout_id = ? group by arm", [rollout.id])}
    assert stored == {CANDIDATE: round(share * n), LIVE: n - round(share * n)}  # every draw is stored


@pytest.mark.parametrize("percent, expected", [(0, 0.0), (100, 1.0)])
def test_zero_and_a_hundred_percent_mean_nobody_and_everybody(seeded_store, percent, expected):
    store, templates = seeded_store
    version = stored_candidate(store)
    rollouts.start(store, template=TEMPLATE, channel="widget", percent=percent, actor="olga", version=version)
    versions = [version_for(templates, new_conversation(store)) for _ in range(200)]
    assert sum(v == version for v in versions) / len(versions) == expected


def test_the_draw_is_a_fixed_place_per_rollout_and_conversation():
    places = [rollouts.draw(7, conversation) for conversation in range(1, 1001)]
    assert places == [rollouts.draw(7, conversation) for conversation in range(1, 1001)]
    assert all(0 <= p < 100 for p in places)
    assert places != [rollouts.draw(8, conversation) for conversation in range(1, 1001)]


# Sticky, new conversations only ---------------------------------------------------------
def test_a_conversation_keeps_its_side_across_turns_and_percent_changes(seeded_store):
    store, templates = seeded_store
    live = rollouts.live_version(store, TEMPLATE)
    older = new_conversation(store)
    version = stored_candidate(store)
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=50, actor="olga", version=version)
    conversations = [new_conversation(store) for _ in range(40)]
    first = {c["id"]: version_for(templates, c) for c in conversations}
    assert set(first.values()) == {version, live}, "both sides drawn at 50%"
    assert version_for(templates, older) == live, "a conversation older than the rollout stays live"
    for percent in (100, 0, 75):
        rollouts.set_percent(store, rollout.id, percent, "olga")
        assert {c["id"]: version_for(templates, c) for c in conversations} == first
        assert version_for(templates, older) == live
    rollouts.set_percent(store, rollout.id, 100, "olga")
    assert version_for(templates, new_conversation(store)) == version, "a new conversation draws at the new percent"


def test_a_channel_with_another_template_or_another_channel_is_not_touched(seeded_store):
    store, templates = seeded_store
    version = stored_candidate(store)
    rollouts.start(store, template=TEMPLATE, channel="widget", percent=100, actor="olga", version=version)
    assert version_for(templates, new_conversation(store, "slack")) != version
    store.set_channel_template("widget", "billing")
    conversation = new_conversation(store)
    assert templates.render_for("widget", "en", conversation=conversation).template.name == "billing"
    assert not store.select("select * from rollout_arms where conversation_id = ?", [conversation["id"]])


def test_a_candidate_that_fails_to_render_answers_with_the_live_version(seeded_store, caplog):
    store, templates = seeded_store
    live = rollouts.live_version(store, TEMPLATE)
    good = store.published_template_versions(TEMPLATE)[0]["body"]
    broken = good.replace("{{ company }}", "{{ ''.__class__.__mro__ }}", 1)
    version = store.add_template_version(TEMPLATE, broken, author="olga")
    rollouts.start(store, template=TEMPLATE, channel="widget", percent=100, actor="olga", version=version)
    with caplog.at_level(logging.ERROR, logger="bot.template_versions"):
        assert version_for(templates, new_conversation(store)) == live
    assert f"version {version} (rolled out on widget) failed to render" in caplog.text


# Through the conversation manager ------------------------------------------------------
def answers(manager, conversation_id: int) -> list[dict]:
    return [m for m in manager.store.messages(conversation_id) if m["role"] == "bot" and m["kind"] == "answer"]


async def test_each_answer_is_written_by_the_version_of_its_conversations_side(tmp_path):
    manager, _, engine = make(tmp_path)
    store = manager.store
    live = rollouts.live_version(store, TEMPLATE)
    before = await manager.handle(inbound("Why was I charged?", key="before"))
    version = stored_candidate(store)
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=50, actor="olga", version=version)
    sides = {}
    for i in range(16):
        outcome = await manager.handle(inbound("Why was I charged?", key=f"v{i}"))
        assert outcome.kind == "answered"
        system = engine.requests[-1].messages[0].parts[0].text
        arm = store.select("select arm from rollout_arms where conversation_id = ?", [outcome.conversation_id])
        sides[outcome.conversation_id] = arm[0]["arm"]
        expected = version if arm[0]["arm"] == CANDIDATE else live
        assert answers(manager, outcome.conversation_id)[-1]["template_version"] == expected
        assert ("Acme Candidate" in system) == (expected == version)
    assert set(sides.values()) == {CANDIDATE, LIVE}
    rollouts.set_percent(store, rollout.id, 1, "olga")
    for i in range(16):  # second turns: the same version again
        outcome = await manager.handle(inbound("And the renewal?", key=f"v{i}"))
        expected = version if sides[outcome.conversation_id] == CANDIDATE else live
        assert [a["template_version"] for a in answers(manager, outcome.conversation_id)] == [expected, expected]
    outcome = await manager.handle(inbound("Still there?", key="before"))
    assert {a["template_version"] for a in answers(manager, before.conversation_id)} == {live}
    manager.close()


async def _everyone_answers_with(manager, keys: list[str]) -> set[int]:
    found = set()
    for key in keys:
        outcome = await manager.handle(inbound("One more question", key=key))
        found.add(answers(manager, outcome.conversation_id)[-1]["template_version"])
    return found


@pytest.mark.parametrize("end", ["promote", "roll_back"])
async def test_promote_gives_everyone_the_candidate_and_roll_back_the_live_version(tmp_path, end):
    manager, _, _ = make(tmp_path)
    store = manager.store
    live = rollouts.live_version(store, TEMPLATE)
    await manager.handle(inbound("Why was I charged?", key="before"))
    version = stored_candidate(store)
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=50, actor="olga", version=version)
    keys = [f"during-{i}" for i in range(10)]
    assert await _everyone_answers_with(manager, keys) == {live, version}
    getattr(rollouts, end)(store, rollout.id, "olga")
    expected = version if end == "promote" else live
    assert await _everyone_answers_with(manager, ["before", *keys, "after-1", "after-2"]) == {expected}
    assert rollouts.live_version(store, TEMPLATE) == expected
    manager.close()


async def test_a_talk_to_a_person_button_hands_over_in_the_words_of_the_conversations_side(tmp_path):
    manager, channel, _ = make(tmp_path)
    store = manager.store
    version = stored_candidate(store)
    rollouts.start(store, template=TEMPLATE, channel="widget", percent=100, actor="olga", version=version)
    outcome = await manager.handle(inbound("Why was I charged?", key="button"))
    assert await manager.request_human(outcome.conversation_id) is True
    notice = [m for m in store.messages(outcome.conversation_id) if m["kind"] == "handover"][-1]
    assert "Acme Candidate support team" in notice["text"]
    manager.close()


# Compare-and-set ------------------------------------------------------------------------
def test_an_ended_rollout_never_changes_again(seeded_store):
    store, _ = seeded_store
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=20, actor="olga",
                             version=stored_candidate(store))
    rollouts.roll_back(store, rollout.id, "olga")
    ended = rollouts.get(store, rollout.id)
    for change in (lambda: rollouts.promote(store, rollout.id, "tom"),
                   lambda: rollouts.roll_back(store, rollout.id, "tom"),
                   lambda: rollouts.set_percent(store, rollout.id, 90, "tom")):
        with pytest.raises(RolloutConflict, match="rolled back already"):
            change()
    assert rollouts.get(store, rollout.id) == ended
    with pytest.raises(NoSuchRollout):
        rollouts.promote(store, 999, "olga")


def test_a_start_is_refused_for_a_live_version_a_missing_one_or_a_bad_percent(seeded_store):
    store, _ = seeded_store
    live = rollouts.live_version(store, TEMPLATE)
    version = stored_candidate(store)
    for kwargs, message in (({"version": live}, "live version already"), ({"version": 99}, "no version 99"),
                            ({"version": version, "percent": 101}, "between 0 and 100"),
                            ({"version": version, "body": "name: general"}, "either a stored version or a draft")):
        with pytest.raises(InvalidRollout, match=message):
            rollouts.start(store, **{"template": TEMPLATE, "channel": "widget", "percent": 10, "actor": "olga",
                                     **kwargs})
    assert not store.select("select * from template_rollouts")


def test_a_draft_is_stored_as_an_unpublished_version(seeded_store):
    store, _ = seeded_store
    live = rollouts.live_version(store, TEMPLATE)
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=10, actor="olga",
                             body=candidate_body(store))
    row = store.template_versions(TEMPLATE)[-1]
    assert rollout.version == row["version"] == live + 1 and row["published_at"] is None and row["author"] == "olga"
    assert rollouts.live_version(store, TEMPLATE) == live
    with pytest.raises(RolloutConflict, match="already has a rollout"):  # and nothing is stored for a refused one
        rollouts.start(store, template=TEMPLATE, channel="widget", percent=10, actor="tom", body=candidate_body(store))
    assert store.template_versions(TEMPLATE)[-1]["version"] == rollout.version


def race(data_dir: Path, *actions) -> list[object]:
    """Run each action(store) in its own thread on its own connection, released together."""
    stores = [Store(data_dir) for _ in actions]  # opened one by one: opening probes the directory
    barrier = threading.Barrier(len(actions))
    results: list[object] = [None] * len(actions)

    def run(i, action):
        try:
            barrier.wait(timeout=30)
            results[i] = action(stores[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    return results


def test_of_a_racing_promote_and_roll_back_exactly_one_wins(seeded_store, tmp_path):
    store, _ = seeded_store
    for _ in range(8):
        rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=30, actor="olga",
                                 version=stored_candidate(store))
        results = race(tmp_path, lambda s: rollouts.promote(s, rollout.id, "olga"),
                       lambda s: rollouts.roll_back(s, rollout.id, "tom"))
        won = [r for r in results if isinstance(r, rollouts.Rollout)]
        assert len(won) == 1 and sum(isinstance(r, RolloutConflict) for r in results) == 1, results
        final = rollouts.get(store, rollout.id)
        assert final.status == won[0].status
        assert (rollouts.live_version(store, TEMPLATE) == rollout.version) == (final.status == rollouts.PROMOTED)
        actions = [row["action"] for row in store.select(
            "select action from audit_log where target = ? and action != 'rollout_start'", [f"rollout:{rollout.id}"])]
        assert actions == [{"promoted": "rollout_promote", "rolled_back": "rollout_rollback"}[final.status]]


def test_of_two_starts_on_one_channel_exactly_one_wins(seeded_store, tmp_path):
    store, _ = seeded_store
    for _ in range(8):
        versions = [stored_candidate(store, "Acme A"), stored_candidate(store, "Acme B")]
        results = race(tmp_path, *[
            (lambda v: lambda s: rollouts.start(s, template=TEMPLATE, channel="widget", percent=40, actor="olga",
                                                version=v))(v) for v in versions])
        won = [r for r in results if isinstance(r, rollouts.Rollout)]
        assert len(won) == 1 and sum(isinstance(r, RolloutConflict) for r in results) == 1, results
        assert rollouts.active(store, "widget").id == won[0].id
        rollouts.roll_back(store, won[0].id, "olga")


CHANNELS = ("widget", "slack")


class RolloutMachine(RuleBasedStateMachine):
    """Starts, percent changes, promotes and roll backs in any order, each step checked
    against a model; after every step: at most one active rollout per channel, and an ended
    rollout is exactly as it was when it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="snapdesk-rollouts-"))
        self.store, self.templates = seeded(self.dir)
        self.versions = [stored_candidate(self.store, f"Acme {n}") for n in range(3)]
        self.live = rollouts.live_version(self.store, TEMPLATE)
        self.active: dict[str, int] = {}  # channel -> rollout id
        self.ended: dict[int, rollouts.Rollout] = {}
        self.known: list[int] = []

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(channel=st.sampled_from(CHANNELS), which=st.integers(0, 3), percent=st.integers(0, 100))
    def start(self, channel, which, percent):
        version = [*self.versions, self.live][which]
        try:
            rollout = rollouts.start(self.store, template=TEMPLATE, channel=channel, percent=percent, actor="olga",
                                     version=version)
        except RolloutConflict:
            assert channel in self.active
            return
        except InvalidRollout:
            assert version == self.live and channel not in self.active
            return
        assert channel not in self.active and version != self.live
        self.active[channel] = rollout.id
        self.known.append(rollout.id)

    def _pick(self, data) -> int:
        return data.draw(st.sampled_from(self.known))

    @precondition(lambda self: self.known)
    @rule(data=st.data(), percent=st.integers(0, 100))
    def change_percent(self, data, percent):
        rollout_id = self._pick(data)
        self._change(rollout_id, lambda: rollouts.set_percent(self.store, rollout_id, percent, "tom"))

    @precondition(lambda self: self.known)
    @rule(data=st.data(), end=st.sampled_from(["promote", "roll_back"]))
    def finish(self, data, end):
        rollout_id = self._pick(data)
        result = self._change(rollout_id, lambda: getattr(rollouts, end)(self.store, rollout_id, "tom"))
        if result is not None:
            del self.active[result.channel]
            self.ended[rollout_id] = result
            if end == "promote":
                self.live = result.version

    def _change(self, rollout_id, change):
        try:
            result = change()
        except RolloutConflict:
            assert rollout_id in self.ended
            return None
        assert rollout_id not in self.ended
        return result

    @invariant()
    def one_active_rollout_per_channel(self):
        rows = self.store.select("select channel, id from template_rollouts where status = 'active'")
        assert {row["channel"]: row["id"] for row in rows} == self.active and len(rows) == len(self.active)

    @invariant()
    def ended_rollouts_stay_as_they_ended(self):
        for rollout_id, ended in self.ended.items():
            assert rollouts.get(self.store, rollout_id) == ended

    @invariant()
    def the_live_version_is_the_last_promoted(self):
        assert rollouts.live_version(self.store, TEMPLATE) == self.live


RolloutMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None, derandomize=True,
                                            suppress_health_check=[HealthCheck.too_slow])
test_rollout_changes_hold_under_any_interleaving = RolloutMachine.TestCase


# Figures per arm ------------------------------------------------------------------------
def test_the_figures_of_each_arm_are_counted_from_its_own_conversations(seeded_store):
    store, _ = seeded_store
    outside = new_conversation(store)  # before the rollout: not counted
    store.add_message(outside["id"], "bot", "an answer", kind="answer", confidence=0.1, latency_ms=100.0)
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=100, actor="olga",
                             version=stored_candidate(store))
    candidates = [new_conversation(store) for _ in range(2)]
    for conversation in candidates:
        assert rollouts.candidate_for(store, "widget", TEMPLATE, conversation)
    rollouts.set_percent(store, rollout.id, 0, "olga")
    lives = [new_conversation(store) for _ in range(3)]
    for conversation in lives:
        assert rollouts.candidate_for(store, "widget", TEMPLATE, conversation) is None

    def turn(conversation, outcome, confidence, seconds, reason=None):
        question = store.select("select id from messages where conversation_id = ? and role = 'user' "
                                "order by id desc limit 1", [conversation["id"]])[0]["id"]
        store.set_message_status(question, outcome)
        if outcome == ANSWERED:
            store.add_message(conversation["id"], "bot", "ok", kind="answer", reply_to=question,
                              confidence=confidence, latency_ms=seconds * 1000)
        else:
            store.add_message(conversation["id"], "system", "a person", kind="handover", reply_to=question,
                              confidence=confidence, latency_ms=seconds * 1000)
            store.add_escalation(conversation["id"], question, reason, "", confidence, "")

    turn(candidates[0], ANSWERED, 0.9, 2.0)
    turn(candidates[1], HANDED_OVER, 0.3, 4.0, "low_confidence")
    store.add_feedback(candidates[0]["id"], 1, helpful=True, comment="")
    turn(lives[0], ANSWERED, 0.8, 1.0)
    turn(lives[1], ANSWERED, 0.7, 3.0)
    turn(lives[2], HANDED_OVER, None, 5.0, "user_request")
    store.add_feedback(lives[0]["id"], 1, helpful=False, comment="")
    store.add_feedback(lives[1]["id"], 1, helpful=False, comment="")
    rollouts.roll_back(store, rollout.id, "olga")
    later = store.add_inbound(channel="widget", external_key=candidates[0]["external_key"], platform_message_id="late",
                              user_id="x", user_name="Ana", text="after the end", attachment_ids=[],
                              refused_images=[], received_at=utcnow() + timedelta(seconds=1), language="en")
    assert later[1]

    figures = arm_figures(store, rollouts.get(store, rollout.id))
    candidate, live = figures[CANDIDATE], figures[LIVE]
    assert (candidate["conversations"], candidate["messages"]) == (2, 2)
    assert (live["conversations"], live["messages"]) == (3, 3)
    assert candidate["answered_rate"] == 0.5 and candidate["handover_rate"] == 0.5
    assert live["answered_rate"] == pytest.approx(2 / 3) and live["handover_rate"] == pytest.approx(1 / 3)
    assert candidate["handovers_by_reason"] == {"low_confidence": 1}
    assert live["handovers_by_reason"] == {"user_request": 1}
    assert candidate["mean_confidence"] == pytest.approx(0.6) and live["mean_confidence"] == pytest.approx(0.75)
    assert (candidate["feedback"]["helpful"], candidate["feedback"]["not_helpful"]) == (1, 0)
    assert (live["feedback"]["helpful"], live["feedback"]["not_helpful"]) == (0, 2)
    assert candidate["reply_time_s"]["median"] == pytest.approx(3.0)
    assert live["reply_time_s"]["median"] == pytest.approx(3.0) and live["reply_time_s"]["count"] == 3
    assert sum(s["share"] for s in live["outcomes"]["shares"]) == pytest.approx(1.0)


def test_an_arm_nobody_drew_has_no_rates(seeded_store):
    store, _ = seeded_store
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=5, actor="olga",
                             version=stored_candidate(store))
    figures = arm_figures(store, rollout)[CANDIDATE]
    assert figures["conversations"] == figures["messages"] == 0
    assert figures["answered_rate"] is None and figures["mean_confidence"] is None
    assert figures["reply_time_s"]["median"] is None and figures["feedback"]["share"] is None


# Audit and retention --------------------------------------------------------------------
def test_every_step_is_audited_with_its_details(seeded_store):
    store, _ = seeded_store
    live = rollouts.live_version(store, TEMPLATE)
    rollout = rollouts.start(store, template=TEMPLATE, channel="widget", percent=10, actor="olga",
                             body=candidate_body(store))
    rollouts.set_percent(store, rollout.id, 40, "tom")
    rollouts.promote(store, rollout.id, "olga")
    second = rollouts.start(store, template=TEMPLATE, channel="widget", percent=20, actor="tom",
                            version=stored_candidate(store, "Acme Two"))
    rollouts.roll_back(store, second.id, "tom")
    rows = [(r["actor"], r["action"], r["target"], json.loads(r["detail"])) for r in store.select(
        "select * from audit_log where action like 'rollout_%' order by id")]
    base = {"template": TEMPLATE, "version": rollout.version, "channel": "widget"}
    assert rows == [
        ("olga", "rollout_start", f"rollout:{rollout.id}", {**base, "percent": 10.0, "draft": True}),
        ("tom", "rollout_percent", f"rollout:{rollout.id}", {**base, "percent": 40.0, "previous": 10.0}),
        ("olga", "rollout_promote", f"rollout:{rollout.id}", {**base, "percent": 40.0, "previous_live": live}),
        ("tom", "rollout_start", f"rollout:{second.id}",
         {**base, "version": second.version, "percent": 20.0, "draft": False}),
        ("tom", "rollout_rollback", f"rollout:{second.id}", {**base, "version": second.version, "percent": 20.0}),
    ]


def test_purging_a_conversation_removes_its_draw(seeded_store):
    store, _ = seeded_store
    rollouts.start(store, template=TEMPLATE, channel="widget", percent=50, actor="olga",
                   version=stored_candidate(store))
    old, new = new_conversation(store), new_conversation(store)
    for conversation in (old, new):
        rollouts.candidate_for(store, "widget", TEMPLATE, conversation)
    store.update_conversation(old["id"], last_message_at=iso(utcnow() - timedelta(days=40)))
    assert store.purge(30)["conversations"] == 1
    arms = store.select("select conversation_id from rollout_arms")
    assert [row["conversation_id"] for row in arms] == [new["id"]]


# Over HTTP ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("rollouts"), engine=StubEngine(), login_rate_per_ip=1000,
                     users={"olga": "operator", "mei": "agent", "ada": "admin"}) as (base, app):
        yield base, app


def test_only_operators_and_admins_see_and_change_rollouts(server):
    base, _ = server
    for method, url, body in (("GET", "/operator/api/rollouts", None),
                              ("POST", "/operator/api/rollouts", {"template": TEMPLATE, "channel": "widget",
                                                                 "percent": 10, "version": 99}),
                              ("POST", "/operator/api/rollouts/1/percent", {"percent": 10}),
                              ("POST", "/operator/api/rollouts/1/promote", None),
                              ("POST", "/operator/api/rollouts/1/rollback", None)):
        assert httpx.request(method, base + url, json=body).status_code == 401
        assert signed_in(base, "mei").request(method, url, json=body).status_code == 403
        for name in ("olga", "ada"):
            assert signed_in(base, name).request(method, url, json=body).status_code not in (401, 403)
        if method == "POST":
            bare = httpx.Client(base_url=base, cookies=signed_in(base, "olga").cookies)
            assert bare.post(url, json=body).status_code == 403, "no CSRF token"


def test_start_watch_change_and_promote_over_http(server):
    base, app = server
    store = app.state.runtime.store
    olga, ada = signed_in(base, "olga"), signed_in(base, "ada")
    live = rollouts.live_version(store, TEMPLATE)
    version = stored_candidate(store, "Acme HTTP")
    started = olga.post("/operator/api/rollouts", json={"template": TEMPLATE, "channel": "widget", "percent": 25,
                                                       "version": version})
    assert started.status_code == 200, started.text
    rollout = started.json()
    assert (rollout["status"], rollout["version"], rollout["percent"], rollout["live_version"]) == \
        ("active", version, 25.0, live)
    assert set(rollout["arms"]) == {CANDIDATE, LIVE} and rollout["arms"][CANDIDATE]["conversations"] == 0
    again = ada.post("/operator/api/rollouts", json={"template": TEMPLATE, "channel": "widget", "percent": 5,
                                                    "version": version})
    assert again.status_code == 409 and "already has a rollout" in again.json()["message"]
    for percent in (0, 100, 150):
        assert olga.post(f"/operator/api/rollouts/{rollout['id']}/percent", json={"percent": percent}).status_code == 422
    changed = ada.post(f"/operator/api/rollouts/{rollout['id']}/percent", json={"percent": 60})
    assert changed.status_code == 200 and changed.json()["percent"] == 60.0
    listed = olga.get("/operator/api/rollouts").json()["rollouts"]
    assert listed[0]["id"] == rollout["id"] and listed[0]["status"] == "active"
    promoted = olga.post(f"/operator/api/rollouts/{rollout['id']}/promote")
    assert promoted.status_code == 200 and promoted.json()["status"] == "promoted"
    assert promoted.json()["live_version"] == version and promoted.json()["ended_by"] == "olga"
    templates = {t["name"]: t for t in olga.get("/operator/api/templates").json()["templates"]}
    assert templates[TEMPLATE]["published_version"] == version, "the console shows it live"
    for late in ("promote", "rollback"):
        refused = ada.post(f"/operator/api/rollouts/{rollout['id']}/{late}")
        assert refused.status_code == 409 and "promoted already" in refused.json()["message"]
    assert olga.post("/operator/api/rollouts/999999/rollback").status_code == 404
    actions = [(r["actor"], r["action"]) for r in store.select(
        "select actor, action from audit_log where target = ? order by id", [f"rollout:{rollout['id']}"])]
    assert actions == [("olga", "rollout_start"), ("ada", "rollout_percent"), ("olga", "rollout_promote")]


def test_a_draft_is_checked_the_way_a_publish_is(server):
    base, app = server
    store = app.state.runtime.store
    olga = signed_in(base, "olga")
    body = candidate_body(store, "Acme Draft")

    def start(**fields):
        return olga.post("/operator/api/rollouts", json={"template": TEMPLATE, "channel": "widget", "percent": 10,
                                                        **fields})

    broken = start(yaml="name: general\nsystem_prompt: [unclosed")
    assert broken.status_code in (400, 422) and broken.json()["error"] in ("invalid_template", "template_too_complex")
    assert "issues" in broken.json()
    renamed = start(yaml=body.replace("name: general", "name: other", 1))
    assert renamed.status_code == 422 and "not 'general'" in renamed.json()["message"]
    assert start(yaml=body, version=1).status_code == 422
    assert start().status_code == 422
    elsewhere = olga.post("/operator/api/rollouts", json={"template": "billing", "channel": "widget", "percent": 10,
                                                         "version": 1})
    assert elsewhere.status_code == 422 and "answers with template general" in elsewhere.json()["message"]
    assert start(yaml=body, channel="nowhere").status_code == 422
    versions = len(store.template_versions(TEMPLATE))
    started = start(yaml=body)
    assert started.status_code == 200, started.text
    stored = store.template_versions(TEMPLATE)
    assert len(stored) == versions + 1 and stored[-1]["published_at"] is None and stored[-1]["author"] == "olga"
    assert started.json()["version"] == stored[-1]["version"]
    rolled = olga.post(f"/operator/api/rollouts/{started.json()['id']}/rollback")
    assert rolled.status_code == 200 and rolled.json()["status"] == "rolled_back"
    assert rollouts.live_version(store, TEMPLATE) != stored[-1]["version"]
