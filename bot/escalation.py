"""Answer the user, or hand the thread to a human agent: the one place that decides.

Every channel (Slack, Telegram, the web widget) and every turn goes through
`EscalationPolicy.decide`, so the same message gets the same outcome wherever it was
written, and every hand-over carries one named `Reason` and a short `detail` that agents
and operators can read and count. The policy is plain, deterministic text matching plus
the engine's confidence: no model call, no I/O, cheap enough to run on every turn.

Precedence (the first rule that applies wins):

1. ``user_request``     the user asks for a person;
2. ``sensitive_topic``  refunds, chargebacks, legal threats, account deletion, fraud ...;
3. ``busy``             the engine's queue stayed full for the whole busy wait;
   ``engine_error``     the engine raised, or returned nothing / a cancelled generation;
4. ``unreadable_image`` the turn had only refused images and no text to answer.  When the
                        engine was not called for such a turn (generation None, no error)
                        this reason wins over "no generation": nothing failed, there was
                        simply nothing readable to answer;
5. ``model_declined``   the model wrote the template's decline marker;
6. ``repeated_failure`` the user says the last answer did not help, or the confidence is
                        low for the second turn in a row;
7. ``low_confidence``   confidence below the template threshold, unknown, or an empty answer;
8. otherwise answer.

Matching choices (all case-insensitive, on NFKC-normalised text so full-width letters,
digits and punctuation behave like their ASCII forms):

* Asking for a person is recognised from *phrases*, never from a lone keyword inside a
  sentence: "talk/speak/chat to a human|person|agent|someone", "connect/transfer me to an
  agent", "get me a human", "I need a representative", "agent please", "real person",
  "live agent", or a message that is nothing but "human" / "agent" / "representative" /
  "operator" (with "please", "hi" ... allowed around it).  So "My agent ID is 1234",
  "the agent app crashed" and "The human resources page crashed" are not requests.  A
  direct negation in front ("I don't need a human") cancels the match.  Chinese:
  转人工, 人工客服/服务/坐席, 要/找/接/转/联系人工 (never 人工智能), 真人客服, 找/要/跟真人,
  找/转/联系客服, 客服在吗, 找人, 跟人聊, 不要机器人, or a message that is just 人工 / 真人 / 客服
  (never 人工智能, 人工费, 真人认证 / 真人验证).
* Sensitive topics are a plain list of terms (replaceable per deployment).  An English term
  matches as whole words plus a regular inflection of its last word (-s, -es, -d, -ed,
  -ing; "sue" -> "suing"), so "refund", "refunds" and "refunded" match while "refundable"
  does not: "Is this charge refundable?" is a policy question the template can answer,
  whereas "I want a refund" is a request for money that an agent handles.  A term ending
  in "*" matches as a prefix ("refund*" also catches "refundable") for deployments that
  want the stricter behaviour.  Terms with Chinese characters match as substrings
  (whitespace in the message ignored).  The returned topic is the list entry, first entry
  in list order wins.  "sue" is listed only in phrases ("sue you", "I'll sue", "suing")
  because Sue is also a name.
* "It did not help" is recognised from phrases that only make sense after an answer
  ("that didn't help", "not helpful", "still not working", "that's wrong", "I already
  tried that", 没用, 没有帮助, 还是不行, 说的不对, 答非所问 ...); complaints that are also
  typical first messages ("my payment didn't work", 金额不对, 我没用过) do not count.

Details never quote an exception's message (it may contain user data) and mask long digit
runs, so a card number the model saw in a screenshot does not reach the escalation list.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from engine.base import EngineError, EngineOverloaded, Generation


class Reason(str, enum.Enum):
    USER_REQUEST = "user_request"
    LOW_CONFIDENCE = "low_confidence"
    MODEL_DECLINED = "model_declined"
    SENSITIVE_TOPIC = "sensitive_topic"
    REPEATED_FAILURE = "repeated_failure"
    UNREADABLE_IMAGE = "unreadable_image"
    ENGINE_ERROR = "engine_error"
    BUSY = "busy"


@dataclass(frozen=True)
class Decision:
    """The outcome of one turn.

    `answer` is what to send when answering; on a hand-over it is the bot's draft for the
    agent (decline marker and the rest of its line removed; "" when there is no draft).
    """

    handover: bool
    reason: Reason | None
    detail: str
    answer: str


DEFAULT_SENSITIVE_TOPICS: tuple[str, ...] = (
    # money back
    "refund", "money back", "reimbursement", "reimburse", "compensation",
    "chargeback", "charge back", "dispute",
    # legal
    "lawyer", "attorney", "solicitor", "lawsuit", "law suit", "legal action", "court",
    "small claims", "sue you", "sue your", "sue the company", "i will sue", "i'll sue",
    "going to sue", "gonna sue", "suing",
    # account deletion / personal data
    "delete my account", "close my account", "account deletion", "delete my data",
    "erase my data", "right to be forgotten", "gdpr",
    # fraud and security incidents
    "fraud", "fraudulent", "scam", "scammed", "identity theft", "stolen card",
    "unauthorized charge", "unauthorised charge", "unauthorized transaction",
    "unauthorised transaction", "data breach", "breach", "hacked", "data leak",
    # Chinese
    "退款", "退钱", "退费", "拒付", "退单", "赔偿",
    "律师", "起诉", "法院", "诉讼", "告你们", "投诉到消协", "消协", "12315",
    "注销账号", "注销帐号", "注销账户", "删除账号", "删除帐号", "删除账户", "删除我的数据",
    "盗刷", "被盗", "诈骗", "欺诈", "骗子", "数据泄露", "信息泄露", "隐私泄露",
)


# --- normalisation ----------------------------------------------------------------------

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _normalize(text: str) -> str:
    """NFKC, case-folded, typographic apostrophes made plain, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").casefold().translate(_APOSTROPHES)
    return re.sub(r"\s+", " ", text).strip()


