"""The server's signing key: from SNAPDESK_SECRET_KEY, or generated once and kept.

Visitor tokens must stay valid across restarts, so a generated key is written to the data
directory (readable by the owner only) rather than made anew at each start.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "secret_key"


def load_secret_key(configured: str, data_dir: Path) -> bytes:
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir) / KEY_FILE
    if path.is_file():
        return path.read_bytes().strip()
    key = secrets.token_urlsafe(48).encode("ascii")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key)
    return key
