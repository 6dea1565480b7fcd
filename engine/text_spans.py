"""What the numbers and codes in a screenshot's text are: ids, error codes, dates, amounts, times.

The redactor (`engine.sensitive`) and the evidence extractor (`engine.evidence`) must agree on
this: a Luhn-valid order number is evidence, not a card, and a date or an amount is never a
phone. So both read the OCR rows through this one scanner. Matching runs on `fold`ed rows,
which have exactly the length of the rows the OCR gave, so every offset found here also
indexes the original row, and shown values are sliced from it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SPAN_KINDS = ("order", "tracking", "error", "date", "amount", "time")

_FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}  # full-width ASCII forms
_FOLD.update({code: 0x20 for code in (0x00A0, 0x3000, 0x202F, *range(0x2000, 0x200B))})


def fold(text: str) -> str:
    """`text` with full-width punctuation, letters and digits and odd spaces as plain ASCII.

    Character for character, so offsets into the result are offsets into `text`.
    """
    return text.translate(_FOLD)


def normalise(value: str) -> str:
    """A shown value with its whitespace runs as one space."""
    return " ".join(value.split())


@dataclass(frozen=True)
class Span:
    kind: str  # one of SPAN_KINDS
    row: int
    start: int
    end: int


def overlaps(spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in spans)


# --- ids: order and tracking numbers ----------------------------------------------------------

# Invoice, transaction and reference numbers count as orders: each names the purchase in question.
# OCR reads the O of "Order" and "ORD-" as a zero often enough to be expected ("0rder No.").
_NO = r"(?:\s*(?:no\b\.?|number\b|num\b\.?|id\b))?"
_ID_LABEL = re.compile(
    rf"(?:(?P<order>\b(?:[o0]rder|receipt|invoice|ref(?:erence)?|transaction|txn)\b{_NO}"
    r"|订单(?:编号|号码|号)?|(?:交易|支付|退款|商户|业务)(?:单号|编号|号)"
    r"|流水号|发票(?:号码|代码|号)|参考号|凭证号)"
    rf"|(?P<tracking>\b(?:tracking|waybill|awb)\b{_NO}"
    r"|(?:运单|快递单|物流单|快递|物流)(?:编号|号码|号)|运单))"
    r"(?:[\s.:=]|#(?=\s))*",
    re.IGNORECASE,
)
# An id: alphanumerics joined by single dashes; OCR may split its digits into spaced groups.
_ID_VALUE = re.compile(
    r"(?:#(?=[A-Za-z0-9]))?[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9]))*"
    r"(?: \d{2,}(?![A-Za-z0-9_-]|[:./]\d))*(?![A-Za-z0-9_-])"
)
_TRACKING_FORMS = re.compile(
    r"(?<![A-Za-z0-9])(?:SF\d{12,15}|1Z[0-9A-Z]{16}|YT\d{13}|JT\d{13})(?![A-Za-z0-9])"
)
_ORDER_FORMS = re.compile(  # Amazon's, ORD-..., and a short letter prefix on a long number
    r"(?<![A-Za-z0-9-])(?:#?\d{3}-\d{7}-\d{7}|[O0]RD-[A-Z0-9]+(?:-[A-Z0-9]+)*|[A-Z]{1,4}\d{10,20})"
    r"(?![A-Za-z0-9-])"
)


def _is_id(value: str) -> bool:
    return sum(ch.isdigit() for ch in value) >= 4 and not _date_matches(value)


def _labelled_ids(rows: Sequence[str]) -> list[Span]:
    """Values right after an id label, or alone on the next row when the label ends its row."""
    found = []
    for row, text in enumerate(rows):
        for label in _ID_LABEL.finditer(text):
            kind = label.lastgroup
            value = _ID_VALUE.match(text, label.end())
            if value and _is_id(value.group()):
                found.append(Span(kind, row, value.start(), value.end()))
            elif not text[label.end():].strip() and row + 1 < len(rows):
                below = rows[row + 1]
                start = len(below) - len(below.lstrip())
                value = _ID_VALUE.match(below, start)
                if value and _is_id(value.group()):
                    found.append(Span(kind, row + 1, value.start(), value.end()))
    return found


def _id_forms(rows: Sequence[str]) -> list[Span]:
    found = []
    for row, text in enumerate(rows):
        for kind, pattern in (("tracking", _TRACKING_FORMS), ("order", _ORDER_FORMS)):
            found += [Span(kind, row, m.start(), m.end()) for m in pattern.finditer(text)
                      if sum(ch.isdigit() for ch in m.group()) >= 4]
    return found


# --- error codes ------------------------------------------------------------------------------

_ERROR_FORMS = re.compile(
    r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?![A-Za-z0-9_])"  # CARD_DECLINED, ERR_X
    r"|(?<![A-Za-z0-9-])[A-Z]{1,3}-\d{2,6}(?![A-Za-z0-9-])"  # E-4012
    r"|(?<![A-Za-z0-9])0x[0-9A-Fa-f]{4,16}(?![A-Za-z0-9])"  # 0x80070005
    r"|\bHTTP(?:\s?(?i:error))?\s?[1-5]\d{2}\b"  # HTTP 502, HTTP ERROR 502
    r"|\b(?i:error)\s?\d{3,5}\b"  # Error 404
)
_ERROR_LABEL = re.compile(r"(?:\berror\s*code|错误(?:代码|编号|码))[\s:=]*", re.IGNORECASE)
_ERROR_VALUE = re.compile(r"(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9](?:[A-Za-z0-9_]|-(?=[A-Za-z0-9]))*"
                          r"(?![A-Za-z0-9_-])")


def _errors(text: str) -> list[tuple[int, int]]:
    found = [m.span() for m in _ERROR_FORMS.finditer(text)]
    for label in _ERROR_LABEL.finditer(text):
        value = _ERROR_VALUE.match(text, label.end())
        if value:
            found.append(value.span())
    return found


# --- dates, times, amounts --------------------------------------------------------------------

_TIME = r"(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?(?:\s?[AaPp]\.?[Mm]\b\.?)?(?![\d:])"
_TAIL = rf"(?:(?:,?\s?|T)(?:at\s)?{_TIME})?"
_DAY = r"(?:3[01]|[12]\d|0?[1-9])(?!\d)"
_NUMBER_END = r"(?![-/.]?\d)"  # not a longer number: 2024-03-05-0012
# OCR may drop the space between a date and its time: 2024-03-0514:22.
_ISO_DAY = rf"(?:(?:3[01]|[12]\d|0[1-9])(?=\d{{1,2}}:\d{{2}})|{_DAY}{_NUMBER_END})"
_MONTH_NUMBER = r"(?:1[0-2]|0?[1-9])"
_YEAR = r"(?:19|20)\d{2}"
_MONTH = (r"(?=[A-Z])(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?"
          r"|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?")
_DATE_FORMS = [
    re.compile(rf"(?<![\d./-]){_YEAR}([-/.]){_MONTH_NUMBER}\1{_ISO_DAY}{_TAIL}"),  # 2024-03-05 14:22
    re.compile(rf"(?<![\d./-]){_DAY}([-/.]){_DAY}\1{_YEAR}{_NUMBER_END}{_TAIL}"),  # 05/03/2024
    re.compile(rf"(?<!\d)(?:{_YEAR}\s?年\s?)?{_MONTH_NUMBER}\s?月\s?{_DAY}\s?[日号]{_TAIL}"),
    re.compile(rf"\b{_MONTH}\s?{_DAY}(?:st|nd|rd|th)?\b(?:,?\s{_YEAR}\b)?{_TAIL}"),  # Mar 5, 2024
    re.compile(rf"\b{_DAY}(?:st|nd|rd|th)?\s{_MONTH}(?:,?\s{_YEAR}\b)?{_TAIL}"),  # 5 March 2024
]
_LONE_TIME = re.compile(rf"(?<![\d:.]){_TIME}")

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d{1,2})?(?![\d])(?![.,]\d)"
_SYMBOL = r"(?:US\$|HK\$|NT\$|A\$|C\$|S\$|R\$|[$¥￥€£₩₹])"
_CURRENCY = r"(?:CNY|RMB|USD|EUR|GBP|HKD|JPY|TWD|SGD|AUD|CAD|KRW|INR|CHF|MOP)"
_AMOUNT_FORMS = re.compile(
    rf"(?<![A-Za-z0-9])[-+]?{_SYMBOL}\s?{_NUMBER}"  # ¥1,288.00  -$88.00
    rf"|(?<![A-Za-z]){_CURRENCY}\s?{_NUMBER}"  # CNY 88.00
    rf"|(?<![\d.,A-Za-z])[-+]?{_NUMBER}\s?(?:万?元|{_CURRENCY}\b)"  # 88.00 元
)


def _date_matches(text: str) -> list[re.Match]:
    return [m for pattern in _DATE_FORMS for m in pattern.finditer(text)]


def _dates(text: str) -> list[tuple[int, int]]:
    # Longest first, so a date with its time wins over the bare date.
    return sorted((m.span() for m in _date_matches(text)), key=lambda s: (s[0] - s[1], s[0]))


# --- the scanner ------------------------------------------------------------------------------


def scan(rows: Sequence[str], blocked: Mapping[int, Sequence[tuple[int, int]]] | None = None
         ) -> list[Span]:
    """Every id, error code, date, amount and lone time in `rows`, sorted by (row, start).

    Spans never overlap each other nor a `blocked` span of their row; where two readings
    compete, ids win over error codes, error codes over dates, dates over amounts and times.
    """
    folded = [fold(text) for text in rows]
    blocked = blocked or {}
    taken: dict[int, list[tuple[int, int]]] = {row: list(spans) for row, spans in blocked.items()}
    found: list[Span] = []

    def claim(span: Span) -> None:
        spans = taken.setdefault(span.row, [])
        if not overlaps(spans, span.start, span.end):
            spans.append((span.start, span.end))
            found.append(span)

    for span in _labelled_ids(folded) + _id_forms(folded):
        claim(span)
    for kind, finder in (("error", _errors), ("date", _dates)):
        for row, text in enumerate(folded):
            for start, end in finder(text):
                claim(Span(kind, row, start, end))
    for kind, pattern in (("amount", _AMOUNT_FORMS), ("time", _LONE_TIME)):
        for row, text in enumerate(folded):
            for m in pattern.finditer(text):
                claim(Span(kind, row, m.start(), m.end()))
    return sorted(found, key=lambda span: (span.row, span.start))
