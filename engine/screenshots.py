"""One screenshot read end to end: its text, the personal data painted out, the evidence.

The same steps serve a conversation's screenshots, `snapdesk inspect` and the benchmarks, so
what an operator sees on the command line is what agents and the model get. The OCR itself is
given (rows already read, or None when OCR is off or failed): everything here is quick,
deterministic and needs no model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from PIL import Image

from .evidence import Evidence, extract_evidence
from .images import ImageLimits, fit_to_budget
from .readability import Readability, measure
from .redaction import Redaction, masked_text, paint
from .sensitive import KINDS, Finding, find_sensitive
from .text_rows import TextRow

# Screenshots are read at up to this many pixels (a 1080p capture or a phone screen at full
# size), then stored at the model's budget: small text that the budget would blur is read first.
READ_PIXELS = 2560 * 1440
MIN_LINE_SCORE = 0.75  # a line read with less confidence is a guess (a thumbnail's smudge read as "三")


def reading_limits(limits: ImageLimits) -> ImageLimits:
    """The intake limits for a screenshot that is read before it is stored."""
    return replace(limits, max_pixels=max(limits.max_pixels, READ_PIXELS))


@dataclass(frozen=True)
class ScreenshotReading:
    image: Image.Image  # what may be stored and shown: redacted when anything was found
    lines: tuple[dict, ...]  # {"text", "box", "score"}, the text with personal data masked
    evidence: Evidence
    redactions: tuple[Redaction, ...]
    readability: Readability
    ocr: bool  # False when the text could not be read (OCR off, failed or timed out)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(line["text"] for line in self.lines)

    @property
    def unreadable(self) -> bool:
        """No text read with confidence and too little detail for anyone to read: ask for a
        clearer one. (A clear photo without text, such as a router's lights, is readable.)"""
        confident = [line for line in self.lines if line["score"] >= MIN_LINE_SCORE and len(line["text"].strip()) >= 2]
        return self.ocr and not confident and not self.readability.detailed

    def details(self) -> dict:
        """What is stored beside the attachment (JSON-able; nothing sensitive in it)."""
        return {
            "ocr": self.ocr,
            "unreadable": self.unreadable,
            "lines": list(self.lines),
            "evidence": self.evidence.as_dict(),
            "redactions": [r.as_dict() for r in self.redactions],
            "readability": self.readability.as_dict(),
            "timings": self.timings,
        }


def _scaled_box(box, factor: float) -> list[int]:
    return [round(v * factor) for v in box]


def fit_reading(reading: ScreenshotReading, max_pixels: int) -> ScreenshotReading:
    """The reading of an image read larger than the model's budget, brought down to it (the
    personal data was painted out at the larger size, so none survives the resampling)."""
    image = fit_to_budget(reading.image, max_pixels)
    if image.size == reading.image.size:
        return reading
    factor = image.width / reading.image.width
    lines = tuple({**line, "box": _scaled_box(line["box"], factor)} for line in reading.lines)
    redactions = tuple(
        Redaction(r.kind, tuple(_scaled_box(r.box, factor)), r.last4) for r in reading.redactions  # type: ignore[arg-type]
    )
    return replace(reading, image=image, lines=lines, redactions=redactions)


def read_screenshot(
    image: Image.Image, rows: Sequence[TextRow] | None, kinds: Iterable[str] = KINDS, *, redact: bool = True,
    ocr_ms: float = 0.0,
) -> ScreenshotReading:
    started = time.perf_counter()
    readability = measure(image)
    if rows is None:
        return ScreenshotReading(image, (), Evidence(), (), readability, False, {"ocr_ms": round(ocr_ms, 1)})
    texts = [row.text for row in rows]
    findings = find_sensitive(texts, tuple(kinds)) if redact else []
    evidence = extract_evidence(texts, [row.height for row in rows], findings)
    redacted_image, redactions = paint(image, rows, findings)
    by_row: dict[int, list[Finding]] = {}
    for finding in findings:
        by_row.setdefault(finding.row, []).append(finding)
    lines = tuple(
        {**row.as_dict(), "text": masked_text(row.text, by_row.get(index, []))} for index, row in enumerate(rows)
    )
    hidden = tuple({"kind": f.kind, "last4": f.last4} for f in findings)
    evidence = replace(evidence, redacted=hidden)
    timings = {"ocr_ms": round(ocr_ms, 1), "redact_ms": round((time.perf_counter() - started) * 1000, 1)}
    return ScreenshotReading(redacted_image, lines, evidence, tuple(redactions), readability, True, timings)
