"""The operator console's Knowledge tab: the help centre the bot answers from, and how it does.

Operators import articles (uploads, pages, sitemaps), read and remove them, and re-sync what
came from folders and sites. "Test retrieval" shows what a turn would get for a question and its
screenshots: the same query (screenshots read by the same OCR as `snapdesk kb search`), the same
index and the same cut at SNAPDESK_KB_MIN_SCORE and the prompt's budget, so an operator sees why
an article is or is not found. Gaps and stale articles say what to write or refresh next.

Operators and admins only; every change is audited with its author.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, HTTPException, Request

from engine.images import ImageRejected

from .. import knowledge_reports
from ..inspect_cli import inspect_one
from ..knowledge.fetch import FetchLimits
from ..knowledge.importing import FetchPolicy, Importer, ImportReport, is_url
from ..knowledge.index import KnowledgeBase
from ..knowledge.retrieval import fit_passages, knowledge_query
from ..messages import utcnow
from ..runtime import Runtime
from ..store import iso
from .deps import RuntimeDep
from .operator_console import OperatorSession
from .params import Days, RowId

router = APIRouter(tags=["operator console: knowledge"])
PREFIX = "/operator/api/knowledge"
MAX_IMPORT_FILES = 20
MAX_IMPORT_URLS = 50
MAX_SEARCH_IMAGES = 4
MAX_URL_CHARS = 2000
LANGUAGES = ("en", "zh")
CITED_DAYS = 30  # how far back citations make a stale article worth refreshing


def _kb(runtime: Runtime) -> KnowledgeBase:
    return KnowledgeBase(runtime.store)


def _importer(runtime: Runtime) -> Importer:
    settings = runtime.settings
    return Importer(_kb(runtime), runtime.manager.db, FetchPolicy(settings.kb_host_list, settings.kb_allow_private))


def _bad_request(error: str, message: str) -> HTTPException:
    return HTTPException(400, detail={"error": error, "message": message})


def _not_found() -> HTTPException:
    return HTTPException(404, detail={"error": "not_found", "message": "No such article. It may have been removed."})


def _source_kind(article: dict) -> str:
    if article["source"].startswith("upload:"):
        return "upload"
    return "page" if is_url(article["source"]) else "file"


def _describe(article: dict, stale_before: str) -> dict:
    return {**article, "source_kind": _source_kind(article),
            "status": "stale" if article["updated_at"] < stale_before else "current"}


def _stale_before(runtime: Runtime) -> str:
    return iso(utcnow() - timedelta(days=runtime.settings.kb_stale_days))


async def _audited(runtime: Runtime, session, action: str, target: str, report: ImportReport) -> dict:
    await runtime.manager.db(runtime.store.audit, session.user.name, action, target, summary=report.summary(),
                             failed=len(report.failed))
    return {"summary": report.summary(), **report.as_dict()}


@router.get(f"{PREFIX}/articles", summary="The help centre's articles: passages, language, source, last update")
async def list_articles(runtime: RuntimeDep, session: OperatorSession) -> dict:
    rows = await runtime.manager.db(_kb(runtime).articles)
    stale_before = _stale_before(runtime)
    return {"articles": [_describe(row, stale_before) for row in rows], "stale_days": runtime.settings.kb_stale_days,
            "min_score": runtime.settings.kb_min_score}


@router.get(f"{PREFIX}/articles/{{article_id}}", summary="One article and its passages")
async def get_article(article_id: RowId, runtime: RuntimeDep, session: OperatorSession) -> dict:
    article = await runtime.manager.db(_kb(runtime).article, article_id)
    if article is None:
        raise _not_found()
    return _describe(article, _stale_before(runtime))


@router.delete(f"{PREFIX}/articles/{{article_id}}", summary="Remove an article (a later sync of its folder or "
               "sitemap brings it back while it is still there)")
async def remove_article(article_id: RowId, runtime: RuntimeDep, session: OperatorSession) -> dict:
    kb = _kb(runtime)

    def apply() -> bool:
        article = kb.article(article_id)
        if article is None or not kb.remove(article_id):
            return False
        runtime.store.audit(session.user.name, "kb_remove", f"article:{article_id}", title=article["title"],
                            source=article["source"])
        return True

    if not await runtime.manager.db(apply):
        raise _not_found()
    return {"ok": True}


def _language(value: object) -> str | None:
    language = str(value or "").strip()
    if language in ("", "auto"):
        return None
    if language not in LANGUAGES:
        raise _bad_request("bad_language", "The language must be English (en), Chinese (zh) or detected (auto).")
    return language


def _urls(text: str) -> list[str]:
    urls = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if len(urls) > MAX_IMPORT_URLS:
        raise _bad_request("too_many_urls", f"At most {MAX_IMPORT_URLS} URLs at once: give a sitemap URL instead.")
    return urls


def _upload_name(filename: str | None) -> str:
    """The file's own name: browsers may send a path, and a name is all the article keeps of it."""
    return PurePosixPath((filename or "").replace("\\", "/")).name[:200]


