"""Painting personal data out of a screenshot, character by character.

Only the matched characters are covered (with a margin for anti-aliased edges and boxes that are
a little off), so the evidence around them stays readable: the amount beside a card number, the
label above an e-mail address. The paint is solid and opaque; nothing of the original survives
under it in the stored PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw

from .sensitive import Finding
from .text_rows import TextRow

PAD_X = 0.25  # of the row's height, left and right
PAD_Y = 0.0  # above and below: OCR boxes already hold the ascenders and descenders; more would touch the next row


@dataclass(frozen=True)
class Redaction:
    kind: str
    box: tuple[int, int, int, int]
    last4: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "box": list(self.box), "last4": self.last4}


def redaction_box(row: TextRow, finding: Finding, size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = row.span_box(finding.start, finding.end)
    height = max(1.0, row.box[3] - row.box[1])
    pad_x, pad_y = PAD_X * height, PAD_Y * height
    return (
        max(0, int(x0 - pad_x)),
        max(0, int(min(y0, row.box[1]) - pad_y)),
        min(size[0], int(x1 + pad_x + 1)),
        min(size[1], int(max(y1, row.box[3]) + pad_y + 1)),
    )


def paint(image: Image.Image, rows: Sequence[TextRow], findings: Sequence[Finding]) -> tuple[Image.Image, list[Redaction]]:
    """A copy of the image with every finding covered, and what was covered where."""
    if not findings:
        return image, []
    painted = image.copy()
    draw = ImageDraw.Draw(painted)
    redactions = []
    for finding in findings:
        box = redaction_box(rows[finding.row], finding, painted.size)
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(20, 20, 20))
        redactions.append(Redaction(finding.kind, box, finding.last4))
    return painted, redactions


def masked_text(text: str, findings: Sequence[Finding]) -> str:
    """A row's text with its findings replaced by what may be shown ("[card •••• 1881]")."""
    for finding in sorted(findings, key=lambda f: f.start, reverse=True):
        shown = f"[{finding.kind} •••• {finding.last4}]" if finding.last4 else f"[{finding.kind} hidden]"
        text = text[:finding.start] + shown + text[finding.end:]
    return text

