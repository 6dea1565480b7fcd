"""What a screenshot shows that support needs: its title, error codes, amounts, order and
tracking numbers, dates, and which personal data was painted over.

Agents read this instead of squinting at the image, the bot hands it to the model and the
knowledge search queries with it, so it must be precise more than complete: an invented error
code or an order number that is really the customer's card does more harm than a missed one.
Values are kept as the screen shows them (whitespace runs as one space), because agents match
them against their own systems and users quote them back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from engine.sensitive import Finding
from engine.text_spans import fold, normalise, scan

SUMMARY_LIMIT = 160
_LISTS = ("error_codes", "amounts", "orders", "tracking", "dates")
_SPAN_FIELDS = {"error": "error_codes", "amount": "amounts", "order": "orders", "tracking": "tracking",
                "date": "dates"}


@dataclass(frozen=True)
class Evidence:
    title: str = ""  # the screen's title line
    error_codes: tuple[str, ...] = ()  # E-4012, CARD_DECLINED, 0x80070005, HTTP 502, ...
    amounts: tuple[str, ...] = ()  # with their currency, as shown: ¥1,288.00, 88.00 元
    orders: tuple[str, ...] = ()
    tracking: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()  # dates and date-times as shown
    redacted: tuple[dict, ...] = ()  # filled by the caller: {"kind": "card", "last4": "1881"}

    def summary(self) -> str:
        """One line for agents, at most SUMMARY_LIMIT characters, cut between items."""
        items = _paired_codes(self.error_codes) + list(self.amounts)
        items += [f"order {value}" for value in self.orders]
        items += [f"tracking {value}" for value in self.tracking]
        items += list(self.dates)
        for item in self.redacted:
            kind, last4 = item.get("kind") or "data", item.get("last4") or ""
            items.append(f"{kind} •••• {last4}" if last4 else f"{kind} hidden")
        return _join(list(dict.fromkeys(items)))

    def as_dict(self) -> dict:
        data: dict = {"title": self.title}
        data.update({name: list(getattr(self, name)) for name in _LISTS})
        data["redacted"] = [dict(item) for item in self.redacted]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Evidence:
        """The evidence `as_dict` gave; missing keys are empty and unknown ones are ignored."""
        values: dict = {name: tuple(str(v) for v in data.get(name) or ()) for name in _LISTS}
        values["redacted"] = tuple(dict(item) for item in data.get("redacted") or ())
        return cls(title=str(data.get("title") or ""), **values)

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


def _is_name(code: str) -> bool:
    return "_" in code


def _paired_codes(codes: Sequence[str]) -> list[str]:
    """A named code followed by a numbered one ("CARD_DECLINED", "E-4012") as one item: codes
    are kept in reading order, so a name shown with its number comes right before it."""
    items: list[str] = []
    i = 0
    while i < len(codes):
        if i + 1 < len(codes) and _is_name(codes[i]) and not _is_name(codes[i + 1]):
            items.append(f"{codes[i]} ({codes[i + 1]})")
            i += 2
        else:
            items.append(codes[i])
            i += 1
    return items


def _join(items: list[str]) -> str:
    text = ", ".join(items)
    if len(text) <= SUMMARY_LIMIT:
        return text
    kept = ""
    for item in items:
        longer = f"{kept}, {item}" if kept else item
        if len(longer) + len(", …") > SUMMARY_LIMIT:
            break
        kept = longer
    if not kept:  # a single item longer than the line
        return items[0][:SUMMARY_LIMIT - 1] + "…"
    return f"{kept}, …"


def extract_evidence(rows: Sequence[str], heights: Sequence[float] | None = None,
                     hidden: Sequence[Finding] = ()) -> Evidence:
    """The evidence in a screenshot's OCR rows.

    `heights`: each row's pixel height when known, to find the title by its size.
    `hidden`: the findings of `find_sensitive` over the same rows; nothing inside them is evidence.
    """
    if heights is not None and len(heights) != len(rows):
        raise ValueError(f"{len(heights)} heights for {len(rows)} rows")
    blocked: dict[int, list[tuple[int, int]]] = {}
    for finding in hidden:
        blocked.setdefault(finding.row, []).append((finding.start, finding.end))
    found: dict[str, dict[str, None]] = {name: {} for name in _LISTS}
    for span in scan(rows, blocked):
        if span.kind in _SPAN_FIELDS:
            value = normalise(rows[span.row][span.start:span.end])
            if span.kind == "order":
                value = re.sub(r"^0RD-", "ORD-", value)  # the letter OCR read as a zero
            found[_SPAN_FIELDS[span.kind]][value] = None
    title = _title(rows, heights, set(blocked))
    return Evidence(title=title, **{name: tuple(values) for name, values in found.items()})


# --- the title --------------------------------------------------------------------------------

_STATUS_BAR = re.compile(
    r"(?:上午|下午)?\d{1,2}:\d{2}(?:\s?[AaPp][Mm])?|\d{1,3}\s?%"
    r"|\b(?:[2-5]G\+?|LTE\+?|VoLTE|HD|E|EE|O2|AT&T|Verizon|T-Mobile|Vodafone|Sprint"
    r"|China\s?(?:Mobile|Unicom|Telecom))\b|中国(?:移动|联通|电信|广电)|[^\w\s]",
    re.IGNORECASE,
)
_URL = re.compile(r"(?:https?://|www\.)\S*|\b[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}(?:/\S*)?", re.IGNORECASE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_TITLE_WINDOW = 2  # "near the top": the first two rows that could be a title


def _weight(text: str) -> int:
    """How much text a row holds: letters count one, Chinese characters two."""
    return sum(1 for ch in text if ch.isascii() and ch.isalpha()) + 2 * len(_CJK.findall(text))


def _words(text: str) -> int:
    """The weight of a row once a status bar's time, battery and carrier, and addresses, are gone."""
    return _weight(_STATUS_BAR.sub("", _URL.sub("", fold(text))))


def _title(rows: Sequence[str], heights: Sequence[float] | None, hidden_rows: set[int]) -> str:
    """The taller of the first two rows that could be a title, or without heights the first row
    of some length; never a status bar, an address bar, a bare number or a row with hidden data.

    Two, because the screen's title is its first text (an app bar, a page heading) unless a taller
    heading sits right under a browser's tab strip or a notification; further down, taller rows
    are content (a status "In transit", an amount), not the title.
    """
    candidates = [i for i, text in enumerate(rows) if i not in hidden_rows and _words(text) >= 4]
    if heights is None:
        chosen = next((i for i in candidates if _words(rows[i]) >= 5), None)
    else:
        near_top = candidates[:_TITLE_WINDOW]
        tallest = max((heights[i] for i in near_top), default=0)
        # The first of the rows within a tenth of the tallest: OCR boxes of one font vary a little.
        chosen = next((i for i in near_top if heights[i] >= 0.9 * tallest), None)
    return normalise(rows[chosen]) if chosen is not None else ""
