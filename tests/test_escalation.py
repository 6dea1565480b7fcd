"""Tests for bot.escalation: one decision per support situation, and the phrase matchers.

Generations are built directly with chosen log-probs; no model is loaded.
"""

from __future__ import annotations

import math

import pytest

from bot.escalation import DEFAULT_SENSITIVE_TOPICS, Decision, EscalationPolicy, Reason
from engine.base import (
    EngineCancelled,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    Generation,
    Timings,
)

RENEWAL_EN = (
    "You were charged 88 for the automatic renewal of your membership. "
    "To stop future renewals, open Account > Membership and turn off auto-renew."
)
RENEWAL_ZH = "这笔 88 元是会员自动续费。如需关闭，请进入「账户 > 会员」关闭自动续费。"


def gen(text: str = RENEWAL_EN, confidence: float | None = 0.9, tokens: int = 12,
        finish_reason: str = "stop") -> Generation:
    """A Generation whose geometric-mean token probability is `confidence` (None: no log-probs)."""
    logprobs = () if confidence is None else (math.log(confidence),) * tokens
    return Generation(
        text=text,
        finish_reason=finish_reason,
        token_logprobs=logprobs,
        token_ids=tuple(range(len(logprobs))),
        prompt_tokens=300,
        completion_tokens=len(logprobs),
        timings=Timings(queued_ms=1.0, first_token_ms=40.0, total_ms=400.0),
        image_tokens=256,
    )


@pytest.fixture(scope="module")
def policy() -> EscalationPolicy:
    return EscalationPolicy()


# --- answering --------------------------------------------------------------------------


@pytest.mark.parametrize("user_text, answer", [
    ("Why was I charged?", RENEWAL_EN),
    ("为什么扣我钱?", RENEWAL_ZH),
    ("Payment failed — CARD_DECLINED (E-4012), what does that mean?",
     "E-4012 means your bank declined the card. Try another card or contact your bank."),
    ("where is my parcel?", "Your parcel left the warehouse yesterday and should arrive on Friday."),
    ("My router light is solid red", "A solid red light usually means the line is down: check the cable, then restart."),
])
def test_confident_answer_is_sent(policy, user_text, answer):
    decision = policy.decide(user_text=user_text, generation=gen("  " + answer + "\n", 0.83))
    assert decision == Decision(False, None, "confidence 0.83", answer)


def test_answer_cut_by_length_is_still_an_answer(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(RENEWAL_EN, 0.9, finish_reason="length"))
    assert not decision.handover and decision.answer == RENEWAL_EN


def test_confidence_exactly_at_threshold_answers(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(confidence=0.55), threshold=0.55)
    assert not decision.handover


# --- 1. user_request --------------------------------------------------------------------


@pytest.mark.parametrize("user_text", [
    "我要转人工",
    "转人工",
    "人工",
    "人工客服！",
    "有人工吗？",
    "我想和真人聊",
    "找真人",
    "客服在吗",
    "帮我联系客服",
    "我要找人处理",
    "不要机器人",
    "Can I talk to a real person?",
    "I want to speak with someone",
    "Please connect me to an agent.",
    "put me through to customer service",
    "get me a human",
    "human",
    "HUMAN!!!",
    "Agent please",
    "representative",
    "operator?",
    "live agent",
    "Can I have a human please",
    "I don't want a bot",
    "why don't you get me a human",
    "Ｈｕｍａｎ　ｐｌｅａｓｅ",  # full-width letters and space
    "Can I talk to a real person？",  # full-width question mark
])
def test_user_asks_for_a_person(policy, user_text):
    assert policy.wants_human(user_text)
    decision = policy.decide(user_text=user_text, generation=gen(RENEWAL_EN, 0.97))
    assert decision.handover and decision.reason is Reason.USER_REQUEST
    assert decision.answer == RENEWAL_EN  # the confident draft is kept for the agent


@pytest.mark.parametrize("user_text", [
    "My agent ID is 1234, why was I charged?",
    "The human resources page crashed",
    "the agent app crashed after the update",
    "The operator console shows error E-4012",
    "How do I connect my router to the agent app?",
    "I don't want to talk to a human, just tell me why I was charged",
    "Are you a bot?",
    "Why was I charged?",
    "人工智能是什么意思？",
    "人工费怎么算？",
    "为什么登录要真人认证？",
    "为什么扣我钱?",
    "I need someone to explain this charge",
])
def test_not_a_request_for_a_person(policy, user_text):
    assert not policy.wants_human(user_text)
    decision = policy.decide(user_text=user_text, generation=gen(RENEWAL_EN, 0.9))
    assert decision.reason is not Reason.USER_REQUEST


