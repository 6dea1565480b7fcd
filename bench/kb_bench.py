"""Help-centre retrieval: does a turn's search bring back the article that answers it, and how fast.

A turn quotes the best passages of its search in the prompt, so an article that is not among the
first few distinct articles is as good as missing. Recall at 3 is measured on labelled questions
against the sample help centre (prompts/knowledge): a question counts when one of its labelled
articles is among the top three distinct articles. Screenshot questions are searched the way a
turn searches them, with the query built from the OCR evidence and the message, so the figure
covers reading and retrieval together. Tests and `make bench` share this one scoring.

Speed is measured where it hurts: search over 10,000 passages (the sample articles padded with
generated ones in both languages), and importing pages over HTTP through the same checked fetch
an operator's sitemap goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from bot.knowledge import terms
from bot.knowledge.articles import Document, Section
from bot.knowledge.importing import FetchPolicy, Importer
from bot.knowledge.index import KnowledgeBase
from bot.knowledge.retrieval import knowledge_query
from bot.settings import Settings
from bot.store import Store
from engine.evidence import Evidence

from .figures import Figure

ROOT = Path(__file__).resolve().parent.parent
HELP_CENTRE = ROOT / "prompts" / "knowledge"
QUESTIONS = ROOT / "bench" / "data" / "kb_questions.jsonl"
TOP = 3
SEARCH_DEPTH = 30  # passages searched to find the top distinct articles (one article has several)
INDEX_PASSAGES = 10_000
TIMED_QUERIES = 200
IMPORTED_PAGES = 200


@dataclass(frozen=True)
class Question:
    id: str
    language: str
    text: str
    screenshot: str | None  # a screenshot corpus sample's name
    articles: tuple[str, ...]  # file names in the help centre, any of which answers it


@dataclass(frozen=True)
class Answer:
    question: Question
    query: str
    found: tuple[str, ...]  # the top distinct articles, best first

    @property
    def rank(self) -> int | None:
        """1 for the best article, up to TOP; None when no labelled article is among them."""
        return next((n for n, name in enumerate(self.found, start=1) if name in self.question.articles), None)

    @property
    def hit(self) -> bool:
        return self.rank is not None


def questions() -> list[Question]:
    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Question(r["id"], r["language"], r["text"], r["screenshot"], tuple(r["articles"])) for r in rows]


async def direct(fn, *args, **kwargs):
    """The Importer's database runner when the store is used from this thread only."""
    return fn(*args, **kwargs)


def import_help_centre(kb: KnowledgeBase) -> dict[int, str]:
    """Import the sample help centre; article id -> file name."""
    report = asyncio.run(Importer(kb, direct).add([str(HELP_CENTRE)]))
    assert not report.failed, report.failed
    return {row["id"]: Path(row["source"]).name for row in kb.articles()}


def top_articles(kb: KnowledgeBase, names: Mapping[int, str], query: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for hit in kb.search(query, k=SEARCH_DEPTH):
        found.setdefault(names.get(hit.article_id, f"#{hit.article_id}"), None)
    return tuple(found)[:TOP]


def answer(kb: KnowledgeBase, names: Mapping[int, str], question: Question,
           evidence: Mapping[str, Evidence] | None = None) -> Answer:
    """One question searched as a turn searches it: its screenshot's evidence first, then its text."""
    shown = [evidence[question.screenshot]] if evidence and question.screenshot else []
    query = knowledge_query(question.text, shown)
    return Answer(question, query, top_articles(kb, names, query))


def recall(answers: Sequence[Answer], at: int = TOP) -> float:
    return sum(a.hit and a.rank <= at for a in answers) / max(1, len(answers))


def read_evidence(names: Iterable[str], reader) -> dict[str, Evidence]:
    """Each screenshot sample read once, as a conversation reads it."""
    from .screenshot_corpus import sample
    from .screenshot_eval import read_sample

    return {name: read_sample(sample(name), reader)[0].evidence for name in sorted(set(names))}


@contextlib.contextmanager
def temporary_kb() -> Iterator[KnowledgeBase]:
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder))
        try:
            yield KnowledgeBase(store)
        finally:
            store.close()


@contextlib.contextmanager
def segmenter(name: str) -> Iterator[None]:
    """Index and query with another Chinese segmenter (the index must be built inside)."""
    chosen = terms.SEGMENTER
    terms.SEGMENTER = name
    try:
        yield
    finally:
        terms.SEGMENTER = chosen