def _compact(normalized: str) -> str:
    """The normalised text without whitespace, for Chinese phrase matching."""
    return re.sub(r"\s+", "", normalized)


def _words_only(normalized: str) -> str:
    """Punctuation and symbols turned into spaces: for "is the message just X?" checks."""
    chars = [" " if unicodedata.category(c)[0] in "PSZC" and c != "'" else c for c in normalized]
    return re.sub(r"\s+", " ", "".join(chars)).strip()


# --- asking for a person -------------------------------------------------------------------

# Nouns that name a person on the support side, as the object of "talk to ..." etc.
# A blacklist of following words keeps "the agent app", "agent ID", "operator console" out.
_NOT_A_PERSON_AFTER = (
    r"(?!\s*(?:app|apps|application|id|ids|number|no|code|key|software|portal|version|login|"
    r"account|dashboard|tool|program|plugin|extension|license|licence|console|panel|page|"
    r"settings|mode|status|list|name|role|resources)\b)"
)
_PERSON = (
    r"(?:(?:a|an|the|some|your|one of your|any|with)\s+)?(?:(?:real|live|actual|human|other)\s+)?"
    r"(?:human|humans|person|people|agent|agents|representative|representatives|rep|operator|"
    r"someone|somebody|anyone|anybody|staff|employee|customer service|customer support|"
    r"support team|support staff|service desk|help desk|manager|supervisor)\b"
) + _NOT_A_PERSON_AFTER
_DIRECT_PERSON = (  # object of "get / need / want ...": a bare "the agent" is not enough
    r"(?:me\s+)?(?:(?:a|an|some|your|one of your)\s+)?(?:(?:real|live|actual)\s+)?"
    r"(?:human|humans|person|representative|agent|operator|"
    r"customer service|customer support|support team)\b"
) + _NOT_A_PERSON_AFTER

