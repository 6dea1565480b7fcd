"""The named read queries behind the consoles and the widget, against a real SQLite store:
what an agent, an operator or a visitor is shown (order, filters, counts, limits, what stays hidden)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import timedelta

import pytest

from bot import queries
from bot.accounts import Accounts
from bot.messages import utcnow
from bot.queries import ChannelReads
from bot.store import CLAIMED, RESOLVED, WAITING, Store, iso
from bot.web.console_events import session_is_open
from tests.test_conversation import make

_ids = itertools.count(1)
PASSWORD = "correct horse battery staple"


def say(store: Store, key: str, text: str = "Why was I charged?", *, channel: str = "widget",
        at=None, images: list[int] = ()) -> dict:
    """A user message, stored the way a channel stores it; returns the message row."""
    row, _ = store.add_inbound(
        channel=channel, external_key=key, platform_message_id=f"{key}:{next(_ids)}", user_id=key,
        user_name=f"User {key}", text=text, attachment_ids=list(images), refused_images=[],
        received_at=at or utcnow(), language="en",
    )
    return row


def hand_over(store: Store, key: str, reason: str = "low_confidence", *, ago_h: float = 0.0,
              channel: str = "widget", agent: str | None = None) -> int:
    """A conversation handed to people `ago_h` hours ago (claimed by `agent` if given)."""
    message = say(store, key, channel=channel)
    conversation_id = message["conversation_id"]
    escalation = store.add_escalation(conversation_id, message["id"], reason, f"because {reason}", 0.2, "a draft")
    store.update_escalation(escalation, created_at=iso(utcnow() - timedelta(hours=ago_h)))
    store.set_owner(conversation_id, CLAIMED if agent else WAITING, agent)
    return conversation_id


def image(store: Store, name: str) -> tuple[int, str]:
    data = f"png bytes of {name}".encode()
    sha = hashlib.sha256(data).hexdigest()
    return store.save_attachment(sha, data, "image/png", 10, 10), sha


# The agent console -----------------------------------------------------------------------
def test_the_queue_lists_waiting_before_claimed_and_the_longest_waiting_first(tmp_path):
    store = Store(tmp_path)
    recent = hand_over(store, "recent", "user_request", ago_h=1)
    oldest = hand_over(store, "oldest", "declined", ago_h=5)
    claimed = hand_over(store, "claimed", ago_h=9, agent="mei")
    say(store, "with-the-bot")
    resolved = hand_over(store, "resolved", ago_h=20)
    store.set_owner(resolved, RESOLVED, None)

    rows = queries.queue(store)
    assert [r["id"] for r in rows] == [oldest, recent, claimed]  # the bot's and resolved ones are not there
    assert [(r["status"], r["reason"], r["assigned_agent"]) for r in rows] == [
        (WAITING, "declined", None), (WAITING, "user_request", None), (CLAIMED, "low_confidence", "mei")]


def test_the_queue_shows_the_open_hand_over_not_an_older_closed_one(tmp_path):
    store = Store(tmp_path)
    conversation_id = hand_over(store, "twice", "declined", ago_h=30)
    old = queries.queue(store)[0]
    store.update_escalation(store.open_escalation(conversation_id)["id"], status="resolved")
    message = say(store, "twice", "still broken")
    store.add_escalation(conversation_id, message["id"], "repeated_failure", "again", 0.1, "")
    (row,) = queries.queue(store)
    assert old["reason"] == "declined" and row["reason"] == "repeated_failure" and row["detail"] == "again"
    message = say(store, "twice", "a person, please")  # asked again while it waits: the newest open one shows
    store.add_escalation(conversation_id, message["id"], "user_request", "asked", None, "")
    assert [(r["reason"], r["detail"]) for r in queries.queue(store)] == [("user_request", "asked")]


def test_the_queue_filters_by_channel_and_reason_and_stops_at_its_limit(tmp_path):
    store = Store(tmp_path)
    for n in range(5):
        hand_over(store, f"w{n}", "declined" if n % 2 else "user_request", ago_h=10 - n)
    slack = hand_over(store, "s1", "declined", channel="slack", ago_h=20)

    assert [r["id"] for r in queries.queue(store, channel="slack")] == [slack]
    declined = queries.queue(store, reason="declined")
    assert len(declined) == 3 and {r["reason"] for r in declined} == {"declined"}
    assert [r["channel"] for r in queries.queue(store, channel="widget", reason="declined")] == ["widget", "widget"]
    assert queries.queue(store, channel="telegram") == []
    assert len(queries.queue(store, limit=4)) == 4
    assert queries.queue(store, limit=4) == queries.queue(store)[:4]  # the limit keeps the head of the queue


def test_the_queue_preview_comes_from_the_users_messages_of_the_current_episode(tmp_path):
    store = Store(tmp_path)
    first, _ = image(store, "first episode")
    later, _ = image(store, "second episode")
    old = say(store, "v", "my old problem", images=[first])
    store.set_owner(old["conversation_id"], RESOLVED, None)
    new = say(store, "v", "a new problem", images=[later])  # after a resolve: a new episode
    store.add_message(new["conversation_id"], "bot", "a bot answer", kind="answer")
    store.add_message(new["conversation_id"], "note", "an agent's note")
    say(store, "v", "and more")

    rows = queries.episode_user_messages(store, new["conversation_id"], new["episode"])
    assert [r["text"] for r in rows] == ["a new problem", "and more"]
    assert rows[0]["attachment_ids"] == f"[{later}]"


def test_search_matches_text_literally_newest_first(tmp_path):
    store = Store(tmp_path)
    say(store, "a", "Payment failed — CARD_DECLINED (E-4012)")
    say(store, "b", 'it says "E-4012" OR something')
    say(store, "c", "为什么扣我钱?")
    say(store, "d", "100% sure it was 50_50")
    say(store, "e", "1000 sure")

    found = queries.search_messages(store, "E-4012")
    assert [r["text"] for r in found] == ['it says "E-4012" OR something', "Payment failed — CARD_DECLINED (E-4012)"]
    assert found[0]["channel"] == "widget" and found[0]["user_name"] == "User b"
    assert [r["text"] for r in queries.search_messages(store, '"E-4012" OR')] == ['it says "E-4012" OR something']
    assert queries.search_messages(store, "NEAR(a b)") == []  # query syntax is only text
    assert [r["text"] for r in queries.search_messages(store, "扣我")] == ["为什么扣我钱?"]  # two characters: LIKE
    assert [r["text"] for r in queries.search_messages(store, "0%")] == ["100% sure it was 50_50"]  # not a wildcard
    assert [r["text"] for r in queries.search_messages(store, "0_")] == ["100% sure it was 50_50"]
    assert len(queries.search_messages(store, "sure", limit=1)) == 1


def test_an_agent_opens_any_stored_screenshot_by_its_hash_and_nothing_else(tmp_path):
    store = Store(tmp_path)
    _, sha = image(store, "statement")
    path = queries.attachment_path(store, sha)
    assert path is not None and path.read_bytes() == b"png bytes of statement"
    assert queries.attachment_path(store, "0" * 64) is None


# The operator console --------------------------------------------------------------------
def test_templates_and_channels_the_database_knows(tmp_path):
    store = Store(tmp_path)
    store.add_template_version("billing", "name: billing  # one", author="olga", publish=True)
    draft = store.add_template_version("billing", "name: billing  # two", author="olga")
    store.add_template_version("device", "name: device", publish=True)
    store.set_channel_template("telegram", "device")
    store.set_channel_template("slack", "billing")

    assert queries.stored_template_names(store) == ["billing", "device"]
    assert queries.configured_channels(store) == ["slack", "telegram"]
    assert queries.template_version_body(store, "billing", draft) == "name: billing  # two"  # unpublished too
    assert queries.template_version_body(store, "billing", 99) is None
    assert queries.template_version_body(store, "device", draft) is None  # a version number of another template


def test_statistics_leave_out_older_turns_and_notices(tmp_path):
    store = Store(tmp_path)
    now = utcnow()
    since = iso(now - timedelta(days=7))
    today, yesterday = now, now - timedelta(days=1)
    for at, kind, latency, confidence in ((today, "answer", 900.0, 0.9), (today, "handover", 300.0, 0.2),
                                          (yesterday, "answer", 1500.0, 0.7),
                                          (now - timedelta(days=30), "answer", 5.0, 0.99)):
        message = say(store, f"k{at.day}{kind}", at=at)
        role = "bot" if kind == "answer" else "system"
        store.add_message(message["conversation_id"], role, "reply", kind=kind, latency_ms=latency,
                          confidence=confidence, created_at=iso(at))
    notice = say(store, "notice", at=today)
    store.add_message(notice["conversation_id"], "system", "busy", kind="notice", confidence=0.5, created_at=iso(today))

    assert queries.turn_latencies(store, since) == [300.0, 900.0, 1500.0]  # smallest first, none from before
    assert sorted(queries.turn_confidences(store, since)) == [0.2, 0.7, 0.9]  # a notice's confidence is not a turn's


def test_feedback_counts_and_the_newest_comments(tmp_path):
    store = Store(tmp_path)
    since = iso(utcnow() - timedelta(days=7))
    assert queries.feedback_counts(store, since) == {"helpful": 0, "not_helpful": 0}
    for n in range(14):
        conversation_id = say(store, f"f{n}")["conversation_id"]
        store.add_feedback(conversation_id, 1, helpful=n % 3 != 0, comment="" if n % 2 else f"comment {n}")
    old = say(store, "old")["conversation_id"]
    store.add_feedback(old, 1, helpful=False, comment="long ago")
    store.db.execute("update feedback set created_at = ? where conversation_id = ?",
                     [iso(utcnow() - timedelta(days=30)), old])
    store.db.conn.commit()

    assert queries.feedback_counts(store, since) == {"helpful": 9, "not_helpful": 5}
    comments = queries.feedback_comments(store, since)
    assert [c["comment"] for c in comments] == [f"comment {n}" for n in (12, 10, 8, 6, 4, 2, 0)]
    assert [c["helpful"] for c in comments[:2]] == [0, 1]
    assert len(queries.feedback_comments(store, since, limit=3)) == 3


# Console sessions ------------------------------------------------------------------------
def test_a_console_stream_lives_only_as_long_as_its_session_and_account(tmp_path):
    store = Store(tmp_path)
    accounts = Accounts(store)
    agent = accounts.add_user("mei", "agent", PASSWORD)
    operator = accounts.add_user("olga", "operator", PASSWORD)
    token, _ = accounts.open_session(agent)
    operator_token, _ = accounts.open_session(operator)
    seen = queries.console_session(store, hashlib.sha256(token.encode()).hexdigest())
    assert (seen["role"], seen["disabled"]) == ("agent", 0)
    assert queries.console_session(store, "0" * 64) is None

    assert session_is_open(accounts, token, "agent")
    assert not session_is_open(accounts, operator_token, "agent")  # an operator's session is no agent's
    assert session_is_open(accounts, operator_token, "operator")  # (it reads the agent console as an operator)
    assert not session_is_open(accounts, "made-up", "agent")
    accounts.disable_user("mei")
    assert not session_is_open(accounts, token, "agent")


# What a visitor reads -------------------------------------------------------------------
def test_a_visitor_sees_neither_notes_nor_drafts_nor_withheld_replies(tmp_path):
    store = Store(tmp_path)
    accounts = Accounts(store)
    accounts.add_user("mei", "agent", PASSWORD, display_name="Mei from Support")
    shot, _ = image(store, "statement")
    message = say(store, "visitor", "Why was I charged?", images=[shot])
    conversation_id = message["conversation_id"]
    store.add_message(conversation_id, "bot", "an answer nobody sent", kind="answer")
    store.withhold_bot_replies(conversation_id)
    store.add_message(conversation_id, "note", "refund case, be careful")
    store.add_message(conversation_id, "draft", "the bot's draft for the agent")
    store.set_owner(conversation_id, CLAIMED, "mei")
    store.add_message(conversation_id, "agent", "Hello, I am looking at it", kind="agent", author="mei")

    conversation, rows, attachments = queries.visible_history(store, "widget", "visitor")
    assert [r["text"] for r in rows] == ["Why was I charged?", "Hello, I am looking at it"]
    assert conversation["agent_name"] == "Mei from Support"  # never the login name
    assert list(attachments) == [shot]
    assert queries.visible_history(store, "widget", "someone-else") == (None, [], {})
    assert queries.visible_history(store, "slack", "visitor") == (None, [], {})  # keys are per channel


def test_a_resolved_conversation_asks_for_a_rating_once(tmp_path):
    store = Store(tmp_path)
    conversation_id = say(store, "visitor")["conversation_id"]
    assert queries.visible_conversation(store, "widget", "visitor")["feedback_requested"] is False
    store.set_owner(conversation_id, RESOLVED, None)
    seen = queries.visible_conversation(store, "widget", "visitor")
    assert seen["feedback_requested"] is True and seen["agent_name"] is None
    store.add_feedback(conversation_id, seen["episode"], helpful=True, comment="")
    assert queries.visible_conversation(store, "widget", "visitor")["feedback_requested"] is False


def test_a_visitor_opens_only_screenshots_of_their_own_conversation(tmp_path):
    store = Store(tmp_path)
    mine, my_sha = image(store, "mine")
    theirs, their_sha = image(store, "theirs")
    say(store, "me", images=[mine])
    say(store, "them", images=[theirs])

    assert queries.visible_attachment(store, "widget", "me", my_sha).path.read_bytes() == b"png bytes of mine"
    assert queries.visible_attachment(store, "widget", "me", their_sha) is None
    assert queries.visible_attachment(store, "widget", "nobody", my_sha) is None
    row, attachments = queries.message_with_attachments(store, say(store, "me", images=[mine])["id"])
    assert row["text"] == "Why was I charged?" and [a.sha256 for a in attachments.values()] == [my_sha]
    assert queries.message_with_attachments(store, 10_000) == (None, {})


async def test_a_channel_reads_its_own_conversations_through_the_database_thread(tmp_path):
    manager, _, _ = make(tmp_path)
    reads = ChannelReads(manager, "widget")
    assert await reads.conversation("visitor-1") is None
    say(manager.store, "visitor-1", "Why was I charged?")
    say(manager.store, "visitor-1", "on slack", channel="slack")
    found, rows, _ = await reads.history("visitor-1")
    assert found["channel"] == "widget" and [r["text"] for r in rows] == ["Why was I charged?"]
    assert (await reads.message(rows[0]["id"]))[0]["text"] == "Why was I charged?"
    assert await reads.attachment("visitor-1", "0" * 64) is None
    manager.close()


def test_the_stores_named_reads_refuse_to_write(tmp_path):
    store = Store(tmp_path)
    say(store, "v")
    with pytest.raises(ValueError):
        store.select("delete from messages")
    assert len(store.select("select id from messages")) == 1
