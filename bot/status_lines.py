"""What a user is told when the owner of their conversation changes.

A status change is stored as a message of kind "status" and delivered like any reply, so
every channel shows it once, in order with the answers around it, and a page that reloads
finds it in the transcript. "waiting" has no line of its own: the hand-over notice says it.
"""

from __future__ import annotations

from .store import BOT, CLAIMED, RESOLVED

STATUS_LINES: dict[str, dict[str, str]] = {
    CLAIMED: {
        "en": "{agent} from our support team has joined the conversation.",
        "zh": "客服 {agent} 已加入对话。",
    },
    BOT: {
        "en": "You're back with the assistant. Ask me anything, or ask for a person again at any time.",
        "zh": "您已回到智能助手。有问题请随时提问，也可以随时再次转人工。",
    },
    RESOLVED: {
        "en": "This conversation is marked as resolved. Write here any time if you need more help.",
        "zh": "此对话已标记为已解决。如需更多帮助，请随时在这里留言。",
    },
}


def status_line(status: str, language: str, agent: str = "") -> str:
    table = STATUS_LINES[status]
    return table.get(language, table["en"]).format(agent=agent or "An agent")