def answer_all(kb: KnowledgeBase, labelled: Sequence[Question],
               evidence: Mapping[str, Evidence] | None = None) -> list[Answer]:
    names = import_help_centre(kb)
    return [answer(kb, names, q, evidence) for q in labelled]


# The relevance threshold ------------------------------------------------------------------------
OFF_TOPIC = ROOT / "bench" / "data" / "kb_offtopic.jsonl"
KEPT_SHARE = 0.95  # the threshold keeps the right article's best passage for this share of answerable questions


def best_scores(kb: KnowledgeBase, names: Mapping[int, str], labelled: Sequence[Question]) -> tuple[list, list]:
    """The right article's best passage score for each text question, and the best score any
    passage reaches for each off-topic question (0 when nothing matches)."""
    answerable = []
    for question in labelled:
        if question.screenshot:
            continue
        hits = kb.search(knowledge_query(question.text), k=SEARCH_DEPTH)
        answerable.append(max((h.score for h in hits if names.get(h.article_id) in question.articles), default=0.0))
    off_topic = []
    for line in OFF_TOPIC.read_text(encoding="utf-8").splitlines():
        hits = kb.search(knowledge_query(json.loads(line)["text"]), k=5)
        off_topic.append(max((h.score for h in hits), default=0.0))
    return sorted(answerable), sorted(off_topic)


def calibrated_threshold(answerable: Sequence[float]) -> float:
    """The highest score (in halves) that still keeps KEPT_SHARE of the answerable questions."""
    index = int(len(answerable) * (1 - KEPT_SHARE))
    return math.floor(answerable[index] * 2) / 2


# Speed ----------------------------------------------------------------------------------------
_EN_WORDS = ("account card payment order invoice refund plan router light update error code password "
             "delivery parcel tracking renewal subscription bank app settings restart cable network wifi "
             "email address phone receipt charge fee month member sign verify reset locked slow connect").split()
_ZH_WORDS = ("账号 银行卡 支付 订单 发票 退款 套餐 路由器 指示灯 更新 错误 密码 快递 包裹 物流 续费 会员 "
             "设置 重启 网线 网络 邮箱 手机 收据 扣款 费用 每月 登录 验证 重置 锁定 网速 连接 客服").split()


def filler(count: int, seed: int = 7) -> list[Document]:
    """Generated articles of ten one-passage sections, half English and half Chinese."""
    rng = random.Random(seed)
    documents = []
    for n in range(0, count, 10):
        words, joiner, language = (_EN_WORDS, " ", "en") if n % 20 == 0 else (_ZH_WORDS, "", "zh")
        sections = tuple(
            Section((joiner.join(rng.sample(words, 3)),),
                    joiner.join(rng.choice(words) for _ in range(40)) + f" R{rng.randrange(1000)}.")
            for _ in range(min(10, count - n))
        )
        documents.append(Document(f"Filler {n} {joiner.join(rng.sample(words, 2))}", language, sections))
    return documents


def search_ms(kb: KnowledgeBase, queries: Sequence[str]) -> list[float]:
    """Each query's search time over INDEX_PASSAGES passages, the sample help centre among them."""
    have = kb.store.db.execute("select count(*) from kb_chunks").fetchone()[0]
    for document in filler(INDEX_PASSAGES - have):
        kb.upsert(f"filler:{document.title}", document)
    assert kb.store.db.execute("select count(*) from kb_chunks").fetchone()[0] == INDEX_PASSAGES
    timed = []
    for n in range(TIMED_QUERIES):
        started = time.perf_counter()
        kb.search(queries[n % len(queries)], k=SEARCH_DEPTH)
        timed.append((time.perf_counter() - started) * 1000)
    return timed


def _page(n: int) -> bytes:
    words = " ".join(_EN_WORDS[(n + i) % len(_EN_WORDS)] for i in range(120))
    return (f"<!doctype html><html><head><title>Page {n}</title></head><body><nav>Home | Help</nav><main>"
            f"<h1>Help page {n}</h1><h2>What happened</h2><p>{words}.</p><h2>What to do</h2><p>{words}.</p>"
            "</main></body></html>").encode()


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        body = self.pages.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/xml" if self.path.endswith(".xml") else "text/html")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *_args) -> None:
        return None


