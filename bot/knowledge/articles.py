"""Help-centre articles as Snapdesk reads them: a title, a language and sections under headings.

Operators bring their articles as Markdown files, exported HTML pages, plain text or PDFs. Each is
reduced to the same shape, so the index and the prompt never care where an article came from, and
cut into passages small enough to quote in a prompt, each labelled with the headings above it so
an answer can cite "Billing > Refunds > Card payments" rather than a file name.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import yaml
from markdown_it import MarkdownIt

from ..language import detect_language
from .html_text import Block, read_html


class KnowledgeError(Exception):
    """An article cannot be imported; the message says why in words an operator can act on."""


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]  # headings inside the article, the title excluded
    text: str  # paragraphs separated by blank lines, whitespace inside them normalised


@dataclass(frozen=True)
class Document:
    title: str
    language: str
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class Chunk:
    section: str  # "Title > Section > Subsection"
    text: str


MARKDOWN, HTML, TEXT, PDF = "Markdown", "HTML", "text", "PDF"
_MARKDOWN_TYPES = {"text/markdown", "text/x-markdown"}
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([\w.:-]+)""", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])")
_markdown = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def parse_document(data: bytes, name: str, content_type: str | None = None, language: str | None = None) -> Document:
    """Read one article; `name` is its file name or URL (its extension and stem are used)."""
    kind = _kind(data, name, content_type)
    stem = _stem(name)
    if kind == PDF:
        title, sections = _read_pdf(data, name, stem)
    else:
        text = _decode(data, content_type, kind)
        if kind == TEXT:
            title, sections = stem, _sections([Block(0, paragraph, False) for paragraph in _paragraphs(text)])
        elif kind == MARKDOWN:
            front_title, text = _front_matter(text)
            page = read_html(_markdown.render(text))
            title = page.first_h1 or front_title or stem
            sections = _sections(page.blocks, title)
        else:
            page = read_html(text)
            title = page.first_h1 or page.title or stem
            sections = _sections(page.blocks, title)
    if not sections:
        raise KnowledgeError(f"{name} has no text to import.")
    if not language:
        language = detect_language(title + " " + " ".join(section.text for section in sections)[:2000])
    return Document(title=title, language=language, sections=tuple(sections))


def chunks(document: Document, max_chars: int = 1200) -> list[Chunk]:
    """Passages of at most `max_chars`: one per section, a long section split between paragraphs
    (a paragraph longer than that between sentences, a sentence between words)."""
    result: list[Chunk] = []
    for section in document.sections:
        label = " > ".join((document.title, *section.path))
        pieces = [piece for paragraph in section.text.split("\n\n") for piece in _split_long(paragraph, max_chars)]
        for text in _pack(pieces, max_chars, "\n\n"):
            result.append(Chunk(section=label, text=text))
    return result


def _kind(data: bytes, name: str, content_type: str | None) -> str:
    mime = (content_type or "").split(";")[0].strip().lower()
    extension = PurePosixPath(urlsplit(name).path or name).suffix.lower()
    if mime == "application/pdf" or extension == ".pdf" or data.startswith(b"%PDF-"):
        return PDF
    if mime in _HTML_TYPES:
        return HTML
    if mime in _MARKDOWN_TYPES or extension in (".md", ".markdown"):
        return MARKDOWN
    if extension in (".html", ".htm", ".xhtml"):
        return HTML
    if mime == "text/plain" or extension == ".txt":
        return TEXT
    if not mime and not extension and data.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return HTML
    described = f" ({mime})" if mime else ""
    raise KnowledgeError(f"{name}{described} is not a Markdown, HTML, text or PDF file.")


def _stem(name: str) -> str:
    path = PurePosixPath(unquote(urlsplit(name).path) or name)
    return path.stem or urlsplit(name).netloc or name


def _decode(data: bytes, content_type: str | None, kind: str) -> str:
    """Text in the charset the server or the page names, else UTF-8, else GB18030 (Chinese sites)."""
    declared = re.search(r"charset=[\"']?([\w.:-]+)", content_type or "", re.IGNORECASE)
    if declared is None and kind == HTML:
        declared = _META_CHARSET.search(data[:4096])
    candidates = [declared.group(1) if declared else None, "utf-8-sig", "gb18030"]
    for encoding in filter(None, candidates):
        if isinstance(encoding, bytes):
            encoding = encoding.decode("ascii")
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("utf-8", errors="replace")


def _front_matter(text: str) -> tuple[str, str]:
    """A Markdown file's YAML front matter title (if any) and its text without the front matter."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return "", text
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        meta = None
    title = meta.get("title") if isinstance(meta, dict) else None
    return (" ".join(str(title).split()) if title else ""), text[match.end() :]


def _paragraphs(text: str) -> list[str]:
    paragraphs = (" ".join(part.split()) for part in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")))
    return [paragraph for paragraph in paragraphs if paragraph]


def _sections(blocks: list[Block], title: str = "") -> list[Section]:
    """Sections from headings and paragraphs; the heading that is the title opens no section."""
    sections: list[Section] = []
    headings: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    title_seen = not title

    def close() -> None:
        if paragraphs:
            sections.append(Section(tuple(text for _, text in headings), "\n\n".join(paragraphs)))
            paragraphs.clear()

    for block in blocks:
        if block.level == 0:
            paragraphs.append(block.text)
            continue
        close()
        if block.level == 1 and not title_seen and block.text == title:
            title_seen = True
            headings.clear()
            continue
        while headings and headings[-1][0] >= block.level:
            headings.pop()
        headings.append((block.level, block.text))
    close()
    return sections


def _read_pdf(data: bytes, name: str, stem: str) -> tuple[str, list[Section]]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as exc:  # pypdf raises many kinds of error on damaged or protected files
        raise KnowledgeError(f"{name} could not be read as a PDF ({exc}).") from None
    paragraphs = [paragraph for page in pages for paragraph in _paragraphs(page)]
    if not paragraphs:
        raise KnowledgeError(
            f"{name} has no text layer (a scanned PDF?): export it with its text, or import the article as "
            "Markdown, HTML or text."
        )
    return (" ".join(title.split()) or stem), _sections([Block(0, paragraph, False) for paragraph in paragraphs])


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    sentences = [sentence for sentence in _SENTENCE_END.split(paragraph) if sentence.strip()]
    pieces: list[str] = []
    for sentence in sentences:
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > max_chars // 2 else max_chars
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return _pack(pieces, max_chars, " ")


def _pack(pieces: list[str], max_chars: int, joiner: str) -> list[str]:
    """Consecutive pieces joined while they fit in `max_chars`."""
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + len(joiner) + len(piece) <= max_chars:
            packed[-1] += joiner + piece
        else:
            packed.append(piece)
    return packed
