"""Answer the user, or hand the thread to a human agent: the one place that decides.

Every channel (Slack, Telegram, the web widget) and every turn goes through
`EscalationPolicy.decide`, so the same message gets the same outcome wherever it was
written, and every hand-over carries one named `Reason` and a short `detail` that agents
and operators can read and count. The policy is plain, deterministic text matching plus
the engine's confidence: no model call, no I/O, cheap enough to run on every turn.
`EscalationPolicy.before_model` runs rules 1, 2 and 4 alone (same code, same order), so a
turn they settle is handed over without generating.

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
6. ``repeated_failure`` only when the bot already answered in this episode
                        (``earlier_answer=True``): the user says it did not help, or the
                        confidence is low for the second turn in a row.  Before any answer,
                        "I restarted the router but it is still not working" describes what
                        the user tried alone: the turn goes on to the confidence checks;
7. ``low_confidence``   confidence below the template threshold, unknown, or an empty answer;
8. otherwise answer.

Matching choices (all case-insensitive, on NFKC-normalised text so full-width letters,
digits and punctuation behave like their ASCII forms).  The rules are measured against
``bench/data/escalation_messages.jsonl`` (``python -m bench.escalation_bench --show``).

* Asking for a person is recognised from *phrases*, never from a lone keyword inside a
  sentence.  English: talk/speak/chat to|with a human|person|agent|someone|your billing
  team ...; a routing verb (connect, transfer, pass, forward, escalate ...) only when what
  is routed is the user or the conversation ("transfer me / this chat to an agent"), so
  "transfer money to someone" and "forward the invoice to someone in accounting" are not
  requests; get/need/want a human|agent|manager, but not when the person is wanted for
  something other than helping ("I need an agent to sign in", "need someone to sign for the
  parcel"); a support person asked to act ("can someone from support call me back", "have
  a person look at this"); "real person", "live agent", "is there a human I can talk to",
  "call me back", "a person, not a bot", or a message that is nothing but "human" / "agent"
  / "representative" / "operator" (with "please", "hi" ... around it).  Words that name a
  thing, not a person, stop a match: "agent ID", "the agent app", "human resources".  A
  swapped pair of letters is mended first ("humna", "agnet", "tlak").  A direct negation in
  front ("I don't need a human") cancels the match.  Chinese: 转/接通/咨询/要/找人工
  (also 转个人工, 转给人工; typed 人功 / 认工 are mended), 人工客服/服务, 真人客服, 找真人,
  asking a role for help (找客服, 让工作人员给我打电话, 叫你们经理, 跟客服专员沟通), 客服在吗,
  有人工吗, 找人 / 跟人聊 on their own, 不要机器人, or a message that is just 人工 / 真人 / 客服.
  Never 人工智能, 人工费, 人工审核, 真人认证 / 真人验证; not 找人代付 / 找人代收 (someone else
  is to act, not support); negated requests (不需要人工, 不用转人工) do not count.
  *Asking for the support phone number, e-mail or hours is an information question, not a
  request* (客服电话是多少?, "What's your customer service phone number?"): the template can
  answer it.  "How do I reach a human?" / 怎么联系人工客服? asks for a person and is one.
* Sensitive topics are a plain list of terms (replaceable per deployment: a template's
  ``escalation.sensitive_topics``).  A message is sensitive when it *names the topic
  itself* -- the noun or verb, in any regular inflection: "refund", "refunds", "refunded",
  "What is your refund policy?", 怎么申请退款? -- including when the page for it is broken
  ("the dispute resolution page won't load" names a dispute the user is trying to open).
  An adjective derived from a term is a question about a product, which the template
  answers: "Is this refundable?", "non-refundable tickets", 这个可以退吗?.  Technically: an
  English term matches as whole words plus a regular inflection of its last word (-s, -es,
  -d, -ed, -ing; "sue" -> "suing"); a term ending in "*" matches as a prefix ("refund*"
  also catches "refundable") for deployments that want the stricter behaviour.  Terms with
  Chinese characters match as substrings (whitespace in the message ignored).  The
  returned topic is the list entry, first entry in list order wins.  Words with an
  everyday sense are listed only in phrases: "sue you" / "I'll sue" (Sue is a name), "to
  court" / "in court" (not "food court").  Fraud without the word is listed by phrase too:
  "without my permission", "I didn't authorize", "someone logged into my account",
  不是我本人, 未授权, 有人用我的.
* "It did not help" is recognised from phrases that say an earlier attempt or answer
  failed ("that didn't help", "not helpful", "still not working", "that's wrong", "I
  already tried that", "nothing changed", 没用, 没有帮助, 还是不行, 说的不对, 答非所问 ...);
  complaints that are also typical first messages ("my payment didn't work", "I still
  haven't received my parcel", 金额不对, 我没用过) do not count.  Whether it hands over depends
  on ``earlier_answer`` (rule 6).

Details never quote an exception's message (it may contain user data) and card numbers in
them are masked to their last four digits ("•••• 1111", `bot.masking`), so a number the
model saw in a screenshot does not reach the escalation list; other numbers are kept.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from bot.masking import mask_card_numbers
from engine.base import EngineError, EngineOverloaded, Generation


class Reason(str, enum.Enum):
    USER_REQUEST = "user_request"
    LOW_CONFIDENCE = "low_confidence"
    MODEL_DECLINED = "model_declined"
    SENSITIVE_TOPIC = "sensitive_topic"
    REPEATED_FAILURE = "repeated_failure"
    UNREADABLE_IMAGE = "unreadable_image"
    NO_KNOWLEDGE = "no_knowledge"
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
    "refund", "money back", "reimbursement", "reimburse", "compensation", "compensate",
    "chargeback", "charge back", "dispute",
    # legal and regulators ("court" only as the place of a case: "food court" is not one)
    "lawyer", "attorney", "solicitor", "lawsuit", "law suit", "legal action", "to court",
    "in court", "court case", "small claims", "sue you", "sue your", "sue the company",
    "i will sue", "i'll sue", "going to sue", "gonna sue", "suing", "consumer protection",
    "ombudsman", "trading standards", "better business bureau", "report you", "police",
    # account deletion / personal data
    "delete my account", "close my account", "remove my account", "cancel my account",
    "account deletion", "delete my data", "remove my data", "erase my data",
    "right to be forgotten", "gdpr", "erasure", "erase my account", "you store about me", "you hold about me", "you have about me",
    # fraud and security incidents
    "fraud", "fraudulent", "scam", "scammed", "identity theft", "identity was stolen",
    "stolen", "theft", "thief", "thieves", "stole", "steal", "unauthorized charge", "unauthorised charge",
    "unauthorized transaction", "unauthorised transaction", "didn't authorize", "didn't authorise",
    "did not authorize", "did not authorise", "never authorized", "never authorised",
    "without my permission", "without my consent", "i didn't make", "i did not make",
    "i never made", "someone logged into my account", "someone used my", "someone accessed my",
    "data breach", "breach", "breached", "hacked", "data leak", "leaked",
    # Chinese
    "退款", "退钱", "钱退", "退我钱", "退给我", "退一笔", "退费", "拒付", "退单", "赔偿", "赔钱", "追回", "承担损失",
    "律师", "起诉", "法院", "诉讼", "告你们", "投诉到消协", "消协", "消费者协会", "12315", "工商局",
    "市场监管", "报警",
    "注销账号", "注销帐号", "注销账户", "账号注销", "帐号注销", "账户注销", "注销我的账", "销户",
    "删除账号", "删除帐号", "删除账户", "删除我的账", "删除我的数据",
    "删除个人信息", "删除我的个人信息", "个人信息删",
    "盗刷", "被盗", "盗了", "盗号", "被人盗", "盗用", "冒用", "诈骗", "欺诈", "欺骗", "骗子", "被骗", "不是我本人", "非本人",
    "没有授权", "未授权", "未经授权", "泄露", "泄漏",
    "有人用我的", "有人登录我的", "有人登录了我的", "异地登录",
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
    r"settings|mode|status|list|name|role|resources|phone|email|e-mail|hours|address|hotline|"
    r"seat|seats|icon|string)\b)"
)
# A team on the support side: "your billing team", "the support department".
_TEAM = (
    r"(?:(?:your|the|a|an)\s+)(?:(?:billing|support|tech|technical|sales|complaints?|customer|"
    r"service|accounts?|help)\s+){1,2}(?:team|department|dept|desk|staff)\b"
)
_SUPPORT_NOUNS = (
    r"human|humans|person|people|agent|agents|representative|representatives|rep|operator|"
    r"staff|staff member|employee|customer service|customer support|customer care|support team|support staff|"
    r"service desk|help desk|manager|supervisor"
)
# "someone from support", "somebody on your team", "a member of your team"
_SOMEONE_THERE = (
    r"(?:someone|somebody|anyone|anybody|some1|a member|member|one)\s+(?:of|from|at|on|in)\s+"
    r"(?:your|the)?\s*(?:support|customer service|customer support|team|staff|company|billing|"
    r"help desk|service desk|tech support|[a-z]+ (?:team|department))\b"
)
_PERSON = (
    r"(?:" + _TEAM + r"|" + _SOMEONE_THERE + r"|"
    r"(?:(?:a|an|the|some|your|one of your|any|with)\s+)?(?:(?:real|live|actual|human|other)\s+)?"
    r"(?:" + _SUPPORT_NOUNS + r"|someone|somebody|anyone|anybody|some1|support)\b" + _NOT_A_PERSON_AFTER + r")"
)
_DIRECT_PERSON = (  # object of "get / need / want ...": a bare "the agent" or "someone" is not enough
    r"(?:me\s+)?(?:" + _TEAM + r"|" + _SOMEONE_THERE + r"|"
    r"(?:(?:a|an|some|your|one of your)\s+)?(?:(?:real|live|actual)\s+)?"
    r"(?:human|humans|person|representative|agent|operator|manager|supervisor|staff member|"
    r"customer service|customer support|customer care|support team)\b" + _NOT_A_PERSON_AFTER + r"|"
    r"(?:someone|somebody|anyone|some1) (?:real|human|from support)\b)"
)
# What a person from support is asked to do: "need an agent to look at this" is a request,
# "need an agent to sign in" (an agent account) or "need someone to sign for the parcel" is not.
_HELP_VERB = (
    r"(?:help|helps|talk|speak|chat|call|calls|phone|ring|email|e-mail|contact|reach|look|looks|check|"
    r"handle|handles|take over|take a look|review|fix|sort|deal|assist|reply|respond|answer|explain|"
    r"investigate|get in touch|get back|follow up|sort out|figure out|take care)"
)
_ROUTE_VERB = (
    r"(?:connect|connected|transfer|transferred|put|escalate|escalated|pass|switch|hand|forward|"
    r"route|send|move|redirect)"
)
# What may stand between a routing verb and "to": the user or the conversation, not money,
# an invoice or a subscription ("transfer money to someone" is not a request).
_ROUTED = (
    r"(?:\s+(?:me|us|this|it|over|through|directly|please|now|right away|across|"
    r"(?:my|this|the|our) (?:chat|conversation|case|ticket|issue|call|question|complaint|request|problem|"
    r"query|thread|matter)))*"
)

_HUMAN_PATTERNS_EN = [
    # talk / speak / chat (directly) to|with <person>
    re.compile(
        r"\b(?:talk|talking|speak|speaking|chat|chatting|discuss this|get in touch)\b(?:\s+\S+){0,2}?\s+"
        r"(?:to|with)\s+" + _PERSON
    ),
    # connect / transfer / pass / escalate (me | this chat) to <person>
    re.compile(r"\b" + _ROUTE_VERB + r"\b" + _ROUTED + r"\s+(?:to|with)\s+" + _PERSON),
    # put me in touch with / through to
    re.compile(r"\bput (?:me|us) (?:in touch|through)\b"),
    # get / give / need / want / reach / contact / request <person>, not "<person> to sign in"
    re.compile(
        r"\b(?:(?:get|give|need|want|wanna|prefer)\s+(?:to\s+)?|"
        r"(?:reach|contact|call|request|have)\s+(?:to\s+)?(?=(?:me|a|an|some|your|one|someone|somebody|anyone)\b)|"
        r"(?:can|could|may) (?:i|we) (?:please )?(?:have|get)\s+)" + _DIRECT_PERSON +
        r"(?!\s+to\s+(?!" + _HELP_VERB + r"\b))"
    ),
    # <person> (could / please ...) call me / look at this / handle this / take over
    re.compile(
        r"\b(?:" + _TEAM + r"|" + _SOMEONE_THERE + r"|(?:a|an|the|some|one of your|your)\s+(?:real\s+|live\s+|actual\s+)?"
        r"(?:human|person|agent|representative|rep|staff member|manager|supervisor))\s+"
        r"(?:(?:please|could|can|would|will|should|to|kindly|just|also|actually)\s+){0,3}"
        + _HELP_VERB + r"\b(?:\s+(?:me|us|this|it|into|at|over|back|on|in touch|with me))"
    ),
    # put a human on this
    re.compile(r"\bput (?:a|an|some|one of your) (?:human|person|agent|real person)\b"),
    # "<person> please"
    re.compile(
        r"\b(?:human|person|agent|representative|rep|operator|customer service|customer support|"
        r"someone)\s*,?\s*(?:please|pls|plz)\b" + r"(?!\s+(?:app|id|login))"
    ),
    # strong phrases on their own
    re.compile(
        r"\b(?:real|live|actual)\s+(?:person|human|agent|people|humans|agents)\b" + _NOT_A_PERSON_AFTER + r"|"
        r"\bhuman\s+(?:agent|support|operator|representative|help|being to talk)\b|"
        r"\bcustomer (?:service|support) (?:rep|representative|agent)\b|"
        r"\b(?:someone|somebody|anyone) real\b"
    ),
    # "is there a human I can talk to?", "are any agents online?"
    re.compile(
        r"(?:^|\b(?:is there|are there|is|are|do you have)\s+)(?:a |an |any |some )?(?:real |live |actual )?"
        r"(?:human|humans|person|people|agent|agents|representative|representatives|staff|anyone|anybody)\b"
        r"(?:\s+(?:i|we) (?:can|could) (?:talk|speak|chat)|\s+(?:online|available|around|on duty|"
        r"(?:here|there)\b(?!\s+(?:is|are|was)))|\s+i can reach)"
    ),
    # "(please) call me", "call me back": the bot cannot phone anyone
    re.compile(
        r"(?:^|\b(?:please|can you|could you|can someone|could someone|someone)\s+)(?:call|phone|ring) me\b|"
        r"\bcall me back\b|\ba (?:callback|call back|call from (?:someone|somebody|an? (?:agent|person|human)|your|support))\b"
    ),
    # "I don't want to talk to a bot", "a person, not a machine"
    re.compile(
        r"\b(?:don'?t|do not|dont) want (?:to (?:talk|speak|chat) (?:to|with) )?(?:a |the |this |your )?"
        r"(?:bot|robot|chatbot|machine)\b|"
        r"\b(?:person|human|people|someone),?\s+(?:and\s+)?(?:not|instead of|rather than)\s+(?:a |an |the |this |some )?"
        r"(?:bot|robot|chatbot|machine|ai|computer)\b"
    ),
    # "how do I reach a human?"
    re.compile(r"\bhow (?:do|can|could) i (?:reach|contact|get hold of|get to) " + _DIRECT_PERSON),
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
    "just", "asap", "thanks", "thank", "you", "me", "i", "want", "need", "get", "to", "talk",
    "speak", "needed",
}
# Typing slips of the words the English rules look for: a swapped pair of letters
# ("humna", "agnet", "tlak") is mended before matching.
_TYPO_TARGETS = ("human", "agent", "person", "talk", "speak", "representative", "someone", "operator")


def _bare_request(sentence: str) -> bool:
    """The sentence is only a word for a person, with greetings and "please" around it."""
    bare = _words_only(sentence)
    if _BARE_ZH.match(bare.replace(" ", "")):
        return True
    person = [w for w in bare.split() if w not in _BARE_FILLER]
    if not person or not all(w in _BARE_PERSON_WORDS for w in person):
        return False
    return any(w in _BARE_STRONG for w in person) or (
        "customer" in person and ("service" in person or "support" in person)
    )


def _transpositions(word: str) -> set[str]:
    return {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1) if word[i] != word[i + 1]}


_TYPOS = {slip: word for word in _TYPO_TARGETS for slip in _transpositions(word)}
_TYPOS.update({"some1": "someone", "sum1": "someone", "u": "you", "ppl": "people"})


def _mend_typos(normalized: str) -> str:
    return re.sub(r"[a-z0-9]+", lambda m: _TYPOS.get(m.group(0), m.group(0)), normalized)


# Chinese. A person on the support side, named by role.
_ZH_STAFF = (
    r"(?:你们的?)?(?:一下|个|一个|位|一位)?(?:工作人员|客服人员|客服专员|客服经理|售后(?:客服|人员)?|"
    r"技术人员|技术支持|主管|经理|领导|负责人|专员|在线客服|人工客服|真人客服|客服)"
)
_HUMAN_PATTERNS_ZH = [
    # 转人工, 转接人工, 转个人工, 接通人工, 咨询人工 (never 人工智能 / 人工费 / 人工审核)
    re.compile(
        r"(?:转|转接|接|接通|找|要|联系|叫|换|呼叫|请求|申请|需要|咨询|有没有|有|求|上)"
        r"(?:一下|个|一个|给|到|给我|我)?人工(?!智能|费|成本|审核|草坪|湖|岛|降雨|合成|制品|饲养|呼吸)"
    ),
    re.compile(r"人工(?:客服|服务|坐席|座席|台|处理|介入|回复|帮忙|来|咨询)"),
    re.compile(r"人工(?:呢|吗|在吗|在不在)"),
    re.compile(  # never 真人认证 / 真人验证 (identity checks on login screens)
        r"真人客服|(?:找|要|转|接|换|和|跟|与|让|请)(?:个|一个|位)?真人(?!认证|验证|照片|头像|核验|识别|实名)|"
        r"真人(?:来|回复|处理|服务|回答)"
    ),
    # 找客服, 联系售后客服, 让工作人员给我打电话, 叫你们经理出来, 跟客服专员沟通
    re.compile(r"(?:找|要|转|转接|接|联系|呼叫|叫|换|让|请|安排|和|跟|与|给我找)" + _ZH_STAFF),
    re.compile(r"客服(?:在吗|在不在|呢)|有(?:没有)?(?:人工|真人|在线)?(?:客服|工作人员)(?:吗|嘛|么|没有|能|可以|帮|在)|(?:在线客服|人工客服|客服|人工|真人)(?:要|该)?(?:怎么|如何)(?:联系|找|转|接通)"),
    # 找人 as "find me a person", not 找人代付 / 找人帮我付款 / 找人问过了
    re.compile(r"找(?:个|一个)?(?:活)?人(?=$|[啊呀吧呢吗来聊说谈沟通处理解决回复,.!?，。！？~])"),
    re.compile(r"(?:有没有|有|是|找|要)(?:个)?活人"),
    re.compile(r"(?:和|跟|与)(?:人|真人|人工|客服)(?:说|谈|聊|沟通|对话)"),
    re.compile(r"(?:不要|不想|别|不用)(?:再)?(?:跟|和|与)?(?:机器人|ai|AI|智能客服)"),
]
# A request in front of which a negation stands: 不需要人工, 不用转人工, 无需人工.
_NEGATED_BEFORE_ZH = re.compile(r"(?:不|不用|无需|不必|没必要|别)(?:再)?$")
# Asking for the support phone number, e-mail or hours is an information question: 客服电话是多少?
_CONTACT_DETAIL_ZH = re.compile(r"的?(?:电话|热线|号码|邮箱|邮件|联系方式|工作时间|上班|下班|几点|时间|地址|微信号)")
_ZH_TYPO_WORDS = (("人功", "人工"), ("认工", "人工"), ("人公", "人工"), ("仁工", "人工"))
_BARE_ZH = re.compile(
    r"^(?:请|你好|您好|我要|我想要|帮我|麻烦)*(?:转?人工|真人|客服|人工客服|rg|rgkf|rgzx|zrg)(?:谢谢|吧|啊|呀)*$"
)


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
        r"broken|failing|fails|the same|stuck|wrong|no luck|blank|empty|crash|crashes|crashing|"
        r"freezes|freezing|says|shows|showing|gives|giving|getting|happening|happens)\b"
    ),
    # "didn't work", "nope, doesn't work": the whole message, or its start, says it failed
    re.compile(
        r"^(?:(?:nope|no|sorry|unfortunately|hmm|well|ok|okay|it|that|still)\W*\s*)*"
        r"(?:did ?n'?t|did not|does ?n'?t|does not|do ?n'?t|do not|wo ?n'?t|will not)\s+(?:work|help)\b"
    ),
    re.compile(
        r"\bno luck\b|\bnothing (?:changed|happened|changes)\b|\b(?:makes|made) no difference\b|"
        r"\b(?:did ?n'?t|did not|does ?n'?t|does not) make (?:a|any) difference\b|"
        r"\b(?:after|did|tried|followed|doing) (?:what|everything|all) you (?:said|told|suggested|wrote)\b|"
        r"\btried \w+ already\b|\balready (?:tried|restarted|rebooted|reinstalled|cleared|reset|updated|"
        r"done|did)\b"
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
        r"未解决|不好使|不管用|失败|报错|打不开|登不上|登录不了|不对|闪退|崩溃|卡住|连不上|没反应)"
    ),
    re.compile(r"(?:你|说|回答|答案|讲|说得|讲得)的?(?:不对|错了|不正确)|^不对"),
    re.compile(r"答非所问|不是我问的|不是我要的|文不对题|没(?:有)?解决我的问题"),
    re.compile(r"(?:已经|都|早就)?试过了|已经试过|都试过|(?:已经|早就)\S{0,4}过了，?还是"),
    re.compile(r"等于没说|白说|说了半天|没(?:有)?(?:理解|明白|看懂|听懂)我(?:的意思|说的|的问题)"),
    re.compile(r"(?:这个|这|你的|你说的|那个)(?:方法|办法|答案|回答|步骤)(?:也|还是)?(?:不行|没用|不管用|不对|无效|行不通)"),
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


def _short(text: str, limit: int = 120) -> str:
    """One line, card numbers masked to their last four digits, cut to `limit` characters."""
    text = mask_card_numbers(" ".join(text.split()))
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


def _unreadable(unreadable_images: int, answerable_text: bool) -> tuple[Reason, str] | None:
    """Rule 4: the turn had only refused images and no text to answer."""
    n = unreadable_images
    if n > 0 and not answerable_text:
        return Reason.UNREADABLE_IMAGE, f"{n} image{'s' if n != 1 else ''} could not be read and the message had no text"
    return None


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
        mended = _mend_typos(normalized)
        for pattern in _HUMAN_PATTERNS_EN:
            for match in pattern.finditer(mended):
                if not _NEGATED_BEFORE.search(mended[max(0, match.start() - 30): match.start()]):
                    return True
        compact = _compact(normalized)
        for slip, word in _ZH_TYPO_WORDS:
            compact = compact.replace(slip, word)
        for pattern in _HUMAN_PATTERNS_ZH:
            for match in pattern.finditer(compact):
                if _CONTACT_DETAIL_ZH.match(compact, match.end()):
                    continue  # 客服电话是多少? asks for a number, not for a person
                if "机器人" not in match.group(0) and _NEGATED_BEFORE_ZH.search(compact[max(0, match.start() - 3): match.start()]):
                    continue
                return True
        # a message, or one sentence of it, that is nothing but "human" / 人工 ("I'm done with this bot. Human.")
        return any(_bare_request(sentence) for sentence in re.split(r"[.!?;。！？；\n]+", mended) if sentence.strip())

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

    def _text_handover(self, user_text: str) -> tuple[Reason, str] | None:
        """Rules 1 and 2: the user asked for a person, or a sensitive topic."""
        if self.wants_human(user_text):
            return Reason.USER_REQUEST, "user asked for a human"
        topic = self.sensitive_topic(user_text)
        if topic is not None:
            return Reason.SENSITIVE_TOPIC, f"matched {topic!r}"
        return None

    def before_model(
        self, user_text: str, *, unreadable_images: int = 0, answerable_text: bool = True
    ) -> Decision | None:
        """The checks that need no model, in `decide`'s order: a request for a person, a
        sensitive topic, only refused images and no text. The hand-over (answer "") or None
        when the model must be asked."""
        early = self._text_handover(user_text or "") or _unreadable(unreadable_images, answerable_text)
        if early is None:
            return None
        return Decision(True, early[0], early[1], "")

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
        earlier_answer: bool = False,
        text_checked: bool = False,
    ) -> Decision:
        """Answer or hand over, with one named reason; see the module docstring for the order.

        `text_checked`: `before_model` already found no request for a person and no
        sensitive topic in `user_text` (the conversation core asks it first), so rules 1 and 2
        are not run again."""
        user_text = user_text or ""
        draft, declined_because = ("", None)
        if generation is not None:
            draft, declined_because = _split_marker(generation.text or "", decline_marker)

        def handover(reason: Reason, detail: str) -> Decision:
            return Decision(True, reason, detail, draft)

        # 1. / 2. the user asked for a person; a topic that always goes to a person
        early = None if text_checked else self._text_handover(user_text)
        if early is not None:
            return handover(*early)

        # 3. / 4. the engine failed; or there was nothing it could answer
        if isinstance(error, EngineOverloaded):
            return handover(Reason.BUSY, _error_name(error))
        if error is not None:
            return handover(Reason.ENGINE_ERROR, _error_name(error))
        unreadable = _unreadable(unreadable_images, answerable_text)
        if unreadable is not None:
            return handover(*unreadable)
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

        # 6. only after the bot answered in this episode: the user says it did not help, or
        #    twice unsure in a row. Before any answer "it still doesn't work" describes what the
        #    user tried on their own: a first message, answered like any other.
        if earlier_answer:
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
        if re.search(r"[^aeiou][aeiou][bdgklmnprt]$", last):  # scam -> scammed, scamming
            forms.append(re.escape(last + last[-1]) + r"(?:ed|ing)")
        if last.endswith("e") and len(last) > 2:
            forms.append(re.escape(last[:-1]) + "ing")
        tail = "(?:" + "|".join(forms) + ")"
    body = r"[\s\-_]+".join([re.escape(w) for w in head] + [tail])
    pattern = re.compile(r"(?<![a-z0-9])" + body + r"(?![a-z0-9])")
    return lambda normalized, compact: pattern.search(normalized) is not None


@functools.lru_cache(maxsize=64)
def policy_for_topics(topics: tuple[str, ...]) -> EscalationPolicy:
    """A template's policy (its sensitive topics), built once per list: the matchers are
    compiled patterns, and every turn of every template asks for one."""
    return EscalationPolicy(topics)