def import_pages_per_s(count: int = IMPORTED_PAGES) -> float:
    """Pages per second imported from a sitemap on a local server, fetched, parsed and indexed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    base = f"http://127.0.0.1:{server.server_port}"
    pages = {f"/help/{n}.html": _page(n) for n in range(count)}
    urls = "".join(f"<url><loc>{base}{path}</loc></url>" for path in pages)
    pages["/sitemap.xml"] = (f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                             f"{urls}</urlset>").encode()
    _Pages.pages = pages
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with temporary_kb() as kb:
            importer = Importer(kb, direct, FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private=True))
            started = time.perf_counter()
            report = asyncio.run(importer.add([f"{base}/sitemap.xml"]))
            elapsed = time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()
    assert len(report.added) == count and not report.failed, report.summary()
    return count / elapsed


# The figures ----------------------------------------------------------------------------------
def _recall_figure(name: str, answers: Sequence[Answer], keep: Callable[[Question], bool], target: str,
                   what: str) -> Figure:
    kept = [a for a in answers if keep(a.question)]
    return Figure(name, round(recall(kept), 3), target, f"{what} ({len(kept)} questions)")


def _misses(answers: Sequence[Answer]) -> None:
    for a in answers:
        if not a.hit:
            print(f"miss {a.question.id} [{a.question.language}] {a.query!r}: want {', '.join(a.question.articles)}"
                  f"; got {', '.join(a.found) or 'nothing'}")


def run() -> list[Figure]:
    from engine.ocr import OcrReader

    labelled = questions()
    reader = OcrReader(workers=1)
    reader.load()
    try:
        evidence = read_evidence((q.screenshot for q in labelled if q.screenshot), reader)
    finally:
        reader.close()
    chinese = [q for q in labelled if q.language == "zh"]
    by_segmenter = {}
    for name in (terms.JIEBA, terms.BIGRAM):
        with segmenter(name), temporary_kb() as kb:
            by_segmenter[name] = answer_all(kb, chinese, evidence)
    with temporary_kb() as kb:
        answers = answer_all(kb, labelled, evidence)
        timed = search_ms(kb, [a.query for a in answers if a.query])
    with temporary_kb() as kb:
        answerable, off_topic = best_scores(kb, import_help_centre(kb), labelled)
    threshold = calibrated_threshold(answerable)
    default = Settings.model_fields["kb_min_score"].default
    _misses(answers)
    pages_per_s = import_pages_per_s()
    return [
        _recall_figure("kb_recall_at_3", answers, lambda q: True, ">= 0.90",
                       "questions with a labelled article among the top 3 articles found"),
        _recall_figure("kb_recall_at_3_screenshot_only", answers, lambda q: q.screenshot is not None, ">= 0.85",
                       "the same for questions with a screenshot, searched by its OCR evidence and the text"),
        _recall_figure("kb_recall_at_3_zh", answers, lambda q: q.language == "zh", ">= 0.90",
                       f"the same for questions in Chinese ({terms.SEGMENTER} segmentation, the one in use)"),
        *(Figure(f"kb_recall_at_{at}_zh_{name}", round(recall(found, at), 3), "",
                 f"Chinese questions, recall at {at} with the index and the query cut by {name}")
          for at in (TOP, 1) for name, found in by_segmenter.items()),
        Figure("kb_min_score_calibrated", threshold, "",
               f"the relevance threshold that keeps the right article for {KEPT_SHARE:.0%} of the "
               f"{len(answerable)} text questions (SNAPDESK_KB_MIN_SCORE defaults to {default:g})"),
        Figure("kb_offtopic_rejected", round(sum(s < default for s in off_topic) / len(off_topic), 3), "",
               f"share of {len(off_topic)} off-topic questions (weather, recipes, poems; en and zh) with no passage "
               f"reaching SNAPDESK_KB_MIN_SCORE: what require_knowledge hands over"),
        Figure("kb_answerable_kept", round(sum(s >= default for s in answerable) / len(answerable), 3), "",
               "share of the text questions whose right article reaches SNAPDESK_KB_MIN_SCORE"),
        Figure("kb_search_ms_p95", round(statistics.quantiles(timed, n=20)[-1], 2), "<= 50",
               f"95th percentile of {len(timed)} searches over {INDEX_PASSAGES:,} passages (the labelled queries)"),
        Figure("kb_import_pages_per_s", round(pages_per_s, 1), "",
               f"HTML pages of a local sitemap fetched, read and indexed per second ({IMPORTED_PAGES} pages)"),
    ]
