"""The sample help centre and its labelled questions are sound enough to measure retrieval with.

A benchmark scores search by whether the labelled article comes back for each question; a label
that points at a missing file, a screenshot nobody can read, or an article whose text lacks the
error code the screenshot shows would score the labels, not the search. No search here: these
check the content itself, quickly.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from bench import screenshot_corpus as corpus

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "prompts" / "knowledge"
QUESTIONS = ROOT / "bench" / "data" / "kb_questions.jsonl"
ARTICLE_NAME = re.compile(r"^(?P<topic>[a-z0-9]+(?:-[a-z0-9]+)*)\.(?P<language>en|zh)\.md$")
CJK = re.compile(r"[\u4e00-\u9fff]")
FENCE = re.compile(r"^(```|~~~)")


def _articles() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(KNOWLEDGE.glob("*.md"))}


def _questions() -> list[dict]:
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def articles() -> dict[str, str]:
    return _articles()


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return _questions()


@cache
def shot(name: str) -> corpus.Sample:
    return corpus.sample(name)


def headings(text: str) -> list[tuple[int, str]]:
    """ATX headings outside fenced code blocks, as (level, title)."""
    found, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#{1,6})\s+(\S.*?)\s*#*\s*$", line)):
            found.append((len(match.group(1)), match.group(2)))
    return found


def title(text: str) -> str:
    return headings(text)[0][1]


def language_of(article: str) -> str:
    return ARTICLE_NAME.match(article).group("language")


# --- articles -----------------------------------------------------------------------------------

def test_every_topic_is_published_in_both_languages(articles):
    assert 24 <= len(articles) <= 30
    assert all(ARTICLE_NAME.match(name) for name in articles), [n for n in articles if not ARTICLE_NAME.match(n)]
    topics = Counter(ARTICLE_NAME.match(name).group("topic") for name in articles)
    assert {count for count in topics.values()} == {2}, topics


@pytest.mark.parametrize("name", sorted(_articles()))
def test_an_article_has_one_title_first_and_sections(articles, name):
    text = articles[name]
    first_line = next(line for line in text.splitlines() if line.strip())
    assert first_line.startswith("# "), first_line
    levels = [level for level, _ in headings(text)]
    assert levels.count(1) == 1
    assert levels.count(2) >= 1
    assert not any(FENCE.match(line) for line in text.splitlines()), "help articles have no code blocks"


@pytest.mark.parametrize("name", sorted(_articles()))
def test_an_article_is_short_and_in_its_language(articles, name):
    text = articles[name]
    cjk = len(CJK.findall(text))
    if language_of(name) == "en":
        assert cjk == 0
        assert 150 <= len(text.split()) <= 450, len(text.split())
    else:
        # About 1.6 characters make a Chinese word: 150 to 450 words.
        assert 240 <= cjk <= 720, cjk


def test_titles_are_distinct(articles):
    titles = [title(text) for text in articles.values()]
    assert len(set(titles)) == len(titles)


# --- questions ----------------------------------------------------------------------------------

def test_questions_are_well_formed(questions, articles):
    ids = [q["id"] for q in questions]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    for q in questions:
        assert set(q) == {"id", "language", "text", "screenshot", "articles"}, q
        assert re.fullmatch(r"q\d{3,}", q["id"]), q
        assert q["language"] in ("en", "zh"), q
        assert isinstance(q["text"], str), q
        assert q["articles"] and len(set(q["articles"])) == len(q["articles"]), q
        assert set(q["articles"]) <= set(articles), q


def test_the_set_is_large_and_balanced(questions):
    total = len(questions)
    assert total >= 130
    assert sum(q["screenshot"] is not None for q in questions) * 3 >= total
    languages = Counter(q["language"] for q in questions)
    assert languages["en"] * 10 >= total * 4 and languages["zh"] * 10 >= total * 4, languages


def test_every_article_answers_at_least_three_questions(questions, articles):
    answered = Counter(article for q in questions for article in q["articles"])
    assert {name: answered[name] for name in articles if answered[name] < 3} == {}


def test_a_text_question_is_answered_in_its_language_and_does_not_copy_a_title(questions, articles):
    titles = [title(text).casefold() for text in articles.values()]
    for q in questions:
        if q["screenshot"] is None:
            assert q["text"].strip(), q
            assert {language_of(a) for a in q["articles"]} == {q["language"]}, q
            assert not any(t in q["text"].casefold() for t in titles), q


def test_a_screenshot_question_names_a_readable_sample(questions):
    for q in (q for q in questions if q["screenshot"] is not None):
        sample = shot(q["screenshot"])
        assert not sample.unreadable, q
        assert not sample.textless or q["text"].strip(), f"{q['id']}: nothing to go on in {sample.name}"


def test_a_screenshot_question_is_answered_in_the_screenshots_language(questions):
    """The screenshot's own text decides; a mixed one goes by what the user wrote (Chinese when they
    wrote nothing), and a photo without text by the question's language."""
    for q in (q for q in questions if q["screenshot"] is not None):
        sample = shot(q["screenshot"])
        if sample.textless:
            expected = q["language"]
        elif sample.language == "mixed":
            expected = "en" if q["text"].strip() and not CJK.search(q["text"]) else "zh"
        else:
            expected = sample.language
        assert {language_of(a) for a in q["articles"]} == {expected}, q


def test_the_error_codes_a_screenshot_shows_are_in_its_article(questions, articles):
    for q in (q for q in questions if q["screenshot"] is not None):
        text = "\n".join(articles[a] for a in q["articles"])
        codes = {item.value for drawn in shot(q["screenshot"]).strings for item in drawn.items
                 if item.kind == "error_code"}
        assert {code for code in codes if code not in text} == set(), q
