"""What the agent console shows of each screenshot: what Snapdesk read in it.

An agent picking up a hand-over decides faster when the error code, the amount or the order
number is spelled out beside the picture, and asks the user for less when it can see what was
painted out of the image (a card ending 1881, an e-mail). Only the masked text and the evidence
leave the server; the reading's boxes, scores and timings stay stored for the tools.
"""

from __future__ import annotations

from engine.evidence import Evidence

from ..context import attachment_ids
from ..store import StoredAttachment

# The hand-over banner's one line: the newest screenshots' summaries that fit in this many characters.
SUMMARY_CHARS = 300


def attachment_url(attachment: StoredAttachment) -> str:
    return f"/agent/api/attachments/{attachment.sha256}"


def screenshot_view(attachment: StoredAttachment) -> dict:
    """One screenshot for the console: its address and what was read in it (`read` is False
    when it was not read at all: OCR off, or `failed`)."""
    reading = attachment.reading
    if reading is None or not reading.get("ocr"):  # `failed`: OCR was on, but failed or overran its limit
        return {"url": attachment_url(attachment), "read": False, "failed": reading is not None, "summary": "",
                "evidence": {}, "redacted": [], "text": "", "unreadable": False}
    evidence = Evidence.from_dict(reading.get("evidence") or {})
    shown = evidence.as_dict()
    return {
        "url": attachment_url(attachment), "read": True, "failed": False, "summary": evidence.summary(), "evidence": shown,
        "redacted": [{"kind": hidden.get("kind", ""), "last4": hidden.get("last4")} for hidden in shown.get("redacted", [])],
        "text": "\n".join(line.get("text", "") for line in reading.get("lines") or []),
        "unreadable": bool(reading.get("unreadable")),
    }


def episode_summary(rows: list[dict], views: dict[int, dict], episode: int) -> str:
    """What the user's screenshots of one episode show, newest message first, each summary
    once; older ones are left out (with "…") past SUMMARY_CHARS."""
    seen: list[str] = []
    for row in reversed(rows):
        if row["role"] != "user" or row["episode"] != episode:
            continue
        for attachment_id in attachment_ids(row):
            summary = views.get(attachment_id, {}).get("summary", "")
            if summary and summary not in seen:
                seen.append(summary)
    text = ""
    for summary in seen:
        joined = f"{text}; {summary}" if text else summary
        if len(joined) > SUMMARY_CHARS:
            return f"{text}; …" if text else summary[: SUMMARY_CHARS - 1] + "…"
        text = joined
    return text
