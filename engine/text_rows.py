"""Text boxes gathered into the rows a person reads, with a box for every character.

OCR returns fragments: one line of a table may come back as three boxes, and the digits of one
card number are often split across two or four. Detectors need the row's whole text ("4539 1488
0343 6467" is a card only when its groups are seen together) and redaction needs each
character's box (paint the number, not the label beside it). Fragments are joined left to
right with one space; the space's box is the gap between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .ocr import Fragment

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class TextRow:
    text: str
    box: Box
    score: float  # the mean of its fragments' recognition scores
    char_boxes: tuple[Box, ...]  # one per character of `text`

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def span_box(self, start: int, end: int) -> Box:
        """The box around characters [start, end), ignoring spaces at its edges."""
        while start < end and self.text[start].isspace():
            start += 1
        while end > start and self.text[end - 1].isspace():
            end -= 1
        boxes = self.char_boxes[start:end] or self.char_boxes[max(0, start - 1):start + 1]
        return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))

    def as_dict(self) -> dict:
        return {"text": self.text, "box": [round(v) for v in self.box], "score": round(self.score, 4)}


def _char_weight(char: str) -> float:
    """Rough advance width in ems: CJK and full-width characters are about twice a Latin letter."""
    if char.isspace():
        return 0.5
    return 1.0 if ord(char) > 0x2E7F else 0.55


def _split_box(box: Box, text: str) -> list[Box]:
    """Divide a box among its characters in proportion to their usual widths."""
    weights = [_char_weight(c) for c in text]
    total = sum(weights) or 1.0
    x0, y0, x1, y1 = box
    boxes, left = [], x0
    for weight in weights:
        right = left + (x1 - x0) * weight / total
        boxes.append((left, y0, right, y1))
        left = right
    return boxes


def _fragment_char_boxes(fragment: "Fragment") -> list[Box]:
    """Per-character boxes of a fragment: from its word boxes when they account for every
    character that is not a space, else its whole box divided up."""
    text = fragment.text
    if fragment.words:
        chars: list[tuple[str, Box]] = []
        for word, box in fragment.words:
            chars.extend(zip(word, _split_box(box, word)))
        solid = [c for c in text if not c.isspace()]
        if [c for c, _ in chars if not c.isspace()] == solid:
            pieces = iter([(c, b) for c, b in chars if not c.isspace()])
            boxes: list[Box | None] = []
            for char in text:
                boxes.append(None if char.isspace() else next(pieces)[1])
            return _fill_gaps(boxes, fragment.box)
    return _split_box(fragment.box, text)


def _fill_gaps(boxes: list[Box | None], whole: Box) -> list[Box]:
    """A space's box runs from the character before it to the one after it."""
    filled: list[Box] = []
    for index, box in enumerate(boxes):
        if box is not None:
            filled.append(box)
            continue
        before = filled[-1] if filled else None
        after = next((b for b in boxes[index + 1:] if b is not None), None)
        left = before[2] if before else whole[0]
        right = after[0] if after else whole[2]
        filled.append((left, whole[1], max(left, right), whole[3]))
    return filled


def _same_row(a: Box, b: Box) -> bool:
    """Two boxes on one visual line: they share most of the smaller one's height."""
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    return overlap > 0.5 * min(a[3] - a[1], b[3] - b[1])


def rows_from_fragments(fragments: Sequence["Fragment"]) -> list[TextRow]:
    """Fragments grouped into rows, top to bottom, each read left to right."""
    rows: list[list["Fragment"]] = []
    for fragment in sorted(fragments, key=lambda f: (f.box[1] + f.box[3]) / 2):
        if not fragment.text.strip():
            continue
        for row in rows:
            if _same_row(_union([f.box for f in row]), fragment.box):
                row.append(fragment)
                break
        else:
            rows.append([fragment])
    result = []
    for row in rows:
        row.sort(key=lambda f: f.box[0])
        text, boxes = "", []
        for fragment in row:
            piece = fragment.text.strip()
            if text:
                gap_left, gap_right = boxes[-1][2], fragment.box[0]
                text += " "
                boxes.append((gap_left, fragment.box[1], max(gap_left, gap_right), fragment.box[3]))
            stripped = fragment.text
            lead = len(stripped) - len(stripped.lstrip())
            char_boxes = _fragment_char_boxes(fragment)[lead:lead + len(piece)]
            text += piece
            boxes.extend(char_boxes)
        union = _union([f.box for f in row])
        score = sum(f.score for f in row) / len(row)
        result.append(TextRow(text, union, score, tuple(boxes)))
    result.sort(key=lambda r: (r.box[1], r.box[0]))
    return result


def _union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
