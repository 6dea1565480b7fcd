"""Which platform API URLs Snapdesk will talk to: https, or plain http on this machine only.

The bot token travels with every call (Telegram even puts it in the URL), and whoever answers
the API speaks for Slack or Telegram: over plain http to another host, anyone on the way
could read the token and feed the bot forged users, files and paths. Plain http is for a
test server on the loopback interface (127.0.0.0/8, ::1, localhost).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_url_problem(url: str, setting: str, example: str) -> str | None:
    """Why `url` may not be used as a platform's API URL (one sentence), or None when it may."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        host = None
    scheme = parts.scheme.lower() if host else ""
    if scheme == "https" or (scheme == "http" and is_loopback_url(url)):
        return None
    return (f"{setting} must be an https URL such as {example} (plain http is accepted only for a loopback "
            "test server: 127.0.0.0/8, ::1 or localhost).")
