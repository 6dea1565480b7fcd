"""A hostile client's chunked upload, written on a raw socket: a body with no declared length,
sent until the server answers, the way httpx would never send it."""

from __future__ import annotations

import re
import select
import socket
from urllib.parse import urlsplit

FILLER = b"A" * (64 * 1024)


def chunked_post(base: str, path: str, headers: dict[str, str], total: int, head: bytes = b"",
                 filler: bytes = FILLER) -> tuple[bytes, int]:
    """POST `head` then `filler` chunks until the server answers or `total` bytes are sent.
    Returns (the start of the answer, bytes sent before it came)."""
    url = urlsplit(base)
    sent, answer = 0, b""
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{fields}"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        while sent < total and not select.select([sock], [], [], 0)[0]:
            chunk = head if sent == 0 and head else filler
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server answered and closed, or stopped reading
                break
            sent += len(chunk)
        try:
            while b"\r\n\r\n" not in answer:
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
        except OSError:  # a reset can swallow the answer: TCP drops it when unread data meets a close
            pass
    return answer, sent


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return int(match.group(1)) if match else 0


def refused_upload(base: str, path: str, headers: dict[str, str], total: int, head: bytes = b"",
                   tries: int = 3) -> tuple[int, int]:
    """(status, bytes sent) of the first try whose answer was not lost to a reset."""
    for _ in range(tries):
        answer, sent = chunked_post(base, path, headers, total, head)
        if answer:
            break
    return status_of(answer), sent
