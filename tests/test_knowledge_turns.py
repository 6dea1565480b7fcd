"""Turns that answer from the help centre: passages in the prompt, citations stored and shown on
every channel, a screenshot alone finding its article, and the no_knowledge hand-over."""

from __future__ import annotations

import io
import json

import pytest
from telegram.ext import ExtBot

from bench.screenshot_corpus import sample
from bot.knowledge.importing import Importer
from bot.knowledge.index import KnowledgeBase
from bot.messages import Conversation, Inbound, Outbound
from bot.screenshots import ReadingOptions
from bot.store import Store
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium, sign_in
from tests.fake_slack import BOT_TOKEN, TEAM, FakeSlack
from tests.fake_telegram import FakeTelegram
from tests.live_server import PASSWORD, live_server
from tests import test_screenshot_flow as flow
from tests.test_screenshot_flow import reader  # noqa: F401 (the module's OCR reader)

HELP_CENTRE = "prompts/knowledge"


def make(tmp_path, reply: str, ocr_reader=None):
    engine = StubEngine(reply=reply, keep_requests=10)
    manager, recorder, _ = flow.make(tmp_path, ocr_reader, engine, ReadingOptions(ocr=ocr_reader is not None),
                                     knowledge=True)
    return manager, recorder, engine


async def imported(manager) -> None:
    report = await Importer(manager.knowledge, manager.db).add([HELP_CENTRE])
    assert len(report.added) >= 24 and not report.failed


def system_text(request) -> str:
    return "".join(part.text for part in request.messages[0].parts if hasattr(part, "text"))


_ids = iter(range(1, 10**9))


def inbound(text: str, images: tuple[bytes, ...] = (), key: str = "visitor-1") -> Inbound:
    return Inbound(channel="widget", conversation_key=key, message_id=f"kb{next(_ids)}", user_id=key,
                   user_name="Ana", text=text, images=images)


async def test_an_answer_cites_the_passages_it_was_given_and_keeps_them(tmp_path):
    manager, recorder, engine = make(tmp_path, "That 88.00 is your membership's automatic renewal [1]. "
                                               "You can switch it off in the app [2] [9].")
    await imported(manager)
    outcome = await manager.handle(inbound("Why was I charged 88 on my card?"))
    assert outcome.kind == "answered"
    (request,) = engine.requests
    system = system_text(request)
    assert "## Knowledge" in system and "[1] " in system and "automatic renewal" in system.lower()

    (answer,) = [o for o in recorder.outbound if o.kind == "answer"]
    assert answer.sources and answer.sources[0]["n"] == 1
    assert "renewal" in answer.sources[0]["title"].lower()
    assert all(source["n"] != 9 for source in answer.sources)  # a number it was not given is no citation

    stored = manager.store.message(answer.message_id)
    knowledge = json.loads(stored["knowledge"])
    assert knowledge["cited"][:1] == [1] and 9 not in knowledge["cited"]
    assert {"n", "chunk_id", "article_id", "title", "url", "section", "score"} <= set(knowledge["retrieved"][0])
    manager.close()


async def test_chinese_two_character_words_find_the_chinese_article(tmp_path):
    manager, recorder, engine = make(tmp_path, "这是会员自动续费 [1]。")
    await imported(manager)
    await manager.handle(inbound("为什么扣款了？是不是续费"))
    (answer,) = [o for o in recorder.outbound if o.kind == "answer"]
    assert "续费" in answer.sources[0]["title"]
    manager.close()


async def test_a_screenshot_alone_finds_its_article_through_what_it_shows(tmp_path, reader):  # noqa: F811
    manager, recorder, engine = make(tmp_path, "Your card was declined [1].", ocr_reader=reader)
    await imported(manager)
    buffer = io.BytesIO()
    sample("payment_failed_en_desktop").image.save(buffer, "PNG")
    await manager.handle(inbound("?", images=(buffer.getvalue(),)))
    (answer,) = [o for o in recorder.outbound if o.kind == "answer"]
    assert "Payment failed" in answer.sources[0]["title"]
    assert "CARD_DECLINED" in system_text(engine.requests[0])
    manager.close()


async def test_a_template_that_requires_knowledge_hands_over_when_there_is_none(tmp_path):
    manager, recorder, engine = make(tmp_path, "Penguins cannot fly.")
    await imported(manager)
    name = manager.templates.template_name_for("widget")
    template, _ = manager.templates.candidates(name)[0]
    strict = template.model_copy(update={"escalation": template.escalation.model_copy(
        update={"require_knowledge": True})})
    manager.store.add_template_version(name, strict.to_yaml(), author="test", publish=True)

    outcome = await manager.handle(inbound("penguins volcanoes"))
    assert outcome.kind == "handed_over" and outcome.reason == "no_knowledge"
    assert not engine.requests  # decided without the model
    answered = await manager.handle(inbound("How do I turn off auto-renew for my membership?", key="visitor-2"))
    assert answered.kind == "answered"
    manager.close()


