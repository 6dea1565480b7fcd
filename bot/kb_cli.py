"""`snapdesk kb`: the help centre from the command line (import, list, remove, sync, search).

Search shows exactly what a turn would get: the same query (the text plus what screenshots
show, read by the same OCR) against the same index, with scores, so an operator can see why an
article is or is not found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .settings import Settings

EXIT_USAGE = 2


async def _direct(fn, *args, **kwargs):
    """The command line's database calls run in place: nothing else shares its event loop."""
    return fn(*args, **kwargs)


def _importer(store, settings: Settings):
    from .knowledge.importing import FetchPolicy, Importer
    from .knowledge.index import KnowledgeBase

    policy = FetchPolicy(settings.kb_host_list, settings.kb_allow_private)
    return Importer(KnowledgeBase(store), _direct, policy)


def _print_report(report) -> int:
    print(report.summary())
    for source, reason in report.failed:
        print(f"  failed: {source}: {reason}", file=sys.stderr)
    return 1 if report.failed and not (report.added or report.updated or report.unchanged) else 0


def kb_import(store, settings: Settings, args: argparse.Namespace) -> int:
    for item in args.items:
        if not item.startswith(("http://", "https://")) and not Path(item).exists():
            print(f"snapdesk: {item}: no such file or folder", file=sys.stderr)
            return EXIT_USAGE
    return _print_report(asyncio.run(_importer(store, settings).add(args.items, args.language)))


def kb_sync(store, settings: Settings, args: argparse.Namespace) -> int:
    return _print_report(asyncio.run(_importer(store, settings).sync()))


def kb_list(store, settings: Settings, args: argparse.Namespace) -> int:
    from .knowledge.index import KnowledgeBase

    rows = KnowledgeBase(store).articles()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no articles (import some with: snapdesk kb import PATH|URL...)")
    for row in rows:
        print(f"{row['id']:>5}  {row['language']:<3} {row['chunks']:>3} passages  updated {row['updated_at'][:10]}  "
              f"{row['title']}  ({row['url'] or row['source']})")
    return 0


def kb_remove(store, settings: Settings, args: argparse.Namespace) -> int:
    from .knowledge.index import KnowledgeBase

    if not KnowledgeBase(store).remove(args.id):
        print(f"snapdesk: no article {args.id}", file=sys.stderr)
        return EXIT_USAGE
    print(f"removed article {args.id}")
    return 0


def kb_search(store, settings: Settings, args: argparse.Namespace) -> int:
    from .knowledge.index import KnowledgeBase
    from .knowledge.retrieval import knowledge_query

    evidence = []
    if args.image:
        from engine.ocr import OcrReader

        from .inspect_cli import Refused, read_file

        reader = OcrReader(workers=1, timeout_s=settings.ocr_timeout_s)
        try:
            evidence = [read_file(name, settings, reader)[0].evidence for name in args.image]
        except Refused as exc:
            print(f"snapdesk: {exc}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            reader.close()
    query = knowledge_query(args.text, evidence)
    hits = KnowledgeBase(store).search(query, k=args.k)
    if args.json:
        print(json.dumps([{"article_id": h.article_id, "title": h.title, "url": h.url, "section": h.section,
                           "score": round(h.score, 4), "text": h.text} for h in hits], ensure_ascii=False, indent=2))
        return 0
    print(f"query: {query}")
    if not hits:
        print("nothing found")
    for rank, hit in enumerate(hits, start=1):
        relevant = "" if hit.score >= settings.kb_min_score else "  (below SNAPDESK_KB_MIN_SCORE)"
        print(f"{rank}. {hit.score:7.3f}  [{hit.article_id}] {hit.section}{relevant}")
        print(f"   {' '.join(hit.text.split())[:160]}")
    return 0


def add_parser(commands) -> None:
    kb = commands.add_parser("kb", help="the help centre the bot answers from: import, list, remove, sync, search")
    kb_commands = kb.add_subparsers(dest="kb_command", required=True, metavar="KB_COMMAND")
    imported = kb_commands.add_parser("import", help="import Markdown, HTML, text or PDF files, folders, pages or "
                                      "a sitemap URL (again: changed articles updated, vanished ones removed)")
    imported.add_argument("items", nargs="+", metavar="PATH|URL")
    imported.add_argument("--language", choices=["en", "zh"], help="the articles' language (default: detected)")
    imported.set_defaults(kb=kb_import)
    listing = kb_commands.add_parser("list", help="the articles: id, language, passages, last update, title, source")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(kb=kb_list)
    remove = kb_commands.add_parser("remove", help="remove one article")
    remove.add_argument("id", type=int)
    remove.set_defaults(kb=kb_remove)
    sync = kb_commands.add_parser("sync", help="import every folder, sitemap, file and page imported before, again")
    sync.set_defaults(kb=kb_sync)
    search = kb_commands.add_parser("search", help="the passages a question (and its screenshots) finds, with scores")
    search.add_argument("--image", action="append", metavar="FILE", help="a screenshot whose text joins the query")
    search.add_argument("--json", action="store_true", help="a list of hits: article_id, title, url, section, score, text")
    search.add_argument("-k", type=int, default=5, help="how many passages (default 5)")
    search.add_argument("text", nargs="?", default="")
    search.set_defaults(kb=kb_search)
    for sub in (imported, listing, remove, sync, search):
        sub.add_argument("--data", help="data directory (default: SNAPDESK_DATA_DIR or ./data)")