_HUMAN_PATTERNS_EN = [
    # talk / speak / chat / connect / transfer ... (me (through)) to|with <person>
    re.compile(
        r"\b(?:talk|talking|speak|speaking|chat|chatting|connect|connected|transfer|transferred|"
        r"put|escalate|escalated|pass|switch|hand|forward|route)\b(?:\s+\S+){0,3}?\s+"
        r"(?:to|with)\s+" + _PERSON
    ),
    # get / give / need / want / reach / contact / request <person>
    re.compile(
        r"\b(?:(?:get|give|need|want|wanna|reach|contact|call|request)\s+(?:to\s+)?|"
        r"(?:can|could|may) (?:i|we) (?:please )?have\s+)" + _DIRECT_PERSON
    ),
    # "<person> please"
    re.compile(
        r"\b(?:human|person|agent|representative|rep|operator|customer service|customer support|"
        r"someone)\s*,?\s*(?:please|pls|plz)\b"
    ),
    # strong phrases on their own
    re.compile(
        r"\b(?:real|live|actual)\s+(?:person|human|agent|people)\b|"
        r"\bhuman\s+(?:agent|support|operator|representative|help|being to talk)\b|"
        r"\bcustomer (?:service|support) (?:rep|representative|agent)\b|"
        r"\bis (?:there|anyone) (?:a |any )?(?:human|person|real person) (?:here|there|around)\b"
    ),
    # "I don't want to talk to a bot"
    re.compile(
        r"\b(?:don'?t|do not|dont) want (?:to (?:talk|speak|chat) (?:to|with) )?(?:a |the |this |your )?"
        r"(?:bot|robot|chatbot|machine)\b"
    ),
]
# "I don't want to talk to a human", "no need to speak to an agent": only these few words
# may stand between the negation and the request ("why don't you get me a human" is a request).
_NEGATED_BEFORE = re.compile(
    r"(?:\bdon'?t|\bdo not|\bdont|\bnever|\bno need to|\bwithout|\brather not)"
    r"(?:\s+(?:really|even|want|wanna|need|to|talk|speak|chat|with|a|an|the|any|some))*\s*$"
)
_BARE_PERSON_WORDS = {
    "human", "humans", "agent", "agents", "person", "representative", "rep", "operator",
    "real", "live", "customer", "service", "support", "staff",
}
_BARE_STRONG = {"human", "humans", "agent", "agents", "person", "representative", "rep", "operator", "staff"}
_BARE_FILLER = {
    "please", "pls", "plz", "a", "an", "the", "now", "hi", "hello", "hey", "ok", "okay",
    "just", "asap", "thanks", "thank", "you", "me", "i", "want", "need", "get",
}

_HUMAN_PATTERNS_ZH = [
    re.compile(r"转人工|人工(?:客服|服务|坐席|座席|台|处理|介入|回复|帮忙|来)"),
    re.compile(r"(?:要|找|接|转|转接|联系|叫|换|呼叫|请求|申请|需要|有没有|有)人工(?!智能|费|成本)"),
    re.compile(r"人工(?:呢|吗|在吗|在不在)"),
    re.compile(  # never 真人认证 / 真人验证 (identity checks on login screens)
        r"真人客服|(?:找|要|转|接|换|和|跟|与|让|请)真人(?!认证|验证|照片|头像|核验|识别|实名)|"
        r"真人(?:来|回复|处理|服务|回答)|是真人吗"
    ),
    re.compile(r"(?:找|要|转|转接|接|联系|呼叫|叫|换)(?:一下)?客服|客服(?:在吗|在不在|呢)"),
    re.compile(r"找(?:个|一个)?(?:活)?人(?![民口数家])"),
    re.compile(r"(?:和|跟|与)(?:人|真人|人工|客服)(?:说|谈|聊|沟通|对话)"),
    re.compile(r"(?:不要|不想|别|不用)(?:再)?(?:跟|和|与)?机器人"),
]
_BARE_ZH = re.compile(r"^(?:请|你好|您好|我要|我想要|帮我|麻烦)*(?:转?人工|真人|客服|人工客服)(?:谢谢|吧|啊|呀)*$")


# --- "that did not help" ------------------------------------------------------------------