def test_user_request_wins_over_everything(policy):
    decision = policy.decide(
        user_text="I want a refund, let me talk to a human", generation=None, error=EngineTimeout("x"),
        unreadable_images=2, previous_turn_low_confidence=True,
    )
    assert decision == Decision(True, Reason.USER_REQUEST, "user asked for a human", "")


# --- 2. sensitive_topic -----------------------------------------------------------------


@pytest.mark.parametrize("user_text, topic", [
    ("I want a refund for this charge", "refund"),
    ("You refunded me only half", "refund"),
    ("Give me my money back", "money back"),
    ("我要退款", "退款"),
    ("我要 退 款", "退款"),
    ("I'll take you to court", "to court"),
    ("I will sue you", "sue you"),
    ("My lawyer will contact you", "lawyer"),
    ("I'm filing a chargeback with my bank", "chargeback"),
    ("Please delete my account", "delete my account"),
    ("GDPR erasure request", "gdpr"),
    ("Someone used my card, this is fraud", "fraud"),
    ("我要起诉你们", "起诉"),
    ("信用卡被盗刷了", "盗刷"),
    ("帮我注销账号", "注销账号"),
    ("我要投诉到消协", "投诉到消协"),
])
def test_sensitive_topic_hands_over(policy, user_text, topic):
    assert policy.sensitive_topic(user_text) == topic
    decision = policy.decide(user_text=user_text, generation=gen(RENEWAL_EN, 0.95))
    assert decision.handover and decision.reason is Reason.SENSITIVE_TOPIC
    assert topic in decision.detail
    assert decision.answer == RENEWAL_EN


@pytest.mark.parametrize("user_text", [
    "Is this charge refundable?",  # a policy question the template answers; only "refund(s/ed/ing)" match
    "Why was I charged?",
    "My name is Sue and I can't log in",
    "Thanks for the courtesy",
    "The food court page in the mall app is blank",  # "court" only as the place of a case
    "Payment failed — CARD_DECLINED (E-4012)",
    "为什么扣我钱?",
])
def test_not_a_sensitive_topic(policy, user_text):
    assert policy.sensitive_topic(user_text) is None
    assert not policy.decide(user_text=user_text, generation=gen(confidence=0.9)).handover


def test_custom_topics_replace_the_default():
    custom = EscalationPolicy(sensitive_topics=["invoice", "发票", "refund*"])
    assert custom.sensitive_topic("I want a refund") == "refund*"
    assert custom.sensitive_topic("Is this charge refundable?") == "refund*"  # "*" = prefix match
    assert custom.sensitive_topic("Send me the invoices") == "invoice"
    assert custom.sensitive_topic("我要开发票") == "发票"
    assert custom.sensitive_topic("I'll take you to court") is None  # the default list is gone
    assert custom.sensitive_topic("我要退款") is None
    decision = custom.decide(user_text="I'll take you to court", generation=gen(confidence=0.9))
    assert not decision.handover
    assert EscalationPolicy(sensitive_topics=()).sensitive_topic("I want a refund") is None


def test_default_topics_cover_both_languages():
    assert {"refund", "chargeback", "lawyer", "to court", "fraud", "gdpr"} <= set(DEFAULT_SENSITIVE_TOPICS)
    assert {"退款", "拒付", "律师", "起诉", "法院", "注销账号", "盗刷"} <= set(DEFAULT_SENSITIVE_TOPICS)


# --- 3. engine_error --------------------------------------------------------------------


@pytest.mark.parametrize("error, detail", [
    (EngineTimeout("generation took longer than 120 s"), "EngineTimeout (timeout)"),
    (EngineClosed("closed"), "EngineClosed (closed)"),
    (EngineCancelled("cancelled"), "EngineCancelled (cancelled)"),
    (EngineError("boom"), "EngineError (engine_error)"),
    (RuntimeError("card 4111 1111 1111 1111 in the prompt"), "RuntimeError"),
])
def test_engine_error_hands_over_without_the_message(policy, error, detail):
    decision = policy.decide(user_text="Why was I charged?", generation=None, error=error)
    assert decision == Decision(True, Reason.ENGINE_ERROR, detail, "")
    assert "4111" not in decision.detail


def test_an_engine_that_stayed_busy_is_its_own_reason(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=None, error=EngineOverloaded("queue full"))
    assert decision == Decision(True, Reason.BUSY, "EngineOverloaded (overloaded)", "")


def test_no_generation_is_an_engine_error(policy):
    decision = policy.decide(user_text="为什么扣我钱?", generation=None)
    assert decision.handover and decision.reason is Reason.ENGINE_ERROR and decision.answer == ""


