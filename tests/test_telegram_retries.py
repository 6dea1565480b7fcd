"""Telegram's retry policies, driven through python-telegram-bot against the local fake Bot API.

Bringing the bot up while the Bot API refuses the token or answers 5xx, long polling through
failures and flood waits, an update that cannot be stored while another program holds the
database, and stopping the adapter in the middle of a pause. The pauses are the real ones
(1 s, then 2 s): what is checked is when each request reached the fake.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest

from adapters.telegram import TelegramAdapter
from engine.stub import DEFAULT_REPLY, StubEngine
from tests.fake_telegram import FakeTelegram
from tests.live_server import live_server
from tests.live_server import wait_for as wait_until
from tests.test_telegram import BOT_ID, SECRET, TOKEN, event_rows, make_update, new_chat, the_adapter

EARLY_S = 0.05  # how much sooner than its pause a request may arrive (clock resolution)


def gaps(telegram: FakeTelegram, method: str) -> list[float]:
    """The time between one call of `method` and the next, as the fake received them."""
    times = [call.at for call in telegram.calls if call.method.lower() == method.lower()]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def logged(caplog, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


class IdleGateway:
    """Just enough of the Gateway for an adapter that never receives an update."""

    def on_pending_events(self, channel, handler) -> None:
        return None

    async def pending_events(self, channel) -> list[dict]:
        return []


def test_bring_up_waits_out_a_refused_token_and_a_5xx_with_a_doubling_pause(tmp_path, caplog):
    telegram = FakeTelegram(TOKEN)
    telegram.fail("getMe", 401, "Unauthorized")
    telegram.fail("getMe", 502)
    with telegram.serve():
        with live_server(tmp_path, engine=StubEngine(), telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                         telegram_api_url=telegram.base_url) as (base, app):
            adapter = the_adapter(app)
            wait_until(adapter.ready.is_set, timeout=15, what="getMe")
            telegram.wait_for(lambda: telegram.calls_to("setMyCommands"), what="the command list")
    assert len(telegram.calls_to("getMe")) == 3
    first, second = gaps(telegram, "getMe")
    assert first >= 1.0 - EARLY_S and second >= 2.0 - EARLY_S
    assert logged(caplog, logging.ERROR, "Telegram refused the bot token") == [
        "Telegram refused the bot token (SNAPDESK_TELEGRAM_TOKEN); trying again in 1 s"]
    assert logged(caplog, logging.WARNING, "not reachable") == [
        "Telegram is not reachable (NetworkError); trying again in 2 s"]


def test_polling_waits_out_a_flood_wait_without_lengthening_the_pause_after_errors(tmp_path, caplog):
    telegram = FakeTelegram(TOKEN)
    chat = new_chat()
    telegram.push_update(make_update(chat, text="Why was I charged?", update_id=700))
    telegram.fail("getUpdates", 502)
    telegram.fail("getUpdates", 429, retry_after=1)
    telegram.fail("getUpdates", 500)
    with telegram.serve():
        with live_server(tmp_path, engine=StubEngine(), telegram_token=TOKEN, telegram_api_url=telegram.base_url):
            assert telegram.wait_for_texts(chat, timeout=20) == [DEFAULT_REPLY]
            telegram.wait_for(lambda: telegram.calls_to("getUpdates", offset=701), what="the next offset")
    after_502, after_flood, after_500 = gaps(telegram, "getUpdates")[:3]
    assert after_502 >= 1.0 - EARLY_S
    assert after_flood >= 1.0 - EARLY_S  # as long as Telegram asked
    # The flood wait is no failure: the second error waits 2 s, not the 4 s of a third failure.
    assert 2.0 - EARLY_S <= after_500 < 3.5
    assert logged(caplog, logging.WARNING, "getUpdates failed") == [
        "telegram getUpdates failed (NetworkError); trying again in 1 s",
        "telegram getUpdates failed (NetworkError); trying again in 2 s",
    ]


def test_a_polled_update_that_cannot_be_stored_is_fetched_again_and_answered_once(tmp_path, caplog):
    telegram = FakeTelegram(TOKEN)
    chat = new_chat()
    with telegram.serve():
        with live_server(tmp_path, engine=StubEngine(), telegram_token=TOKEN, telegram_api_url=telegram.base_url,
                         db_lock_wait_s=0.3):
            telegram.wait_for(lambda: telegram.calls_to("getUpdates"), what="polling")
            holder = sqlite3.connect(tmp_path / "snapdesk.db", timeout=5)  # another program's write lock
            try:
                holder.execute("BEGIN IMMEDIATE")
                telegram.push_update(make_update(chat, text="Where is my parcel?", update_id=900))
                wait_until(lambda: logged(caplog, logging.ERROR, "storing update"), what="the refused update")
                refused = len(telegram.calls_to("getUpdates"))
            finally:
                holder.rollback()
                holder.close()
            assert telegram.wait_for_texts(chat, timeout=20) == [DEFAULT_REPLY]
            telegram.wait_for(lambda: telegram.calls_to("getUpdates", offset=901), what="the next offset")
            wait_until(lambda: event_rows(tmp_path, 900)[0]["processed_at"], what="the event finished")
    assert logged(caplog, logging.ERROR, "storing update")[0] == (
        f"telegram: storing update {BOT_ID}:900 failed (StoreBusy)")
    assert "offset" not in telegram.calls_to("getUpdates")[refused]  # not confirmed: fetched again
    assert telegram.texts_to(chat) == [DEFAULT_REPLY]


@pytest.mark.parametrize("failing", ["getMe", "getUpdates"])
async def test_stop_ends_a_retry_pause_at_once(failing):
    telegram = FakeTelegram(TOKEN)
    telegram.fail(failing, 502, times=100)
    with telegram.serve():
        adapter = TelegramAdapter(token=TOKEN, gateway=IdleGateway(), api_url=telegram.base_url)
        await adapter.start()
        for _ in range(200):  # the second failure: a pause of 2 s has begun
            if len(telegram.calls_to(failing)) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(telegram.calls_to(failing)) == 2
        started = time.monotonic()
        await adapter.stop()
        assert time.monotonic() - started < 1.0
        assert adapter._main.cancelled()
        assert len(telegram.calls_to(failing)) == 2