_NOT_HELPFUL_EN = [
    re.compile(
        r"\b(?:did ?n'?t|did not|does ?n'?t|does not|do ?n'?t|do not|wo ?n'?t|will not|is ?n'?t|"
        r"is not|was ?n'?t|was not|not|never)\s+(?:really\s+|at all\s+)?help(?:ed|ful|ing)?\b"
    ),
    re.compile(r"\bunhelpful\b|\b(?:of|was|is|be) no help\b|\bno help at all\b"),
    re.compile(
        r"\b(?:that'?s|that is|this is|you'?re|you are|so|totally|completely)\s+useless\b|"
        r"\buseless (?:answer|reply|response|bot)\b"
    ),
    re.compile(
        r"\b(?:that|this|those|these|your (?:answer|suggestion|advice|solution|steps?|fix|reply|"
        r"instructions?))\s+(?:did ?n'?t|did not|does ?n'?t|does not|do ?n'?t|do not)\s+"
        r"(?:help|work|fix|solve|resolve|answer)\b"
    ),
    re.compile(
        r"\bstill\s+(?:(?:not|does ?n'?t|does not|is ?n'?t|is not|wo ?n'?t|will not|can'?t|cannot|"
        r"can not|did ?n'?t|did not)\s+(?:work|working|worked|fixed|solved|resolved|load|loading|open|"
        r"opening|connect|connecting|help|helping|log|logging|sign|signing|right|correct)|"
        r"broken|failing|fails|the same|stuck|wrong|no luck)\b"
    ),
    re.compile(
        r"\b(?:already tried|tried that|tried this|tried it already|did that already|"
        r"done that already|already did that|already done that|i(?:'ve| have) done that)\b"
    ),
    re.compile(
        r"\b(?:that'?s|that is|you'?re|you are|your answer is|this answer is|the answer is)\s+"
        r"(?:wrong|incorrect|not right|not correct|not true|not it)\b|\bwrong answer\b"
    ),
    re.compile(
        r"\bnot what i (?:asked|meant|need|wanted)\b|\bnot my question\b|"
        r"\b(?:you )?(?:did ?n'?t|did not|does ?n'?t|does not|do ?n'?t|do not)\s+answer(?:ed)? my question\b|"
        r"\bnot answering my question\b|\byou misunderstood\b|\bthat'?s not it\b"
    ),
]
_NOT_HELPFUL_ZH = [
    # 没用 = "useless" only at the end of a clause: 我没用信用卡 means "I did not use a card"
    re.compile(r"没(?:有)?用(?=$|[啊呀的了吧嘛呢哦啦,.!?;:，。！？；：…~])|一点用(?:都|也)没(?:有)?"),
    re.compile(r"没(?:有)?(?:什么)?(?:帮助|帮到|帮上)"),
    re.compile(r"不管用|不起作用|没(?:有)?(?:效果|起作用)|不好使"),
    re.compile(
        r"(?<!能)(?<!可以)(?<!行)(?:还是|仍然|依然|依旧|仍)(?:是)?(?:不行|不可以|不能|没用|没有用|一样|老样子|没解决|没有解决|"
        r"未解决|不好使|不管用|失败|报错|打不开|登不上|登录不了|不对)"
    ),
    re.compile(r"(?:你|说|回答|答案|讲|说得|讲得)的?(?:不对|错了|不正确)|^不对"),
    re.compile(r"答非所问|不是我问的|不是我要的|文不对题|没(?:有)?解决我的问题"),
    re.compile(r"(?:已经|都|早就)?试过了|已经试过"),
]
_BARE_NOT_HELPFUL_ZH = re.compile(r"^(?:不对|没用|错了|不行|没帮助|无效)(?:啊|呀|吧|的)*$")


# --- the decline marker ------------------------------------------------------------------


def _marker_pattern(marker: str) -> re.Pattern[str] | None:
    """The marker, case-insensitive, also in full-width ASCII ("［［HANDOVER］］")."""
    if not marker or not marker.strip():
        return None
    parts = []
    for c in marker:
        if "!" <= c <= "~":
            parts.append("[" + re.escape(c) + re.escape(chr(ord(c) + 0xFEE0)) + "]")
        else:
            parts.append(re.escape(c))
    return re.compile("".join(parts), re.IGNORECASE)