def test_error_with_partial_generation_keeps_the_draft(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen("You were charged", 0.9),
                             error=EngineTimeout("late"))
    assert decision.reason is Reason.ENGINE_ERROR and decision.answer == "You were charged"


def test_cancelled_generation_is_an_engine_error(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen("You were", 0.9, finish_reason="cancelled"))
    assert decision.reason is Reason.ENGINE_ERROR and decision.answer == "You were"


# --- 4. unreadable_image ----------------------------------------------------------------


@pytest.mark.parametrize("generation", [None, gen("I can't see the image.", 0.4)])
@pytest.mark.parametrize("count", [1, 3])
def test_only_unreadable_images_hand_over(policy, generation, count):
    decision = policy.decide(user_text="", generation=generation, unreadable_images=count, answerable_text=False)
    assert decision.handover and decision.reason is Reason.UNREADABLE_IMAGE
    assert str(count) in decision.detail


def test_refused_image_with_a_question_is_answered(policy):
    decision = policy.decide(user_text="why was I charged?", generation=gen(RENEWAL_EN, 0.8),
                             unreadable_images=1, answerable_text=True)
    assert not decision.handover and decision.answer == RENEWAL_EN


def test_engine_failure_wins_over_unreadable_image(policy):
    decision = policy.decide(user_text="", generation=None, error=EngineTimeout(),
                             unreadable_images=1, answerable_text=False)
    assert decision.reason is Reason.ENGINE_ERROR


# --- 5. model_declined ------------------------------------------------------------------


CARD_DECLINE = "[[HANDOVER]] screenshot shows a full card number"


@pytest.mark.parametrize("text, draft", [
    (CARD_DECLINE, ""),
    ("I can see your statement.\n" + CARD_DECLINE, "I can see your statement."),
    ("I can see your statement. " + CARD_DECLINE + "\nAn agent will help you.",
     "I can see your statement.\nAn agent will help you."),
    ("［［handover］］ not a support question", ""),  # full-width brackets, lower case
])
def test_model_declined(policy, text, draft):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(text, 0.95))
    assert decision.handover and decision.reason is Reason.MODEL_DECLINED
    assert decision.answer == draft
    assert "HANDOVER" not in decision.answer.upper()


def test_model_declined_detail_gives_the_reason_without_card_numbers(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(CARD_DECLINE, 0.95))
    assert "full card number" in decision.detail
    leaked = policy.decide(user_text="Why was I charged?",
                           generation=gen("[[HANDOVER]] card 4111 1111 1111 1111 visible", 0.95))
    assert "4111" not in leaked.detail and "•••• 1111" in leaked.detail  # the last four digits stay
    order = policy.decide(user_text="Why was I charged?",
                          generation=gen("[[HANDOVER]] order 123456789012345 not found", 0.95))
    assert "123456789012345" in order.detail  # not a card number (Luhn): kept


def test_custom_decline_marker(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen("<<AGENT>> off topic", 0.95),
                             decline_marker="<<AGENT>>")
    assert decision.reason is Reason.MODEL_DECLINED
    assert not policy.decide(user_text="Why was I charged?", generation=gen("<<AGENT>> off topic", 0.95)).handover


def test_marker_removed_from_draft_for_every_handover(policy):
    decision = policy.decide(user_text="转人工", generation=gen("Draft line\n" + CARD_DECLINE, 0.95))
    assert decision.reason is Reason.USER_REQUEST and decision.answer == "Draft line"


# --- 6. repeated_failure ----------------------------------------------------------------


@pytest.mark.parametrize("user_text", [
    "that didn't help",
    "That didnt help at all.",
    "not helpful",
    "It's still not working",
    "that's wrong",
    "I already tried that",
    "That's not what I asked",
    "没用",
    "一点用都没有",
    "没有帮助",
    "还是不行",
    "不对",
    "你说的不对",
    "答非所问",
])
def test_user_says_it_did_not_help(policy, user_text):
    assert policy.said_not_helpful(user_text)
    decision = policy.decide(user_text=user_text, generation=gen(RENEWAL_EN, 0.95), earlier_answer=True)
    assert decision.handover and decision.reason is Reason.REPEATED_FAILURE
    assert decision.detail == "user said the answer did not help"
    first = policy.decide(user_text=user_text, generation=gen(RENEWAL_EN, 0.95))
    assert not first.handover  # no answer yet in this episode: a first message like any other