@router.post(f"{PREFIX}/import", summary="Import uploaded files and page or sitemap URLs")
async def import_articles(request: Request, runtime: RuntimeDep, session: OperatorSession) -> dict:
    form = await request.form(max_files=MAX_IMPORT_FILES + 1, max_fields=10)
    language = _language(form.get("language"))
    uploads = [v for k, v in form.multi_items() if k == "files" and hasattr(v, "read") and v.filename]
    if len(uploads) > MAX_IMPORT_FILES:
        raise _bad_request("too_many_files", f"At most {MAX_IMPORT_FILES} files at once.")
    given = _urls(str(form.get("urls") or ""))
    if not uploads and not given:
        raise _bad_request("empty", "Choose files to upload or enter page or sitemap URLs.")
    urls, refused = [], []
    for url in given:
        if len(url) > MAX_URL_CHARS or not is_url(url):
            refused.append((url[:200], "is not an http:// or https:// URL"))
        else:
            urls.append(url)
    importer = _importer(runtime)
    report = await importer.add(urls, language)
    report.failed[:0] = refused
    limit = FetchLimits().max_bytes
    for upload in uploads:
        name = _upload_name(upload.filename)
        if upload.size is not None and upload.size > limit:
            report.failed.append((name, f"is too large ({upload.size / 1024 / 1024:.1f} MB; the limit is "
                                        f"{limit // 1024 // 1024} MB)"))
            continue
        await importer.upload(name, await upload.read(), upload.content_type, language, report)
    return await _audited(runtime, session, "kb_import", "knowledge", report)


@router.post(f"{PREFIX}/sync", summary="Import every folder, sitemap, file and page imported before, again")
async def sync_articles(runtime: RuntimeDep, session: OperatorSession) -> dict:
    report = await _importer(runtime).sync()
    return await _audited(runtime, session, "kb_sync", "knowledge", report)


def _evidence_of(data: bytes, runtime: Runtime):
    """What a screenshot shows, read exactly as `snapdesk kb search --image` reads it."""
    with tempfile.TemporaryDirectory(prefix="snapdesk-kb-") as folder:
        path = Path(folder) / "screenshot"
        path.write_bytes(data)
        reading, _ = inspect_one(path, runtime.settings, runtime.manager.screenshots.reader)
    return reading.evidence


def _ranked(runtime: Runtime, query: str) -> list[dict]:
    """The hits a turn's search gets, best first, each with its number in the prompt if it gets one."""
    settings = runtime.settings
    hits = _kb(runtime).search(query, k=settings.kb_passages * 3)
    given = fit_passages(hits, settings.kb_tokens, runtime.engine.count_text_tokens, settings.kb_min_score)
    numbers = {p.hit.chunk_id: p.number for p in given[: settings.kb_passages]}
    return [{"rank": rank, "chunk_id": hit.chunk_id, "article_id": hit.article_id, "title": hit.title,
             "url": hit.url, "section": hit.section, "score": round(hit.score, 4), "text": hit.text,
             "below_min_score": hit.score < settings.kb_min_score, "prompt_number": numbers.get(hit.chunk_id)}
            for rank, hit in enumerate(hits, start=1)]


@router.post(f"{PREFIX}/search", summary="The passages a question and its screenshots find, as a turn gets them")
async def search(request: Request, runtime: RuntimeDep, session: OperatorSession) -> dict:
    settings = runtime.settings
    form = await request.form(max_files=MAX_SEARCH_IMAGES + 1, max_part_size=settings.image_max_bytes + 1)
    question = str(form.get("question") or "")[: settings.widget_max_text_chars]
    uploads = [v for k, v in form.multi_items() if k == "screenshots" and hasattr(v, "read") and v.filename]
    if len(uploads) > MAX_SEARCH_IMAGES:
        raise HTTPException(413, detail={"error": "too_many_images",
                                         "message": f"At most {MAX_SEARCH_IMAGES} screenshots."})
    if not question.strip() and not uploads:
        raise _bad_request("empty", "Type a question or add a screenshot.")
    reading = settings.ocr and runtime.manager.screenshots.reader is not None
    evidence = []
    for upload in uploads if reading else []:
        try:
            evidence.append(await asyncio.to_thread(_evidence_of, await upload.read(), runtime))
        except ImageRejected as exc:
            raise _bad_request(exc.reason, f"{_upload_name(upload.filename)}: {exc.message()}") from None
    query = knowledge_query(question, evidence)
    note = ""
    if uploads and not reading:
        note = "Screenshots are not read on this server (SNAPDESK_OCR=off): only the question was searched."
    return {
        "query": query,
        "note": note,
        "screenshots": [{"name": _upload_name(u.filename), **e.as_dict()} for u, e in zip(uploads, evidence)],
        "min_score": settings.kb_min_score,
        "passages": await runtime.manager.db(_ranked, runtime, query) if query else [],
    }


@router.get(f"{PREFIX}/gaps", summary="Questions the help centre had no answer for, by error code and screen")
async def gaps(runtime: RuntimeDep, session: OperatorSession, days: Days = 30) -> dict:
    since = iso(utcnow() - timedelta(days=days))
    report = await runtime.manager.db(knowledge_reports.knowledge_gaps, runtime.store, since,
                                      runtime.settings.kb_min_score)
    return {"days": days, "min_score": runtime.settings.kb_min_score, **report}


@router.get(f"{PREFIX}/stale", summary="Articles not updated for SNAPDESK_KB_STALE_DAYS that answers still cite")
async def stale(runtime: RuntimeDep, session: OperatorSession) -> dict:
    cited_since = iso(utcnow() - timedelta(days=CITED_DAYS))
    articles = await runtime.manager.db(knowledge_reports.stale_articles, runtime.store, _stale_before(runtime),
                                        cited_since)
    return {"stale_days": runtime.settings.kb_stale_days, "cited_days": CITED_DAYS, "articles": articles}
