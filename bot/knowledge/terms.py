"""The one way text becomes search terms, shared by indexing and querying.

SQLite's unicode61 tokenizer splits on spaces and punctuation, which leaves a run of Chinese
characters as a single token: "如何关闭自动续费" would only match itself. So Chinese runs are cut
into words before they reach FTS5, the same way for articles and for questions, and a question
can then find 续费 or 扣款 anywhere. Two ways to cut are kept, selected by SEGMENTER (re-import the
articles after changing it): jieba's dictionary words, or overlapping character pairs.

Error codes are the other thing the tokenizer gets wrong: E-4012 becomes "e" and "4012", and
CARD_DECLINED two common words. Codes are therefore also indexed whole, lower-cased with their
separators removed ("e4012", "carddeclined"), in a column of their own that weighs the most.

Questions are untrusted: every term is quoted, so nothing a user types is FTS5 syntax.
"""

from __future__ import annotations

import logging
import re
import threading

JIEBA, BIGRAM = "jieba", "bigram"
# Chosen on the Chinese cases in tests/test_knowledge_index.py: jieba's words rank the article
# that answers first more often than character pairs, which also match across word boundaries.
SEGMENTER = JIEBA
MAX_TERMS = 64

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+")
_CODE = re.compile(  # ASCII boundaries: a code may stand right after Chinese text (错误码E-4012)
    r"(?<![a-z0-9_-])(?:"
    r"0x[0-9a-f]+"  # 0x80070005
    r"|(?:https?|smtp|ftp)[ ]?\d{3}"  # HTTP 502
    r"|[a-z0-9]+(?:[_-][a-z0-9]+)*"  # E-4012, CARD_DECLINED, ERR_TIMEOUT_2
    r")(?![a-z0-9_])",
    re.IGNORECASE,
)
_SEPARATORS = re.compile(r"[-_ ]")

STOP_WORDS = frozenset(
    """
    a about after all also am an and any are as at be been before being but by can could did do does doing
    for from get got had has have having he her here him his how i if in into is it its just me more
    my no not now of on or our out please she should so some than that the their them then there these
    they this those to too up us was we were what when where which while who why will with would you your
    的 了 吗 呢 吧 啊 呀 我 你 您 他 她 它 我们 你们 他们 是 在 有 和 与 或 就 都 也 还 要 会 能 可以 怎么
    怎样 怎么办 如何 为什么 什么 哪 哪里 这 那 这个 那个 一个 请 请问 谢谢 一下 到 把 被 给 让 吗 嘛 呢
    """.split()
)

_jieba = None
_jieba_lock = threading.Lock()


def _jieba_tokenizer():
    """jieba's dictionary, loaded once (about half a second) and quietly; cutting is then read-only."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                tokenizer = jieba.Tokenizer()
                tokenizer.initialize()
                _jieba = tokenizer
    return _jieba


def _cut(run: str, segmenter: str) -> list[str]:
    if segmenter == BIGRAM:
        return [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]
    if segmenter == JIEBA:
        return [word for word in _jieba_tokenizer().cut_for_search(run, HMM=False) if word.strip()]
    raise ValueError(f"unknown Chinese segmenter {segmenter!r}: use {JIEBA!r} or {BIGRAM!r}")


def segment(text: str, segmenter: str | None = None) -> str:
    """The text with every Chinese run cut into space-separated words; other text as it was."""
    chosen = segmenter or SEGMENTER
    return _CJK_RUN.sub(lambda run: " " + " ".join(_cut(run.group(), chosen)) + " ", text)


def codes(text: str) -> list[str]:
    """Identifiers in the text, normalised ("E-4012" -> "e4012"), in order, without repeats.

    An identifier is a token with a digit, an underscore or a hexadecimal prefix in it
    (E-4012, CARD_DECLINED, 0x80070005, HTTP 502); plain words and plain numbers are not.
    """
    found: dict[str, None] = {}
    for match in _CODE.finditer(text):
        token = match.group()
        has_digit = any(ch.isdigit() for ch in token)
        has_letter = any(ch.isalpha() for ch in token)
        if (has_digit and has_letter) or "_" in token:
            found.setdefault(_SEPARATORS.sub("", token.lower()), None)
    return list(found)


def query_terms(query: str, max_terms: int = MAX_TERMS) -> list[str]:
    """The terms a question is searched by: its codes first, then its words without stop words."""
    words = [word.lower() for word in _WORD.findall(segment(query))]
    kept = [
        word for word in words
        if word not in STOP_WORDS and not (len(word) == 1 and word.isascii() and word.isalpha())
    ]
    return list(dict.fromkeys(codes(query) + kept))[:max_terms]


def match_expression(query: str, max_terms: int = MAX_TERMS) -> str | None:
    """An FTS5 MATCH expression: any of the terms (OR, ranked by BM25), each quoted; None if none."""
    return _any(query_terms(query, max_terms))


def code_expression(query: str, max_terms: int = MAX_TERMS) -> str | None:
    """A MATCH expression for any of the question's codes; None when it names none."""
    return _any(codes(query)[:max_terms])


def _any(terms: list[str]) -> str | None:
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms) or None
