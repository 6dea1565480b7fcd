"""How well Snapdesk reads the project's screenshot corpus: what it hides, what it keeps.

Each readable sample goes through the steps a conversation runs (intake at reading size, OCR,
redaction, evidence). A sensitive item counts as hidden when a painted box covers it and the
redacted image, read again, no longer shows its value; a painted box that covers no sensitive
item is a false positive (an order number mistaken for a card); an evidence item counts as
found when the extracted evidence holds it. Tests and `make bench` share this one scoring.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field

from PIL import Image

from bench.screenshot_corpus import Sample
from engine.images import ImageLimits, prepare_image
from engine.ocr import OcrReader
from engine.screenshots import ScreenshotReading, read_screenshot, reading_limits

EVIDENCE_FIELDS = {"error_code": "error_codes", "amount": "amounts", "order": "orders", "tracking": "tracking",
                   "date": "dates", "title": "title"}


def normal(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def _overlap(a, b) -> float:
    """The share of box b that box a covers."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    area = max(1.0, (b[2] - b[0]) * (b[3] - b[1]))
    return max(0.0, width) * max(0.0, height) / area


def _still_shown(kind: str, value: str, rows: list[str]) -> bool:
    """Whether the re-read text still shows the value (digits of a number in one row, the address...)."""
    if kind in ("card", "iban", "phone"):
        digits = re.sub(r"\D", "", value)
        return any(digits[-8:] in re.sub(r"\D", "", row) for row in rows) if len(digits) >= 8 else False
    wanted = normal(value)
    return any(wanted in normal(row) for row in rows)


@dataclass
class SampleScore:
    name: str
    reading: ScreenshotReading
    hidden: list[str] = field(default_factory=list)  # "kind:value" of sensitive items hidden
    missed: list[str] = field(default_factory=list)  # sensitive items still visible or not covered
    false_positives: list[str] = field(default_factory=list)  # painted boxes over no sensitive item
    found: list[str] = field(default_factory=list)  # evidence items found
    lost: list[str] = field(default_factory=list)  # evidence items not found
    obscured: list[str] = field(default_factory=list)  # evidence items no longer readable after redaction
    ocr_s: float = 0.0


def read_sample(sample: Sample, reader: OcrReader) -> tuple[ScreenshotReading, float]:
    """The sample as a conversation would read it (boxes in the sample's own pixels)."""
    prepared = prepare_image(_png(sample.image), reading_limits(ImageLimits()))
    assert prepared.image.size == sample.image.size, "corpus samples are read at their own size"
    started = time.perf_counter()
    rows = reader.read_sync(prepared.image)
    ocr_s = time.perf_counter() - started
    return read_screenshot(prepared.image, rows, ocr_ms=ocr_s * 1000), ocr_s


def score(sample: Sample, reader: OcrReader, reread: bool = True) -> SampleScore:
    reading, ocr_s = read_sample(sample, reader)
    result = SampleScore(sample.name, reading, ocr_s=ocr_s)
    items = [item for drawn in sample.strings for item in drawn.items]
    sensitive = [item for item in items if item.sensitive]
    rows = [row.text for row in reader.read_sync(reading.image)] if reread and sensitive else []
    for item in sensitive:
        covered = any(_overlap(r.box, item.box) > 0.6 for r in reading.redactions)
        label = f"{item.kind}:{item.value}"
        (result.hidden if covered and not _still_shown(item.kind, item.value, rows) else result.missed).append(label)
    for redaction in reading.redactions:
        if not any(_overlap(item.box, redaction.box) > 0.2 or _overlap(redaction.box, item.box) > 0.5
                   for item in sensitive):
            result.false_positives.append(f"{redaction.kind}@{list(redaction.box)}")
    evidence = reading.evidence.as_dict()
    for item in items:
        if item.sensitive or item.kind not in EVIDENCE_FIELDS:
            continue
        extracted = evidence.get(EVIDENCE_FIELDS[item.kind]) or []
        values = [extracted] if isinstance(extracted, str) else list(extracted)
        wanted = normal(item.value)
        hit = any(wanted == normal(v) or (wanted in normal(v) and len(wanted) >= 4) for v in values)
        (result.found if hit else result.lost).append(f"{item.kind}:{item.value}")
        if rows and item.kind != "title" and hit and not _still_shown(item.kind, item.value, rows):
            result.obscured.append(f"{item.kind}:{item.value}")  # read before redaction, painted over by it
    return result


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def totals(scores: list[SampleScore]) -> dict[str, float]:
    hidden = sum(len(s.hidden) for s in scores)
    missed = sum(len(s.missed) for s in scores)
    found = sum(len(s.found) for s in scores)
    lost = sum(len(s.lost) for s in scores)
    return {
        "redaction_recall": hidden / max(1, hidden + missed),
        "redaction_false_positives": sum(len(s.false_positives) for s in scores),
        "evidence_recall": found / max(1, found + lost),
        "sensitive_items": hidden + missed,
        "evidence_items": found + lost,
    }
