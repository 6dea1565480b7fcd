"""A real user message made into a regression case, the way the operator saw it answered.

The case keeps the message's text, language and channel and its screenshots as Snapdesk stored
them: redacted. A screenshot that was never checked for personal data (OCR off or failed) is
kept only when the operator says so, since a case outlives the conversation's retention.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..context import attachment_ids
from ..store import Store
from ..template_versions import PublishedTemplates
from .cases import CaseSpec, add_case, save_screenshot, MAX_SCREENSHOTS

CHANNELS = ("widget", "slack", "telegram")


class TurnNotUsable(Exception):
    def __init__(self, message: str, code: str = "invalid", status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _answering_template(store: Store, message_id: int) -> str | None:
    row = store.db.execute(
        "select template_name from messages where reply_to = ? and template_name is not null order by id limit 1",
        [message_id]).fetchone()
    return row[0] if row else None


def case_from_turn(store: Store, templates: PublishedTemplates, message_id: int, template: str | None,
                   expectations: dict[str, Any], author: str, allow_unchecked: bool = False) -> tuple[int, str]:
    """Store the case (database thread); (its id, its template). TurnNotUsable says why not."""
    message = store.message(message_id)
    if message is None or message["role"] != "user":
        raise TurnNotUsable("No such user message.", "not_found", 404)
    conversation = store.conversation(message["conversation_id"])
    name = template or _answering_template(store, message_id) or templates.template_name_for(conversation["channel"])
    if not store.published_template_versions(name) and name not in templates.library.names():
        raise TurnNotUsable(f"No template named {name}.", "not_found", 404)
    shots = list(store.attachments(attachment_ids(message)).values())[:MAX_SCREENSHOTS]
    unchecked = [s for s in shots if not (s.reading or {}).get("ocr")]
    if unchecked and not allow_unchecked:
        raise TurnNotUsable(
            f"{len(unchecked)} of this message's screenshots were not checked for personal data (screenshot "
            "reading was off or failed). Add the case anyway only if you have looked at them.", "unchecked_screenshots",
            409)
    try:
        spec = CaseSpec(text=message["text"] or "", language=conversation["language"] if conversation["language"] in
                        ("en", "zh") else "en", channel=conversation["channel"] if conversation["channel"] in CHANNELS
                        else "widget", **expectations)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TurnNotUsable(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if not spec.text.strip() and not shots:
        raise TurnNotUsable("This message has neither text nor screenshots to make a case of.")
    digests = [save_screenshot(store, shot.path.read_bytes()) for shot in shots]
    return add_case(store, name, spec, digests, author, source_message_id=message_id), name
