"""How Snapdesk retries the Telegram Bot API, as named tenacity policies.

A request (`bot_api_request`): a flood wait is waited out as Telegram asks (unless it is
longer than we may wait inside one send), network errors, timeouts and 5xx answers are tried
again with a doubling pause, and anything else (a bad request, a blocked chat) is final.
"""

from __future__ import annotations

import logging

from telegram.error import BadRequest, NetworkError, RetryAfter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .telegram_support import retry_after_seconds

log = logging.getLogger(__name__)
FLOOD_MARGIN_S = 0.05  # a little past the wait Telegram names


def bot_api_request(what: str, *, attempts: int, backoff_s: float, max_retry_after_s: float) -> AsyncRetrying:
    """The policy for one Bot API request (`what` names it in the log)."""

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, RetryAfter):
            return retry_after_seconds(exc) <= max_retry_after_s
        return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)

    network_pause = wait_exponential(multiplier=backoff_s, exp_base=2)

    def pause(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryAfter):
            return retry_after_seconds(exc) + FLOOD_MARGIN_S
        return network_pause(state)

    def report(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(exc, RetryAfter):
            log.info("telegram %s: flood wait of %.1f s (try %d of %d)", what, wait, state.attempt_number, attempts)
        else:
            log.info("telegram %s failed (%s); trying again in %.2f s", what, type(exc).__name__, wait)

    return AsyncRetrying(stop=stop_after_attempt(attempts), wait=pause, retry=retry_if_exception(retryable),
                         before_sleep=report, reraise=True)