def test_still_not_working_is_repeated_failure_only_after_an_answer(policy):
    text = "I restarted the router but it is still not working"
    assert policy.said_not_helpful(text)
    first = policy.decide(user_text=text, generation=gen(confidence=0.9), earlier_answer=False)
    assert first.reason is not Reason.REPEATED_FAILURE and not first.handover
    unsure = policy.decide(user_text=text, generation=gen(confidence=0.3), earlier_answer=False)
    assert unsure.reason is Reason.LOW_CONFIDENCE  # goes on to the normal confidence checks
    again = policy.decide(user_text=text, generation=gen(confidence=0.9), earlier_answer=True)
    assert again.reason is Reason.REPEATED_FAILURE


@pytest.mark.parametrize("user_text", [
    "Why was I charged?",
    "My payment didn't work, error E-4012",
    "I still haven't received my parcel",
    "Something went wrong on the checkout page",
    "金额不对吧，我没有开通会员",
    "我没用过这个服务，为什么扣钱",
    "我没用信用卡付款",
    "能还是不能关闭自动续费？",
])
def test_first_complaints_are_not_repeated_failure(policy, user_text):
    assert not policy.said_not_helpful(user_text)


def test_low_confidence_twice_in_a_row(policy):
    first = policy.decide(user_text="My router light is solid red", generation=gen("Maybe restart?", 0.3))
    assert first.reason is Reason.LOW_CONFIDENCE
    second = policy.decide(user_text="It's red and blinking now", generation=gen("Perhaps the cable?", 0.35),
                           previous_turn_low_confidence=True, earlier_answer=True)
    assert second.reason is Reason.REPEATED_FAILURE
    assert "0.35" in second.detail and "0.55" in second.detail
    no_answer_yet = policy.decide(user_text="It's red and blinking now", generation=gen("Perhaps the cable?", 0.35),
                                  previous_turn_low_confidence=True)
    assert no_answer_yet.reason is Reason.LOW_CONFIDENCE


def test_confident_after_a_low_turn_answers(policy):
    decision = policy.decide(user_text="It's solid red", generation=gen(RENEWAL_EN, 0.9),
                             previous_turn_low_confidence=True)
    assert not decision.handover


# --- 7. low_confidence ------------------------------------------------------------------


def test_low_confidence_detail_has_both_numbers(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen("Maybe a renewal?", 0.3))
    assert decision == Decision(True, Reason.LOW_CONFIDENCE, "confidence 0.30 < 0.55", "Maybe a renewal?")


@pytest.mark.parametrize("confidence, threshold, handover", [
    (0.54, 0.55, True), (0.56, 0.55, False), (0.7, 0.8, True), (0.2, 0.1, False), (0.99, 1.0, True),
])
def test_template_threshold(policy, confidence, threshold, handover):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(confidence=confidence), threshold=threshold)
    assert decision.handover is handover
    if handover:
        assert decision.reason is Reason.LOW_CONFIDENCE


def test_close_numbers_are_told_apart(policy):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(confidence=0.549))
    assert decision.detail == "confidence 0.549 < 0.55"


def test_unknown_confidence(policy):
    no_logprobs = gen(RENEWAL_EN, None)
    decision = policy.decide(user_text="Why was I charged?", generation=no_logprobs)
    assert decision.handover and decision.reason is Reason.LOW_CONFIDENCE and "unknown" in decision.detail
    answered = policy.decide(user_text="Why was I charged?", generation=no_logprobs,
                             unknown_confidence_hands_over=False)
    assert answered == Decision(False, None, "confidence unknown", RENEWAL_EN)


def test_nan_confidence_counts_as_unknown(policy):
    broken = Generation(RENEWAL_EN, "stop", (float("nan"),), (1,), 10, 1, Timings(0, 0, 0))
    assert policy.decide(user_text="Why was I charged?", generation=broken).reason is Reason.LOW_CONFIDENCE


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_answer_is_low_confidence(policy, text):
    decision = policy.decide(user_text="Why was I charged?", generation=gen(text, 0.99),
                             unknown_confidence_hands_over=False)
    assert decision.handover and decision.reason is Reason.LOW_CONFIDENCE and decision.detail == "empty answer"


# --- shape of the result ----------------------------------------------------------------


def test_decision_is_frozen_and_reason_is_a_string(policy):
    decision = policy.decide(user_text="转人工", generation=gen())
    with pytest.raises(Exception):
        decision.handover = False  # type: ignore[misc]
    assert decision.reason == "user_request" and Reason("low_confidence") is Reason.LOW_CONFIDENCE
    assert {r.value for r in Reason} == {
        "user_request", "low_confidence", "model_declined", "sensitive_topic",
        "repeated_failure", "unreadable_image", "no_knowledge", "engine_error", "busy",
    }


