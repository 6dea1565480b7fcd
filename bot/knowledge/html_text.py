"""The readable part of a help-centre page: its headings and paragraphs, nothing of the site around it.

A page carries menus, footers, cookie banners and scripts that would otherwise be indexed on every
article and match every question. They are dropped; where the page marks its content with
<main> or <article>, only that is kept. Markdown is rendered to HTML first, so both formats are
read by this one walker.
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

_SKIPPED = {
    "script", "style", "noscript", "template", "svg", "nav", "footer", "aside", "form", "iframe", "button", "select",
}
_CONTENT = {"main", "article"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "li", "ul", "ol", "dl", "dt", "dd", "table", "thead",
    "tbody", "tr", "pre", "blockquote", "figure", "figcaption", "br", "hr", "details", "summary", "body",
}
_CELLS = {"td", "th"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass(frozen=True)
class Block:
    """One heading (level 1-6) or paragraph (level 0) of the page, whitespace normalised."""

    level: int
    text: str
    in_content: bool  # inside <main> or <article>


class _Walker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title_parts: list[str] = []
        self._buffer: list[str] = []
        self._heading = 0
        self._in_title = False
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._content_depth = 0
        self._row_has_cell = False

    def _flush(self) -> None:
        text = " ".join("".join(self._buffer).split())
        self._buffer = []
        if text:
            self.blocks.append(Block(self._heading, text, self._content_depth > 0))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            self._skip_depth += tag == self._skip_tag
            return
        if tag == "title":
            self._in_title = True
            return
        hidden = any(name == "hidden" or (name == "aria-hidden" and value == "true") for name, value in attrs)
        if tag in _SKIPPED or (hidden and tag not in _VOID):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in _HEADINGS or tag in _BLOCKS:
            self._flush()
            if tag in _HEADINGS:
                self._heading = _HEADINGS[tag]
        if tag in _CONTENT:
            self._content_depth += 1
        if tag == "tr":
            self._row_has_cell = False
        elif tag in _CELLS:
            if self._row_has_cell:
                self._buffer.append(" | ")
            self._row_has_cell = True

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag == "title":
            self._in_title = False
            return
        if tag in _HEADINGS or tag in _BLOCKS:
            self._flush()
            if tag in _HEADINGS:
                self._heading = 0
        if tag in _CONTENT and self._content_depth:
            self._content_depth -= 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in _BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif self._skip_tag is None:
            self._buffer.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


@dataclass(frozen=True)
class Page:
    blocks: list[Block]  # only those in <main>/<article> when the page has any
    first_h1: str  # the first <h1> anywhere, even outside <main> (the article's title)
    title: str  # the <title> text


def read_html(html: str) -> Page:
    walker = _Walker()
    walker.feed(html)
    walker.close()
    content = [block for block in walker.blocks if block.in_content]
    first_h1 = next((block.text for block in walker.blocks if block.level == 1), "")
    return Page(content or walker.blocks, first_h1, " ".join("".join(walker.title_parts).split()))
