"""What the help centre lacks and what it lets go stale, read from the conversations.

An operator improves a help centre by writing what users asked for and did not find, and by
refreshing what the bot keeps citing. Both answers are in the conversations already: hand-overs
for missing knowledge, answers given without a relevant passage, and the passages each answer
cited (messages.knowledge). Grouping the questions by what their screenshots showed (an error
code, a screen's title) turns a pile of questions into "write an article about E-4012".

Read queries only, like bot/queries.py, on the database thread. `messages.knowledge` is JSON
written by turns (only when a turn was given passages); it is read defensively: a missing column
or an unreadable record is skipped, never an error.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from .context import attachment_ids
from .store import Store

EXAMPLES = 3  # example questions shown per group
EXAMPLE_CHARS = 200
QUESTIONS_LIMIT = 2000  # the most recent questions a gaps report looks at
TEXT_ONLY = ("text_only", "")


def has_knowledge_column(store: Store) -> bool:
    return bool(store.select("select 1 from pragma_table_info('messages') where name = 'knowledge'"))


def _knowledge(raw: Any) -> dict | None:
    """A stored record; {} for none (the turn was given no passage), None when it cannot be read."""
    if not raw:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _passages(knowledge: dict) -> list[dict]:
    retrieved = knowledge.get("retrieved")
    return [p for p in retrieved if isinstance(p, dict)] if isinstance(retrieved, list) else []


def best_score(knowledge: dict) -> float | None:
    scores = [p["score"] for p in _passages(knowledge) if isinstance(p.get("score"), (int, float))]
    return max(scores) if scores else None


def cited_articles(knowledge: dict) -> set[int]:
    """The articles an answer cited: its cited numbers looked up among the passages it was given."""
    cited = knowledge.get("cited")
    numbers = {n for n in cited if isinstance(n, int)} if isinstance(cited, list) else set()
    return {p["article_id"] for p in _passages(knowledge) if p.get("n") in numbers and isinstance(p.get("article_id"), int)}


def _weak_answers(store: Store, since: str, min_score: float) -> dict[int, float | None]:
    """Questions (user message ids) the bot answered without a passage scoring min_score: -> best score."""
    if not has_knowledge_column(store):
        return {}
    rows = store.select(
        "select reply_to, knowledge from messages where role = 'bot' and kind = 'answer' and reply_to is not null "
        "and created_at >= ? order by id desc limit ?", [since, QUESTIONS_LIMIT])
    weak = {}
    for row in rows:
        knowledge = _knowledge(row["knowledge"])
        if knowledge is None:
            continue
        best = best_score(knowledge)
        if best is None or best < min_score:
            weak[row["reply_to"]] = best
    return weak


def _groups(reading: Any) -> list[tuple[str, str]]:
    """The error codes and the screen title a screenshot showed, as (kind, key)."""
    evidence = reading.get("evidence") if isinstance(reading, dict) else None
    if not isinstance(evidence, dict):
        return []
    codes = evidence.get("error_codes")
    keys = [("error_code", str(code)) for code in codes if code] if isinstance(codes, list) else []
    title = evidence.get("title")
    if isinstance(title, str) and title.strip():
        keys.append(("screen_title", title.strip()))
    return keys


def knowledge_gaps(store: Store, since: str, min_score: float) -> dict:
    """Questions since `since` the help centre had no answer for, grouped by what their screenshots
    showed, the most frequent group first. A question is in every group its screenshots name, or
    in the text-only group when they name none."""
    handed_over = {row["message_id"] for row in store.select(
        "select message_id from escalations where reason = 'no_knowledge' and created_at >= ? "
        "and message_id is not null order by id desc limit ?", [since, QUESTIONS_LIMIT])}
    weak = _weak_answers(store, since, min_score)
    ids = sorted(handed_over | set(weak), reverse=True)[:QUESTIONS_LIMIT]
    questions = store.select(
        f"select id, conversation_id, text, attachment_ids, created_at from messages where role = 'user' "
        f"and id in ({','.join('?' * len(ids))}) order by id desc", ids) if ids else []
    readings = store.attachments({i for q in questions for i in attachment_ids(q)})
    groups: dict[tuple[str, str], dict] = {}
    for question in questions:
        keys = [key for i in attachment_ids(question) if i in readings for key in _groups(readings[i].reading)]
        outcome = "handover" if question["id"] in handed_over else "weak_answer"
        for kind, key in dict.fromkeys(keys) or [TEXT_ONLY]:
            group = groups.setdefault((kind, key), {"kind": kind, "key": key, "count": 0, "outcomes": Counter(),
                                                    "examples": []})
            group["count"] += 1
            group["outcomes"][outcome] += 1
            if len(group["examples"]) < EXAMPLES:
                text = " ".join((question["text"] or "").split())
                group["examples"].append({
                    "text": text[:EXAMPLE_CHARS] + ("…" if len(text) > EXAMPLE_CHARS else ""),
                    "conversation_id": question["conversation_id"], "message_id": question["id"],
                    "created_at": question["created_at"], "outcome": outcome,
                    "best_score": weak.get(question["id"]),
                })
    ordered = sorted(groups.values(), key=lambda g: (-g["count"], g["kind"] == "text_only", g["key"]))
    for group in ordered:
        outcomes = group.pop("outcomes")
        group["handovers"], group["weak_answers"] = outcomes["handover"], outcomes["weak_answer"]
    return {"questions": len(questions), "handovers": len(handed_over), "weak_answers": len(weak), "groups": ordered}


def stale_articles(store: Store, updated_before: str, cited_since: str) -> list[dict]:
    """Articles not updated since `updated_before` that answers cited since `cited_since`, with how
    many answers cited each and when last, the most cited first."""
    if not has_knowledge_column(store):
        return []
    citations: Counter[int] = Counter()
    last_cited: dict[int, str] = {}
    for row in store.select("select knowledge, created_at from messages where role = 'bot' "
                            "and knowledge is not null and created_at >= ?", [cited_since]):
        for article_id in cited_articles(_knowledge(row["knowledge"]) or {}):
            citations[article_id] += 1
            last_cited[article_id] = max(last_cited.get(article_id, ""), row["created_at"])
    if not citations:
        return []
    ids = list(citations)
    articles = store.select(
        f"select id, title, url, source, language, updated_at from kb_articles where updated_at < ? "
        f"and id in ({','.join('?' * len(ids))})", [updated_before, *ids])
    out = [{**a, "citations": citations[a["id"]], "last_cited": last_cited[a["id"]]} for a in articles]
    return sorted(out, key=lambda a: (-a["citations"], a["updated_at"], a["id"]))