@pytest.mark.parametrize("method", ["wants_human", "sensitive_topic", "said_not_helpful"])
def test_matchers_accept_empty_text(policy, method):
    assert not getattr(policy, method)("")


# --- near-misses, checks before the model, template topics, the benchmark ---------------


@pytest.mark.parametrize("user_text", [
    "How do I transfer money to someone else?",
    "Can I forward the invoice to someone in accounting?",
    "I need an agent to sign in",
    "我想找人代付",
    "客服电话是多少?",  # asking for the support phone number is an information question
    "人工智能是怎么回答问题的?",
    "我不需要人工，告诉我怎么改密码就行",
])
def test_words_for_people_in_other_senses_are_not_requests(policy, user_text):
    assert not policy.wants_human(user_text)
    assert policy.before_model(user_text) is None


@pytest.mark.parametrize("user_text", [
    "I need an agent to look at this",
    "Can you transfer this chat to the billing team?",
    "Can someone from support call me back?",
    "talk to a humna",
    "转认工",
    "麻烦给我转个人工，这个扣费我看不懂",
    "能让工作人员给我打个电话吗",
])
def test_requests_in_other_words(policy, user_text):
    assert policy.wants_human(user_text)


def test_before_model_runs_the_checks_that_need_no_model(policy):
    assert policy.before_model("转人工") == Decision(True, Reason.USER_REQUEST, "user asked for a human", "")
    topic = policy.before_model("I want a refund")
    assert topic == Decision(True, Reason.SENSITIVE_TOPIC, "matched 'refund'", "")
    unreadable = policy.before_model("", unreadable_images=2, answerable_text=False)
    assert unreadable is not None and unreadable.reason is Reason.UNREADABLE_IMAGE and unreadable.answer == ""
    assert "2 images" in unreadable.detail
    # the same order as decide: a request for a person wins over a refused image
    both = policy.before_model("agent please", unreadable_images=1, answerable_text=False)
    assert both.reason is Reason.USER_REQUEST
    assert policy.before_model("Why was I charged?") is None
    assert policy.before_model("", unreadable_images=1, answerable_text=True) is None
    assert policy.before_model("that didn't help") is None  # needs the episode: decide's business
    # decide gives the same reasons and details for these
    for text, kwargs in (("转人工", {}), ("I want a refund", {}), ("", {"unreadable_images": 2, "answerable_text": False})):
        early = policy.before_model(text, **kwargs)
        late = policy.decide(user_text=text, generation=None, **kwargs)
        assert (late.reason, late.detail) == (early.reason, early.detail)


def _template_with(escalation: dict):
    import yaml

    from bot.templates import DEFAULT_DIRECTORY, Template

    data = yaml.safe_load((DEFAULT_DIRECTORY / "billing.yaml").read_text(encoding="utf-8"))
    data["escalation"] = {**data.get("escalation", {}), **escalation}
    return Template.from_dict(data)


def test_template_sensitive_topics_replace_the_defaults():
    from bot.templates import TemplateError

    default = _template_with({})
    assert tuple(default.escalation.sensitive_topics) == DEFAULT_SENSITIVE_TOPICS
    assert default.stream is False and "sensitive_topics" not in default.to_dict()["escalation"]

    template = _template_with({"sensitive_topics": ["invoice", "发票"]})
    policy = EscalationPolicy(template.escalation.sensitive_topics)
    assert policy.sensitive_topic("Send me the invoices") == "invoice"
    assert policy.sensitive_topic("我要开发票") == "发票"
    assert policy.sensitive_topic("I want a refund") is None  # the defaults are gone
    assert policy.before_model("Send me the invoice").reason is Reason.SENSITIVE_TOPIC
    assert template.to_dict()["escalation"]["sensitive_topics"] == ["invoice", "发票"]

    with pytest.raises(TemplateError) as bad:
        _template_with({"sensitive_topics": ["invoice", "  ", "x" * 200]})
    fields = [issue.field for issue in bad.value.errors]
    assert fields == ["escalation.sensitive_topics[1]", "escalation.sensitive_topics[2]"]
    with pytest.raises(TemplateError, match="escalation.sensitive_topics"):
        _template_with({"sensitive_topics": "refund"})


def test_benchmark_data_meets_the_targets():
    from bench.escalation_bench import load_cases, measure

    cases = load_cases()
    assert len(cases) >= 400
    langs = [c.lang for c in cases]
    assert 0.4 <= langs.count("zh") / len(cases) <= 0.6
    figures = measure(EscalationPolicy())
    for check in ("request", "sensitive"):
        assert figures[f"escalation_{check}_precision"] >= 0.95, check
        assert figures[f"escalation_{check}_recall"] >= 0.90, check
