"""The help centre's articles as public pages, so every citation can be a link.

An article imported from a file has no address of its own; the answer that cites it still
deserves a link the user can open. `/help/{id}` shows the article as Snapdesk holds it (its
title and passages, as text), with nothing else of Snapdesk on the page. Articles are what a
company publishes to its customers, so the page needs no sign-in; an article that is removed
is gone from here too.
"""

from __future__ import annotations

import html

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from .deps import RuntimeDep

router = APIRouter()

PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 16px/1.6 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif; color: #1f2937;
  max-width: 46rem; margin: 2.5rem auto; padding: 0 1.25rem; }}
h1 {{ font-size: 1.7rem; line-height: 1.25; margin: 0 0 1.5rem; }}
h2 {{ font-size: 1.15rem; margin: 1.75rem 0 .5rem; }}
p {{ margin: 0 0 .9rem; white-space: pre-wrap; }}
</style></head>
<body><article data-testid="article"><h1>{title}</h1>
{body}
</article></body></html>"""


def article_page(article: dict) -> str:
    title = article["title"]
    parts = []
    for chunk in article["chunks"]:
        heading = chunk["section"].split(" > ")[-1] if " > " in chunk["section"] else ""
        if heading and heading != title:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(f"<p>{html.escape(chunk['text'])}</p>")
    return PAGE.format(lang=html.escape(article.get("language") or "en"), title=html.escape(title),
                       body="\n".join(parts))


@router.get("/help/{article_id}", response_class=HTMLResponse, include_in_schema=False)
async def help_article(article_id: int, runtime: RuntimeDep) -> HTMLResponse:
    knowledge = runtime.manager.knowledge
    article = await runtime.manager.db(knowledge.article, article_id) if knowledge is not None else None
    if article is None:
        return HTMLResponse("<!doctype html><title>Not found</title><p>This article does not exist (any more).</p>",
                            status_code=404)
    return HTMLResponse(article_page(article))
