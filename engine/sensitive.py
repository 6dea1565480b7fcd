"""Personal data in a screenshot's text, found so that it can be painted over in the image.

Only the redacted screenshot is stored, shown to agents and sent to the model, so a miss here
leaks a customer's card or one-time code. But support screenshots are full of long numbers
that are not personal (order and tracking numbers that happen to pass Luhn, amounts, dates,
error codes) and hiding them would destroy the evidence agents need, so whatever
`engine.text_spans` reads as an id or as evidence is never reported as a card, code or phone.

Rows are OCR rows: the fragments of one visual line joined with a space, digits of one number
often split across fragments. Offsets index the rows exactly as given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import phonenumbers

from engine.text_spans import Span, fold, overlaps, scan

KINDS = ("card", "iban", "email", "phone", "code")  # "code": a one-time code or password
_ID_KINDS = ("order", "tracking")
_PHONE_REGIONS = ("CN", "US", "GB")

Spans = dict[int, list[tuple[int, int]]]


@dataclass(frozen=True)
class Finding:
    kind: str
    row: int  # index of the row in the rows given
    start: int  # rows[row][start:end] are exactly the characters to hide
    end: int
    value: str  # rows[row][start:end]

    @property
    def last4(self) -> str:
        """The last four digits of a card, IBAN or phone; "" for an e-mail or a code."""
        if self.kind not in ("card", "iban", "phone"):
            return ""
        return "".join(ch for ch in fold(self.value) if "0" <= ch <= "9")[-4:]


def find_sensitive(rows: Sequence[str], kinds: Iterable[str] = KINDS) -> list[Finding]:
    """The personal data in `rows`, of the given kinds, sorted by (row, start), never overlapping.

    Every kind is looked for whatever `kinds` asks, so that an IBAN left out of the answer
    still keeps its digits from being read as a card or a phone.
    """
    wanted = set(kinds)
    if unknown := wanted - set(KINDS):
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    folded = [fold(text) for text in rows]
    taken: Spans = {}
    findings: list[Finding] = []

    def claim(kind: str, row: int, start: int, end: int) -> None:
        spans = taken.setdefault(row, [])
        if not overlaps(spans, start, end):
            spans.append((start, end))
            findings.append(Finding(kind, row, start, end, rows[row][start:end]))

    for row, text in enumerate(folded):
        for start, end in _emails(text):
            claim("email", row, start, end)
        for start, end in _ibans(text):
            claim("iban", row, start, end)
    evidence = scan(rows, blocked=taken)
    ids = _by_row(span for span in evidence if span.kind in _ID_KINDS)
    shown = _by_row(evidence)
    for row, text in enumerate(folded):
        for start, end in _cards(text):
            if not overlaps(ids.get(row, ()), start, end):
                claim("card", row, start, end)
    for row, start, end in _codes(rows, folded):
        if not overlaps(shown.get(row, ()), start, end):
            claim("code", row, start, end)
    for row, text in enumerate(folded):
        for start, end in _phones(text):
            if not overlaps(shown.get(row, ()), start, end):
                claim("phone", row, start, end)
    return sorted((f for f in findings if f.kind in wanted), key=lambda f: (f.row, f.start))


def _by_row(spans: Iterable[Span]) -> Spans:
    grouped: Spans = {}
    for span in spans:
        grouped.setdefault(span.row, []).append((span.start, span.end))
    return grouped


# --- e-mail and IBAN ------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])? ?@ ?"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    """IBANs that pass mod-97; the longest valid reading where letters follow the number."""
    for m in _IBAN.finditer(text):
        ends = [m.end()] + [m.start() + i for i, ch in enumerate(m.group()) if ch == " "]
        for end in sorted(ends, reverse=True):
            compact = text[m.start():end].replace(" ", "")
            if not _ascii_alnum(text[end:end + 1]) and 15 <= len(compact) <= 34 and _mod97(compact):
                yield m.start(), end
                break


def _mod97(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


# --- cards ----------------------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")


def _cards(text: str) -> Iterator[tuple[int, int]]:
    """Luhn-valid 13-19 digit numbers, in groups split by single spaces or dashes.

    A run of digit groups touching letters or joined by a dash to an id (A4539..., ORD-4539...-02)
    is part of something else. Within a run, OCR may have glued neighbouring numbers to the
    card with a space, so each run is read as its longest valid space-delimited stretches,
    leftmost first; dash-joined groups are never cut apart.
    """
    for run in _DIGIT_RUN.finditer(text):
        if _attached(text, run.start(), run.end()):
            continue
        groups = [(run.start() + m.start(), run.start() + m.end())
                  for m in re.finditer(r"\S+", run.group())]
        first = 0
        while first < len(groups):
            stretches = []  # (last group, digits) of the stretches from `first` that could be a card
            digits = ""
            for last in range(first, len(groups)):
                digits += re.sub(r"\D", "", text[groups[last][0]:groups[last][1]])
                if len(digits) > 19:
                    break
                stretches.append((last, digits))
            for last, digits in reversed(stretches):
                if 13 <= len(digits) and digits[0] != "0" and _luhn(digits):
                    yield groups[first][0], groups[last][1]
                    first = last
                    break
            first += 1


def _attached(text: str, start: int, end: int) -> bool:
    before, after = text[start - 1:start], text[end:end + 1]
    if _ascii_alnum(before) or (before == "-" and _ascii_alnum(text[start - 2:start - 1])):
        return True
    return _ascii_alnum(after) or after == "-" or (after in ".," and text[end + 1:end + 2].isdigit())


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


# --- one-time codes and passwords -----------------------------------------------------------

_CODE_LABEL = re.compile(
    r"(?P<code>验证码|校验码|动态码|动态密码|\botp\b|\bpasscode\b|\bpin\b"
    r"|\b(?:verification|security|confirmation|login|one[- ]time)\s+(?:code|password)\b"
    r"|\bcode\b)"
    r"|(?P<password>密码|口令|\bpassword\b)",
    re.IGNORECASE,
)
# Words that make "code" something other than a secret: "Error code 4012", "ZIP code 94107".
_NOT_SECRET = frozenset(
    "error err status zip postal post country area promo promotion coupon discount gift voucher "
    "invite invitation referral reason response exit return result http qr bar product order "
    "tracking source swift sort bank branch tax".split()
)
_SEPARATOR = re.compile(r"\s*(?:(?P<word>is\b|[为是])\s*)?(?:(?P<mark>[:=])\s*)?", re.IGNORECASE)
_CODE_VALUE = re.compile(r"(?:\d{3,4} \d{3,4}|\d{4,8})(?![A-Za-z0-9_-])")
_PASSWORD_VALUE = re.compile(r"[!-~]+")


def _codes(rows: Sequence[str], folded: Sequence[str]) -> Iterator[tuple[int, int, int]]:
    """(row, start, end) of each code or password next to its label, or alone on the next row."""
    for row, text in enumerate(folded):
        for label in _CODE_LABEL.finditer(text):
            before = re.search(r"([A-Za-z]+)\W*$", text[max(0, label.start() - 32):label.start()])
            if before and before.group(1).lower() in _NOT_SECRET:
                continue
            sep = _SEPARATOR.match(text, label.end())
            password = label.lastgroup == "password"
            if text[sep.end():].strip():
                span = _value(rows[row], text, sep.end(), password, sep)
                if span:
                    yield row, *span
            elif row + 1 < len(rows):
                below = folded[row + 1]
                start = len(below) - len(below.lstrip())
                span = _value(rows[row + 1], below, start, password, None)
                if span and not below[span[1]:].strip():
                    yield row + 1, *span


def _value(row: str, folded: str, pos: int, password: bool, sep: re.Match | None
           ) -> tuple[int, int] | None:
    """The code at `pos`; for a password, the token: after ':' or '=' any token, otherwise only
    one holding a digit ("Password is incorrect"), and alone on the next row any but a word."""
    if not password:
        m = _CODE_VALUE.match(folded, pos)
        if not m:
            return None
        # '.', ':' or '/' before a digit continues a number (1234.56, 1234/5678), and an ASCII ','
        # before three digits; "482913,5分钟内有效" is a code and a sentence.
        continued = re.match(r"[.:/]\d|,\d{3}(?!\d)", row[m.end():m.end() + 5])
        return None if continued else m.span()
    m = _PASSWORD_VALUE.match(row, pos)
    if not m:
        return None
    token = m.group().rstrip(".,;")
    if len(token) < 4 or not any(ch.isalnum() for ch in token):  # "******" is already masked
        return None
    if sep is None:
        plain = token.isalpha()
    else:
        plain = not sep.group("mark") and not any(ch.isdigit() for ch in token)
    return None if plain else (m.start(), m.start() + len(token))


# --- phones ---------------------------------------------------------------------------------


def _phones(text: str) -> Iterator[tuple[int, int]]:
    """International numbers and national numbers of China, the US and the UK, valid ones only."""
    for region in _PHONE_REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            if sum(ch.isdigit() for ch in match.raw_string) >= 7:
                yield match.start, match.end
