"""Growing delays between password guesses, per user name and per client address.

OWASP's authentication guidance: a hard lock lets anyone shut an account (an admin's
included) out for good by mistyping its password on purpose, so nothing is ever locked.
Instead, after a few free failures each further try for the same *name* must wait, and the
wait doubles with every failure up to a cap; the same holds per client address, with more
free failures (an office behind one address). During a wait a try is refused without
looking at the password, so a guess costs the attacker time while the owner gets in once
it has passed.

State is keyed by the name as typed, whether or not such an account exists, so the answers
cannot tell real names from made-up ones. A try is counted as a failure when it starts and
taken back when it succeeds, so a burst of parallel guesses is throttled like a sequence.
It lives in memory: a restart forgets it, as it forgets the per-minute rate limits.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5  # per user name
    free_failures_per_ip: int = 20
    first_delay_s: float = 1.0
    max_delay_s: float = 300.0

    @property
    def forget_after_s(self) -> float:
        """A key with no failure for this long starts again from zero."""
        return max(3600.0, 4 * self.max_delay_s)

    def delay(self, failures: int, free: int) -> float:
        if failures < free:
            return 0.0
        return min(self.max_delay_s, self.first_delay_s * 2 ** min(failures - free, 60))


class _Entry:
    __slots__ = ("failures", "last", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0
        self.until = 0.0


class LoginThrottle:
    def __init__(self, policy: ThrottlePolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.policy = policy or ThrottlePolicy()
        self.clock = clock
        self.max_keys = max_keys
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def begin(self, name: str, client: str) -> int:
        """Start a password try: 0 when it may go ahead (it now counts as a failure until
        `succeeded`), else the whole seconds still to wait, for the name or the address."""
        now = self.clock()
        keys = (("name", name), ("ip", client))
        entries = [self._entry(key, now) for key in keys]
        wait = max(entry.until - now for entry in entries)
        if wait > 0:
            return max(1, math.ceil(wait))
        for (kind, _), entry in zip(keys, entries):
            entry.failures += 1
            entry.last = now
            free = self.policy.free_failures if kind == "name" else self.policy.free_failures_per_ip
            delay = self.policy.delay(entry.failures, free)
            entry.until = now + delay if delay else 0.0
        return 0

    def succeeded(self, name: str, client: str) -> None:
        """The right password: the name starts again from zero; the address only gets back the
        failure `begin` counted (signing in to one's own account must not clear its guesses)."""
        self._entries.pop(("name", name), None)
        entry = self._entries.get(("ip", client))
        if entry is not None:
            entry.failures = max(0, entry.failures - 1)
            delay = self.policy.delay(entry.failures, self.policy.free_failures_per_ip)
            entry.until = entry.last + delay if delay else 0.0

    def failures(self, name: str) -> int:
        entry = self._entries.get(("name", name))
        return entry.failures if entry else 0

    def _entry(self, key: tuple[str, str], now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or (entry.failures and now - entry.last > self.policy.forget_after_s and now >= entry.until):
            entry = _Entry()
            self._entries[key] = entry
            if len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry
