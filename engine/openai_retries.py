"""How a remote request is tried again, as a named tenacity policy.

Only a failure before the first token is worth another try (`RetryableFailure`): once text
was streamed, repeating the request would deliver it twice. Tries are spaced by a doubling
pause, and a pause that would end past the caller's deadline is not taken: the caller gets
the last failure at once instead of waiting for a try that could not finish in time.
"""

from __future__ import annotations

import time

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_any, wait_exponential

from .base import EngineError, EngineOverloaded, EngineTimeout


class RetryableFailure(Exception):
    """An attempt failed before any token arrived: another endpoint may answer.

    `mark_down`: the endpoint should be skipped for a while. `same_endpoint_ok`: the next try
    may go to this endpoint again when no other is left (not after it failed on this request
    itself, e.g. with a 500).
    """

    def __init__(self, reason: str, *, mark_down: bool, timeout: bool = False, overloaded: bool = False,
                 same_endpoint_ok: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mark_down = mark_down
        self.timeout = timeout
        self.overloaded = overloaded
        self.same_endpoint_ok = same_endpoint_ok

    def engine_error(self) -> EngineError:
        """What the caller sees when this was the last try."""
        message = f"no inference server could answer: {self.reason}"
        if self.timeout:
            return EngineTimeout(message)
        if self.overloaded:
            return EngineOverloaded(message)
        return EngineError(message)


def remote_request(*, attempts: int, backoff_s: float, deadline: float | None) -> AsyncRetrying:
    """The policy for one request: `attempts` tries at most, `backoff_s` before the second,
    doubling, none that would start at or after `deadline` (`time.monotonic()`; None: no deadline).

    The last failure is raised as it is; cancellation is never caught.
    """
    stop = stop_after_attempt(attempts)
    if deadline is not None:
        stop = stop_any(stop, _sleep_reaching(deadline))
    return AsyncRetrying(stop=stop, wait=wait_exponential(multiplier=backoff_s, exp_base=2),
                         retry=retry_if_exception_type(RetryableFailure), reraise=True)


def _sleep_reaching(deadline: float):
    def stop(state: RetryCallState) -> bool:
        return time.monotonic() + state.upcoming_sleep >= deadline

    return stop
