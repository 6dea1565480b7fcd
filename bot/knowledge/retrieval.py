"""What a turn may answer from: help-centre passages found for it, and the citations in its answer.

The best query is often not what the user typed ("?" under a screenshot) but what the screenshot
shows: an error code, a screen title. So the query puts the screenshot evidence first, then the
user's words, then their recent turns. Passages that fit `SNAPDESK_KB_TOKENS` are numbered for the
prompt; the answer cites them as [1], [2], and only numbers that were given count as citations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import yaml

from engine.evidence import Evidence

from .index import Hit, KnowledgeBase

PROMPT_FILE = Path(__file__).resolve().parents[2] / "prompts" / "parts" / "knowledge.yaml"
CITATION = re.compile(r"\[(\d{1,2})\]")
RECENT_TURNS = 2  # earlier user messages of the episode that join the query
MAX_QUERY_CHARS = 1000


@dataclass(frozen=True)
class Passage:
    number: int  # as the prompt and the answer name it: [number]
    hit: Hit

    def as_dict(self, public_url: str = "") -> dict:
        """`url`: the article's own address, else its page on this server when the server's public
        address is known (`/help/{id}`), else "" (the widget links to its own server's page)."""
        hit = self.hit
        url = hit.url or (f"{public_url}/help/{hit.article_id}" if public_url else "")
        return {"n": self.number, "chunk_id": hit.chunk_id, "article_id": hit.article_id, "title": hit.title,
                "url": url, "section": hit.section, "score": round(hit.score, 4)}


def knowledge_query(user_text: str, evidence: Iterable[Evidence] = (), recent: Sequence[str] = ()) -> str:
    """Screenshot evidence (codes, title), the message, then the last turns: the search's input."""
    parts: list[str] = []
    for shown in evidence:
        parts += list(shown.error_codes)
        if shown.title:
            parts.append(shown.title)
        parts += [f"order {value}" for value in shown.orders[:1]] + [f"tracking {value}" for value in shown.tracking[:1]]
    parts.append(user_text)
    parts += list(recent[-RECENT_TURNS:])
    return " ".join(p.strip() for p in parts if p and p.strip())[:MAX_QUERY_CHARS]


def fit_passages(hits: Sequence[Hit], budget_tokens: int, count_tokens: Callable[[str], int],
                 min_score: float = 0.0) -> list[Passage]:
    """The best hits, in order, that fit the budget (one article's passage at most twice)."""
    chosen: list[Passage] = []
    used = 0
    per_article: dict[int, int] = {}
    for hit in hits:
        if hit.score < min_score or per_article.get(hit.article_id, 0) >= 2:
            continue
        cost = count_tokens(_passage_text(len(chosen) + 1, hit))
        if used + cost > budget_tokens:
            continue
        used += cost
        per_article[hit.article_id] = per_article.get(hit.article_id, 0) + 1
        chosen.append(Passage(len(chosen) + 1, hit))
    return chosen


def _passage_text(number: int, hit: Hit) -> str:
    return f"[{number}] {hit.section or hit.title}\n{hit.text.strip()}"


@lru_cache(maxsize=1)
def _prompts() -> dict[str, str]:
    return yaml.safe_load(PROMPT_FILE.read_text(encoding="utf-8"))


def knowledge_section(passages: Sequence[Passage], language: str) -> str:
    """The numbered "Knowledge" section appended to the system prompt ("" without passages)."""
    if not passages:
        return ""
    prompts = _prompts()
    template = prompts.get(language, prompts["en"])
    return template.format(passages="\n\n".join(_passage_text(p.number, p.hit) for p in passages)).strip()


def cited(answer: str, passages: Sequence[Passage]) -> list[Passage]:
    """The passages an answer cites, in the order first cited; numbers it was not given are ignored."""
    by_number = {p.number: p for p in passages}
    order: list[Passage] = []
    for match in CITATION.finditer(answer or ""):
        passage = by_number.get(int(match.group(1)))
        if passage is not None and passage not in order:
            order.append(passage)
    return order




def record(passages: Sequence[Passage], answer: str, public_url: str = "") -> dict:
    """What a bot message keeps of its retrieval: every passage given, and the numbers it cited."""
    return {"retrieved": [p.as_dict(public_url) for p in passages],
            "cited": [p.number for p in cited(answer, passages)]}


def stored_sources(knowledge: str | dict | None) -> tuple[dict, ...]:
    """The sources of a stored bot message (its `knowledge` column), for redelivery and history."""
    if not knowledge:
        return ()
    data = json.loads(knowledge) if isinstance(knowledge, str) else knowledge
    given = {p["n"]: p for p in data.get("retrieved", [])}
    seen: dict[int, dict] = {}
    for number in data.get("cited", []):
        passage = given.get(number)
        if passage is not None and passage["article_id"] not in seen:
            seen[passage["article_id"]] = {"n": number, "title": passage["title"], "url": passage["url"],
                                           "article_id": passage["article_id"]}
    return tuple(seen.values())


@dataclass(frozen=True)
class KnowledgeOptions:
    tokens: int = 1200
    passages: int = 4
    min_score: float = 1.0


class TurnKnowledge:
    """The passages one turn gets, found from what it reads (runs on the database thread)."""

    def __init__(self, kb: KnowledgeBase, options: KnowledgeOptions, count_tokens: Callable[[str], int]) -> None:
        self.kb = kb
        self.options = options
        self.count_tokens = count_tokens

    def passages(self, message: dict, history: Sequence[dict], readings: Sequence[dict | None]) -> list[Passage]:
        if self.options.tokens <= 0:
            return []
        evidence = [Evidence.from_dict(r.get("evidence") or {}) for r in readings if r and r.get("ocr")]
        recent = [row["text"] for row in history if row["role"] == "user" and row["text"]]
        query = knowledge_query(message["text"], evidence, recent)
        if not query:
            return []
        hits = self.kb.search(query, k=self.options.passages * 3)
        return fit_passages(hits, self.options.tokens, self.count_tokens, self.options.min_score)[:self.options.passages]
