"""The help-centre index: articles, their passages, and BM25 search over them in SQLite FTS5.

It lives in the same database as the conversations, so a backup holds everything and nothing
else has to run. Re-importing a help centre is cheap and safe to repeat: an article is known by
its source (file path or URL), and its content hash decides whether anything is rewritten, so
an unchanged article keeps its passages, their ids and its updated_at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..language import detect_language
from ..store import Store, iso
from . import terms
from .articles import Document, chunks

# bm25() column weights, in the order of kb_chunks_fts's columns: title, section, body, codes.
# Headings say what a passage is about, and a code in a heading (the codes column) most of all:
# "CARD_DECLINED (E-4012)" as a heading beats a passage that mentions E-4012 in passing (the
# body, where codes are also indexed whole).
WEIGHTS = (4.0, 2.0, 1.0, 12.0)
# A passage that names a code from the question (E-4012, 0x80070005) comes before every passage
# that does not, however many of the question's other words those share; its score is raised by
# this much so that scores still read best first.
CODE_MATCH_BONUS = 100.0
# Most articles exist in English and Chinese, and a question names a code the same in both: the
# article in the question's language is preferred by this factor on its BM25 score.
LANGUAGE_BOOST = 1.25
_SEARCH_SQL = """
select c.id as chunk_id, c.article_id, c.section, c.text, a.title, a.url,
       -bm25(kb_chunks_fts, {weights}) * (case when a.language = :language then {boost} else 1.0 end){bonus} as score
from kb_chunks_fts f
join kb_chunks c on c.id = f.rowid
join kb_articles a on a.id = c.article_id
where kb_chunks_fts match :terms
order by {code_first}score desc, c.id
limit :k
"""
_CODE_MATCH = "(f.rowid in (select rowid from kb_chunks_fts where kb_chunks_fts match :codes))"


def search_statement(query: str, k: int) -> tuple[str, dict] | None:
    """The SQL and parameters that search for `query`; None when it has no searchable term."""
    expression = terms.match_expression(query)
    if expression is None:
        return None
    codes = terms.code_expression(query)
    sql = _SEARCH_SQL.format(
        weights=", ".join(map(str, WEIGHTS)),
        boost=LANGUAGE_BOOST,
        bonus=f" + {CODE_MATCH_BONUS} * {_CODE_MATCH}" if codes else "",
        code_first=f"{_CODE_MATCH} desc, " if codes else "",
    )
    params = {"terms": expression, "language": detect_language(query), "k": k}
    return sql, {**params, "codes": codes} if codes else params


_ARTICLES_SQL = """
select a.id, a.title, a.url, a.source, a.origin, a.language, a.content_hash,
       (select count(*) from kb_chunks c where c.article_id = a.id) as chunks, a.imported_at, a.updated_at
from kb_articles a {where}
"""


@dataclass(frozen=True)
class Hit:
    article_id: int
    title: str
    url: str
    section: str
    score: float  # higher is better
    text: str
    chunk_id: int


@dataclass(frozen=True)
class ImportOutcome:
    article_id: int
    status: str  # "added" | "updated" | "unchanged"


def content_hash(document: Document) -> str:
    body = {
        "title": document.title,
        "language": document.language,
        "sections": [[list(section.path), section.text] for section in document.sections],
    }
    return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


class KnowledgeBase:
    """Articles and search on a Store; like the Store, used from the database thread."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _rows(self, sql: str, params: list | dict = ()) -> list[dict]:
        cursor = self.store.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def upsert(self, source: str, document: Document, url: str = "", *, origin: str = "") -> ImportOutcome:
        """Add or refresh one article; `origin` is the folder or sitemap it was imported from."""
        digest = content_hash(document)
        conn = self.store.db.conn
        with self.store.transaction():
            rows = self._rows("select id, content_hash, url, origin from kb_articles where source = ?", [source])
            existing = rows[0] if rows else None
            new_origin = origin or (existing["origin"] if existing else "")
            same = existing and (existing["content_hash"], existing["url"], existing["origin"]) == (digest, url, new_origin)
            if same:
                return ImportOutcome(existing["id"], "unchanged")
            now = iso()
            fields = {"title": document.title, "url": url, "origin": new_origin, "language": document.language,
                      "content_hash": digest, "updated_at": now}
            if existing is None:
                record = {"source": source, "imported_at": now, **fields}
                article_id = conn.execute(
                    f"insert into kb_articles ({', '.join(record)}) values ({', '.join('?' * len(record))})",
                    list(record.values()),
                ).lastrowid
            else:
                article_id = existing["id"]
                assignments = ", ".join(f"{name} = ?" for name in fields)
                conn.execute(f"update kb_articles set {assignments} where id = ?", [*fields.values(), article_id])
                if existing["content_hash"] == digest:
                    return ImportOutcome(article_id, "updated")
                self._delete_chunks(article_id)
            self._insert_chunks(article_id, document)
        return ImportOutcome(article_id, "updated" if existing else "added")

    def _insert_chunks(self, article_id: int, document: Document) -> None:
        conn = self.store.db.conn
        title_terms = terms.segment(document.title)
        prefix = document.title + " > "
        for position, chunk in enumerate(chunks(document)):
            chunk_id = conn.execute(
                "insert into kb_chunks (article_id, position, section, text) values (?, ?, ?, ?)",
                [article_id, position, chunk.section, chunk.text],
            ).lastrowid
            headings = chunk.section[len(prefix) :] if chunk.section.startswith(prefix) else ""
            body = " ".join([terms.segment(chunk.text), *terms.codes(chunk.text)])
            heading_codes = " ".join(terms.codes(f"{document.title}\n{headings}"))
            conn.execute(
                "insert into kb_chunks_fts (rowid, title, section, body, codes) values (?, ?, ?, ?, ?)",
                [chunk_id, title_terms, terms.segment(headings), body, heading_codes],
            )

    def _delete_chunks(self, article_id: int) -> None:
        conn = self.store.db.conn
        conn.execute(
            "delete from kb_chunks_fts where rowid in (select id from kb_chunks where article_id = ?)", [article_id]
        )
        conn.execute("delete from kb_chunks where article_id = ?", [article_id])

    def remove(self, article_id: int) -> bool:
        with self.store.transaction():
            self._delete_chunks(article_id)
            return self.store.db.conn.execute("delete from kb_articles where id = ?", [article_id]).rowcount > 0

    def remove_missing(self, origin: str, keep_sources: set[str]) -> list[int]:
        """Remove the articles imported from `origin` whose source is no longer there."""
        if not origin:
            raise ValueError("remove_missing needs the folder or sitemap the articles were imported from")
        with self.store.transaction():
            imported = self._rows("select id, source from kb_articles where origin = ? order by id", [origin])
            gone = [row["id"] for row in imported if row["source"] not in keep_sources]
            for article_id in gone:
                self.remove(article_id)
        return gone

    def articles(self) -> list[dict]:
        return self._rows(_ARTICLES_SQL.format(where="") + " order by a.title collate nocase, a.id")

    def article(self, article_id: int) -> dict | None:
        found = self._rows(_ARTICLES_SQL.format(where="where a.id = ?"), [article_id])
        if not found:
            return None
        passages = self._rows(
            "select id, section, text from kb_chunks where article_id = ? order by position", [article_id]
        )
        return {**found[0], "chunks": passages}

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The best `k` passages for a question, best first; [] when it has no searchable term."""
        statement = search_statement(query or "", k)
        if statement is None or k <= 0:
            return []
        return [Hit(**row) for row in self._rows(*statement)]