def _split_marker(text: str, marker: str) -> tuple[str, str | None]:
    """(draft, reason): text with every marker and the rest of its line removed.

    reason is the rest of the first marker line (None when there is no marker).
    """
    pattern = _marker_pattern(marker)
    if pattern is None:
        return text.strip(), None
    reason: str | None = None
    kept: list[str] = []
    for line in text.splitlines():
        match = pattern.search(line)
        if match is None:
            kept.append(line)
            continue
        if reason is None:
            reason = line[match.end():].strip(" \t:：-—–>|")
        before = line[: match.start()].rstrip()
        if before:
            kept.append(before)
    return "\n".join(kept).strip(), reason


_LONG_NUMBER = re.compile(r"\d(?:[ \-.]?\d){11,}")


def _short(text: str, limit: int = 120) -> str:
    """One line, long digit runs (card numbers) masked, cut to `limit` characters."""
    text = _LONG_NUMBER.sub("[number removed]", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _fmt(value: float, other: float | None = None) -> str:
    """Two decimals, more when needed to tell `value` from `other`."""
    for digits in (2, 3, 4):
        shown = f"{value:.{digits}f}"
        if other is None or shown != f"{other:.{digits}f}" or value == other:
            return shown
    return f"{value:.6g}"


def _error_name(error: BaseException) -> str:
    """Class name and engine code; never the message, which may quote user data."""
    name = type(error).__name__
    code = getattr(error, "code", None) if isinstance(error, EngineError) else None
    return f"{name} ({code})" if isinstance(code, str) and code else name


# --- the policy --------------------------------------------------------------------------


class EscalationPolicy:
    """Decides, for one turn, whether the bot answers or a human agent takes over."""

    def __init__(self, sensitive_topics: Sequence[str] = DEFAULT_SENSITIVE_TOPICS) -> None:
        if isinstance(sensitive_topics, str):
            sensitive_topics = (sensitive_topics,)
        self.sensitive_topics: tuple[str, ...] = tuple(
            t for t in sensitive_topics if isinstance(t, str) and t.strip()
        )
        self._topic_matchers = [(topic, _topic_matcher(topic)) for topic in self.sensitive_topics]

    # -- text checks ------------------------------------------------------------------

    def wants_human(self, text: str) -> bool:
        """True when the user asks to talk to a person (see the module docstring)."""
        normalized = _normalize(text)
        if not normalized:
            return False
        for pattern in _HUMAN_PATTERNS_EN:
            for match in pattern.finditer(normalized):
                if not _NEGATED_BEFORE.search(normalized[max(0, match.start() - 30): match.start()]):
                    return True
        compact = _compact(normalized)
        if any(p.search(compact) for p in _HUMAN_PATTERNS_ZH):
            return True
        bare = _words_only(normalized)
        if _BARE_ZH.match(bare.replace(" ", "")):
            return True
        person = [w for w in bare.split() if w not in _BARE_FILLER]
        if not person or not all(w in _BARE_PERSON_WORDS for w in person):
            return False
        return any(w in _BARE_STRONG for w in person) or (
            "customer" in person and ("service" in person or "support" in person)
        )

    def sensitive_topic(self, text: str) -> str | None:
        """The first configured topic the text mentions, or None."""
        normalized = _normalize(text)
        if not normalized:
            return None
        compact = _compact(normalized)
        for topic, matcher in self._topic_matchers:
            if matcher(normalized, compact):
                return topic
        return None

    def said_not_helpful(self, text: str) -> bool:
        """True when the user says the bot's previous answer did not help or was wrong."""
        normalized = _normalize(text)
        if not normalized:
            return False
        if any(p.search(normalized) for p in _NOT_HELPFUL_EN):
            return True
        compact = _compact(normalized)
        if any(p.search(compact) for p in _NOT_HELPFUL_ZH):
            return True
        bare = _words_only(normalized).replace(" ", "")
        return bool(_BARE_NOT_HELPFUL_ZH.match(bare))

    # -- the decision -----------------------------------------------------------------

    def decide(
        self,
        *,
        user_text: str,
        generation: Generation | None,
        error: BaseException | None = None,
        unreadable_images: int = 0,
        answerable_text: bool = True,
        previous_turn_low_confidence: bool = False,
        threshold: float = 0.55,
        decline_marker: str = "[[HANDOVER]]",
        unknown_confidence_hands_over: bool = True,
    ) -> Decision:
        """Answer or hand over, with one named reason; see the module docstring for the order."""
        user_text = user_text or ""
        draft, declined_because = ("", None)
        if generation is not None:
            draft, declined_because = _split_marker(generation.text or "", decline_marker)

        def handover(reason: Reason, detail: str) -> Decision:
            return Decision(True, reason, detail, draft)

        # 1. the user asked for a person
        if self.wants_human(user_text):
            return handover(Reason.USER_REQUEST, "user asked for a human")

        # 2. a topic that always goes to a person
        topic = self.sensitive_topic(user_text)
        if topic is not None:
            return handover(Reason.SENSITIVE_TOPIC, f"matched {topic!r}")

        # 3. / 4. the engine failed; or there was nothing it could answer
        only_unreadable = unreadable_images > 0 and not answerable_text
        if isinstance(error, EngineOverloaded):
            return handover(Reason.BUSY, _error_name(error))
        if error is not None:
            return handover(Reason.ENGINE_ERROR, _error_name(error))
        if only_unreadable:
            n = unreadable_images
            return handover(
                Reason.UNREADABLE_IMAGE,
                f"{n} image{'s' if n != 1 else ''} could not be read and the message had no text",
            )
        if generation is None:
            return handover(Reason.ENGINE_ERROR, "no generation")
        if generation.finish_reason == "cancelled":
            return handover(Reason.ENGINE_ERROR, "generation cancelled")

        # 5. the model said it cannot help
        if declined_because is not None:
            detail = "model wrote the decline marker"
            if declined_because:
                detail += ": " + declined_because
            return handover(Reason.MODEL_DECLINED, _short(detail))

        # how sure the model was about this answer
        confidence = generation.confidence
        if confidence is not None and not math.isfinite(confidence):
            confidence = None
        empty = not draft
        if empty:
            low, low_detail = True, "empty answer"
        elif confidence is None:
            low = unknown_confidence_hands_over
            low_detail = "confidence unknown (no log-probs)"
        else:
            low = confidence < threshold
            low_detail = f"confidence {_fmt(confidence, threshold)} < {_fmt(threshold)}"

        # 6. the user says it did not help, or twice unsure in a row
        if self.said_not_helpful(user_text):
            return handover(Reason.REPEATED_FAILURE, "user said the answer did not help")
        if previous_turn_low_confidence and low:
            return handover(Reason.REPEATED_FAILURE, f"low confidence twice in a row ({low_detail})")

        # 7. unsure this time
        if low:
            return handover(Reason.LOW_CONFIDENCE, low_detail)

        # 8. answer
        detail = "confidence unknown" if confidence is None else f"confidence {_fmt(confidence)}"
        return Decision(False, None, detail, (generation.text or "").strip())


def _topic_matcher(topic: str):
    """A function (normalized, compact) -> bool for one configured topic term."""
    term = _normalize(topic)
    if _CJK.search(term):
        needle = _compact(term.rstrip("*"))
        return lambda normalized, compact: needle in compact
    prefix = term.endswith("*")
    words = [w for w in re.split(r"[\s\-_]+", term.rstrip("*")) if w]
    if not words:
        return lambda normalized, compact: False
    *head, last = words
    if prefix:
        tail = re.escape(last) + r"[a-z0-9]*"
    else:
        forms = [re.escape(last) + r"(?:s|es|d|ed|ing)?"]
        if last.endswith("e") and len(last) > 2:
            forms.append(re.escape(last[:-1]) + "ing")
        tail = "(?:" + "|".join(forms) + ")"
    body = r"[\s\-_]+".join([re.escape(w) for w in head] + [tail])
    pattern = re.compile(r"(?<![a-z0-9])" + body + r"(?![a-z0-9])")
    return lambda normalized, compact: pattern.search(normalized) is not None
