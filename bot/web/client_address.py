"""Who is on the other end of a request, for per-address limits.

The connecting address is the client unless it is one of `SNAPDESK_TRUSTED_PROXIES`; only
then are forwarded headers believed (uvicorn's proxy-header handling, configured in
`app.server_config`). IPv6 clients are counted per /64, the block one subscriber usually
holds, so rotating addresses inside it does not buy more requests.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection


def client_ip(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else "unknown"


def limit_key(address: str) -> str:
    """The key an address is rate-limited under: the address itself, or its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{parsed}/64", strict=False))
    return str(parsed)


def client_key(connection: HTTPConnection) -> str:
    """The rate-limit key of the request's client."""
    return limit_key(client_ip(connection))