@pytest.fixture
def slack():
    fake = FakeSlack().start()
    yield fake
    fake.stop()


async def test_slack_posts_the_answer_with_its_sources_as_mrkdwn_links(slack):
    from adapters.slack_api import SlackApi
    from adapters.slack_channel import SlackChannel

    channel = SlackChannel(SlackApi(BOT_TOKEN, slack.api_url))
    target = Conversation(1, "slack", f"{TEAM}:D0SOURCES", "U1", "en")
    await channel.send(target, Outbound("Ask for a refund in the app [1].", sources=(
        {"n": 1, "title": "Refunds <fast> | easy", "url": "https://help.acme.example/refunds"},
        {"n": 2, "title": "Router lights", "url": ""})))
    (posted,) = slack.channel_messages("D0SOURCES")
    assert posted["text"] == ("Ask for a refund in the app [1].\n\n*Sources:* [1] "
                              "<https://help.acme.example/refunds|Refunds &lt;fast&gt; / easy> · [2] Router lights")


@pytest.fixture
def telegram():
    fake = FakeTelegram("123:abc")
    with fake.serve():
        yield fake


async def test_telegram_sends_the_answer_with_its_sources_as_plain_urls(telegram):
    from adapters.telegram_channel import TelegramChannel

    bot = ExtBot("123:abc", base_url=f"{telegram.base_url}/bot", base_file_url=f"{telegram.base_url}/file/bot")
    channel = TelegramChannel(bot)
    target = Conversation(1, "telegram", "4242", "4242", "zh")
    async with bot:
        await channel.send(target, Outbound("关闭自动续费即可 [1]", sources=(
            {"n": 1, "title": "会员自动续费说明", "url": "https://help.acme.example/auto-renewal"},)))
    assert telegram.texts_to(4242) == [
        "关闭自动续费即可 [1]\n\n参考资料：\n[1] 会员自动续费说明 — https://help.acme.example/auto-renewal"]


async def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)


@needs_chromium
def test_the_widget_lists_an_answers_sources_and_keeps_them_in_its_history(tmp_path):
    import asyncio

    store = Store(tmp_path)
    asyncio.run(Importer(KnowledgeBase(store), _direct).add([HELP_CENTRE]))
    store.close()
    engine = StubEngine(reply="That is your membership's automatic renewal [1].")
    with live_server(tmp_path, engine=engine, users={"ana": "agent"}) as (base, app), chromium() as browser:
        page = browser.new_context(locale="en-US").new_page()
        page.goto(base + "/")
        page.click("[data-testid=launcher]")
        page.fill("[data-testid=input]", "Why was I charged 88?")
        page.keyboard.press("Enter")
        sources = page.wait_for_selector("[data-testid=message][data-role=bot] [data-testid=sources]", timeout=30_000)
        link = sources.query_selector("a")  # a file has no address: the link opens the article on this server
        assert "[1]" in link.inner_text() and "renewal" in link.inner_text().lower()
        article = page.context.new_page()
        article.goto(link.get_attribute("href"))
        assert "Turn off automatic renewal" in article.inner_text("[data-testid=article]")
        page.reload()
        page.click("[data-testid=launcher]")
        assert page.wait_for_selector("[data-testid=message][data-role=bot] [data-testid=sources]", timeout=10_000)

        # The agent sees which passages the turn was given and which its answer cited.
        store = app.state.runtime.store
        (conversation,) = store.select("select id from conversations")
        agent = sign_in(browser, base, "ana", PASSWORD, "/agent")
        agent.goto(f"{base}/agent#/conversations/{conversation['id']}")
        used = agent.wait_for_selector("[data-testid=turn-knowledge]", timeout=10_000)
        assert "cited" in used.inner_text()
        used.click()
        passages = agent.query_selector_all("[data-testid=turn-passage]")
        assert passages and "cited" in passages[0].inner_text()


def test_a_help_page_shows_its_article_as_text():
    from bot.web.help_pages import article_page

    page = article_page({"title": "<script>alert(1)</script>", "language": "en",
                         "chunks": [{"section": "<script>alert(1)</script> > <b>Steps</b>", "text": "<img src=x onerror=1>"}]})
    assert "<script>" not in page and "<img" not in page and "&lt;img src=x onerror=1&gt;" in page
