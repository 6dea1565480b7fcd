"""Card numbers never leave the bot in full: one masking function for everything it writes.

A model that read a card statement may quote the number; a description, a draft for the
agent or a Slack announcement must not carry it further. A payment card number is 13-19
digits, written together or in groups split by spaces or dashes, and passes the Luhn
check; order numbers and other long identifiers usually fail it and are left alone, and so
is a run that is part of a longer hyphen-joined identifier ("ORD-4111111111111111-B").
The last four digits stay, so the user and the agent can still tell which card is meant.
"""

from __future__ import annotations

import re

# Digits in groups of 1-8 separated by one space or dash; the whole run is checked below.
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9_-])\d(?:[ \-]?\d){12,18}(?![A-Za-z0-9_-])")
MASK = "•••• "


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = re.sub(r"\D", "", run)
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return run
    return MASK + digits[-4:]


def mask_card_numbers(text: str) -> str:
    """`text` with every Luhn-valid 13-19 digit card number reduced to "•••• 1111"."""
    if not text or sum(c.isdigit() for c in text) < 13:
        return text
    return _CANDIDATE.sub(_mask, text)
