"""One asyncio lock per key (a conversation, a chat), for work that must not interleave for
the same key while different keys run freely. A key's lock lives only while someone holds or
waits for it, so a server that has seen a million chats keeps no million locks."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._users: dict[Hashable, int] = {}

    def busy(self, key: Hashable) -> bool:
        """Someone holds or waits for `key`'s lock."""
        return key in self._users

    @asynccontextmanager
    async def __call__(self, key: Hashable) -> AsyncIterator[None]:
        self._users[key] = self._users.get(key, 0) + 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key], self._locks[key]
