"""Bringing help-centre articles in: files, folders, pages and sitemaps, and keeping them current.

A re-import is the normal case, not the first one: operators point Snapdesk at the same folder or
sitemap every week. So each article is known by its source (a file path or a page URL) and the
folder or sitemap it came from; unchanged articles are left alone, changed ones replaced, and the
ones that disappeared from their folder or sitemap removed. A page that cannot be fetched is
reported and never removes what was imported before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from .articles import KnowledgeError, parse_document
from .fetch import FetchLimits, FetchRefused, fetch_page, sitemap_urls
from .index import KnowledgeBase

log = logging.getLogger(__name__)

FILE_TYPES = (".md", ".markdown", ".html", ".htm", ".txt", ".pdf")

Db = Callable[..., Awaitable[Any]]  # runs a store call on the database thread


@dataclass(frozen=True)
class FetchPolicy:
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    limits: FetchLimits = FetchLimits()


@dataclass
class ImportReport:
    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    def count(self, status: str, article_id: int) -> None:
        getattr(self, status).append(article_id)

    def summary(self) -> str:
        text = (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed")
        return text + (f", {len(self.failed)} failed" if self.failed else "")

    def as_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"source": s, "reason": r} for s, r in self.failed]}


def is_url(item: str) -> bool:
    return item.startswith(("http://", "https://"))


def is_sitemap_url(url: str) -> bool:
    path = url.split("?", 1)[0].lower()
    return path.endswith((".xml", ".xml.gz"))


class Importer:
    def __init__(self, kb: KnowledgeBase, db: Db, policy: FetchPolicy = FetchPolicy()) -> None:
        self.kb = kb
        self.db = db
        self.policy = policy

    async def add(self, items: Sequence[str], language: str | None = None) -> ImportReport:
        """Files, folders, page URLs and sitemap URLs, in the order given."""
        report = ImportReport()
        for item in items:
            if is_url(item):
                await (self._sitemap(item, language, report) if is_sitemap_url(item)
                       else self._page(item, language, report))
            elif Path(item).is_dir():
                await self._folder(Path(item), language, report)
            else:
                await self._file(Path(item), language, report, origin="")
        return report

    async def upload(self, name: str, data: bytes, content_type: str | None, language: str | None,
                     report: ImportReport) -> None:
        """A file an operator uploaded from the console (its name is its source)."""
        await self._store(f"upload:{name}", data, name, content_type, language, "", "", report)

    async def sync(self) -> ImportReport:
        """Every folder, sitemap, file and page imported before, again (uploads excepted)."""
        report = ImportReport()
        rows = await self.db(self.kb.articles)
        origins = {row["origin"] for row in rows if row["origin"]}
        singles = {row["source"] for row in rows if not row["origin"] and not row["source"].startswith("upload:")}
        for origin in sorted(origins):
            if is_url(origin):
                await self._sitemap(origin, None, report)
            elif Path(origin).is_dir():
                await self._folder(Path(origin), None, report)
            else:
                report.failed.append((origin, "the folder no longer exists (its articles are kept)"))
        for source in sorted(singles):
            if is_url(source):
                await self._page(source, None, report)
            else:
                await self._file(Path(source), None, report, origin="")
        return report

    # Sources -------------------------------------------------------------------------------
    async def _file(self, path: Path, language: str | None, report: ImportReport, origin: str) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.failed.append((str(path), exc.strerror or str(exc)))
            return
        await self._store(str(path.resolve()), data, path.name, None, language, "", origin, report)

    async def _folder(self, folder: Path, language: str | None, report: ImportReport) -> None:
        origin = str(folder.resolve())
        seen: set[str] = set()
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FILE_TYPES):
            seen.add(str(path.resolve()))
            await self._file(path, language, report, origin)
        report.removed += await self.db(self.kb.remove_missing, origin, seen)

    async def _page(self, url: str, language: str | None, report: ImportReport, origin: str = "") -> bool:
        try:
            page = await fetch_page(url, self.policy.allowed_hosts, allow_private=self.policy.allow_private,
                                    limits=self.policy.limits)
        except FetchRefused as exc:
            report.failed.append((url, str(exc)))
            return False
        name = page.final_url.rstrip("/").rsplit("/", 1)[-1] or page.final_url
        return await self._store(url, page.data, name, page.content_type, language, page.final_url, origin, report)

    async def _sitemap(self, url: str, language: str | None, report: ImportReport) -> None:
        try:
            urls = await sitemap_urls(url, self.policy.allowed_hosts, allow_private=self.policy.allow_private,
                                      limits=self.policy.limits)
        except FetchRefused as exc:
            report.failed.append((url, str(exc)))
            return
        keep: set[str] = set()
        for page_url in urls:
            await self._page(page_url, language, report, origin=url)
            keep.add(page_url)  # a page that failed this time is kept: only a page gone from the sitemap goes
        report.removed += await self.db(self.kb.remove_missing, url, keep)

    async def _store(self, source: str, data: bytes, name: str, content_type: str | None, language: str | None,
                     url: str, origin: str, report: ImportReport) -> bool:
        try:
            document = parse_document(data, name, content_type, language)
        except KnowledgeError as exc:
            report.failed.append((source, str(exc)))
            return False
        outcome = await self.db(self.kb.upsert, source, document, url, origin=origin)
        report.count(outcome.status, outcome.article_id)
        return True
