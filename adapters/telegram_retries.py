"""How Snapdesk retries the Telegram Bot API, as named tenacity policies.

A request (`bot_api_request`): a flood wait is waited out as Telegram asks (unless it is
longer than we may wait inside one send), network errors, timeouts and 5xx answers are tried
again with a doubling pause, and anything else (a bad request, a blocked chat) is final.

Bringing the bot up (`bring_up`): getMe is tried until Telegram answers, however long it is
down or refuses the token, with a pause that doubles up to a minute: the rest of Snapdesk
runs meanwhile, and Telegram starts working as soon as it is back.

Long polling (`long_polling`): a round that fails (getUpdates, or storing what it fetched) is
tried again after a pause that doubles up to 30 s and starts over after a round that
succeeds; a flood wait is waited out as Telegram asks and is no failure: the pause after the
next failure is the one it would have been.

Every policy sleeps with asyncio, so cancelling its task (the adapter's stop()) ends it at once.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, RetryAfter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from .telegram_support import retry_after_seconds

log = logging.getLogger(__name__)
FLOOD_MARGIN_S = 0.05  # a little past the wait Telegram names
BRING_UP_FIRST_PAUSE_S, BRING_UP_MAX_PAUSE_S = 1.0, 60.0
POLL_FIRST_PAUSE_S, POLL_MAX_PAUSE_S = 1.0, 30.0


class UpdateNotStored(Exception):
    """A polled update could not be stored: the offset stays before it, so it is fetched again."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _pause(state: RetryCallState) -> float:
    return state.next_action.sleep if state.next_action else 0.0


def bot_api_request(what: str, *, attempts: int, backoff_s: float, max_retry_after_s: float) -> AsyncRetrying:
    """The policy for one Bot API request (`what` names it in the log)."""

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, RetryAfter):
            return retry_after_seconds(exc) <= max_retry_after_s
        return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)

    network_pause = wait_exponential(multiplier=backoff_s, exp_base=2)

    def pause(state: RetryCallState) -> float:
        exc = _failure(state)
        if isinstance(exc, RetryAfter):
            return retry_after_seconds(exc) + FLOOD_MARGIN_S
        return network_pause(state)

    def report(state: RetryCallState) -> None:
        exc = _failure(state)
        if isinstance(exc, RetryAfter):
            log.info("telegram %s: flood wait of %.1f s (try %d of %d)", what, _pause(state), state.attempt_number,
                     attempts)
        else:
            log.info("telegram %s failed (%s); trying again in %.2f s", what, type(exc).__name__, _pause(state))

    return AsyncRetrying(stop=stop_after_attempt(attempts), wait=pause, retry=retry_if_exception(retryable),
                         before_sleep=report, reraise=True)


def bring_up() -> AsyncRetrying:
    """The policy for getMe at start: any failure is tried again, for as long as it takes."""

    def report(state: RetryCallState) -> None:
        exc = _failure(state)
        if isinstance(exc, InvalidToken):
            log.error("Telegram refused the bot token (SNAPDESK_TELEGRAM_TOKEN); trying again in %.0f s",
                      _pause(state))
        else:
            log.warning("Telegram is not reachable (%s); trying again in %.0f s", type(exc).__name__, _pause(state))

    return AsyncRetrying(wait=wait_exponential(multiplier=BRING_UP_FIRST_PAUSE_S, max=BRING_UP_MAX_PAUSE_S),
                         retry=retry_if_exception_type(Exception), before_sleep=report, reraise=True)


def long_polling(poll_round: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """`poll_round` (one getUpdates, its updates stored), returning only once a round succeeds."""

    def report(state: RetryCallState) -> None:
        exc = _failure(state)
        if isinstance(exc, Conflict):
            log.warning("telegram getUpdates: another process polls this bot, or a webhook is set")
        elif isinstance(exc, InvalidToken):
            log.error("telegram getUpdates: Telegram refused the bot token (SNAPDESK_TELEGRAM_TOKEN)")
        elif isinstance(exc, UpdateNotStored):
            log.error("telegram: storing update %s failed (%s)", exc.key, type(exc.__cause__).__name__)
        else:
            log.warning("telegram getUpdates failed (%s); trying again in %.0f s", type(exc).__name__, _pause(state))

    # Flood waits are retried inside, failures outside: a flood wait is not one more failure.
    flood_waits = AsyncRetrying(retry=retry_if_exception_type(RetryAfter),
                                wait=lambda state: retry_after_seconds(state.outcome.exception()), reraise=True)
    failures = AsyncRetrying(wait=wait_exponential(multiplier=POLL_FIRST_PAUSE_S, max=POLL_MAX_PAUSE_S),
                             retry=retry_if_exception_type(Exception), before_sleep=report, reraise=True)
    return failures.wraps(flood_waits.wraps(poll_round))
