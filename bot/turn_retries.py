"""How a turn is tried again, as named tenacity policies.

Two different failures, two different waits. A turn that fails on something transient (a
locked or full disk, an I/O error) is tried again after a few fixed pauses and then left
pending, for the periodic round or the next start. A turn that finds the engine's queue
full waits with a doubling pause (the user keeps seeing the typing indicator) until its
deadline, and then goes to a person.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_chain,
    wait_exponential,
    wait_fixed,
)

from engine.base import EngineOverloaded

log = logging.getLogger(__name__)

TURN_RETRY_PAUSES_S = (0.5, 2.0, 5.0)
# Pauses between tries while the engine queue is full (doubling up to the maximum).
BUSY_FIRST_PAUSE_S = 0.25
BUSY_MAX_PAUSE_S = 2.0


def retry_turn(message_id: int) -> AsyncRetrying:
    """The policy for the turn of message `message_id`: any failure is tried again after each
    of `TURN_RETRY_PAUSES_S`, then raised."""
    pauses = TURN_RETRY_PAUSES_S

    def report(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("message %d failed (%s); trying again in %.1f s", message_id, type(exc).__name__, wait)

    def give_up(state: RetryCallState):
        exc = state.outcome.exception() if state.outcome else None
        log.error("message %d could not be answered (%s); it stays pending until restart",
                  message_id, type(exc).__name__)
        return state.outcome.result()  # raises the last failure

    return AsyncRetrying(stop=stop_after_attempt(len(pauses) + 1), wait=wait_chain(*map(wait_fixed, pauses)),
                         retry=retry_if_exception_type(Exception), before_sleep=report,
                         retry_error_callback=give_up)


def wait_for_engine_room(deadline: float, on_busy: Callable[[], None]) -> AsyncRetrying:
    """The policy for getting a request into a full engine queue: only `EngineOverloaded` is
    tried again, after `on_busy`, with a pause doubling from `BUSY_FIRST_PAUSE_S` up to
    `BUSY_MAX_PAUSE_S`; never sleeping past `deadline` (event-loop time), where the last
    `EngineOverloaded` is raised."""
    loop = asyncio.get_running_loop()
    doubling = wait_exponential(multiplier=BUSY_FIRST_PAUSE_S, max=BUSY_MAX_PAUSE_S)

    def left() -> float:
        return deadline - loop.time()

    return AsyncRetrying(retry=retry_if_exception_type(EngineOverloaded), stop=lambda state: left() <= 0,
                         wait=lambda state: max(0.0, min(doubling(state), left())),
                         before_sleep=lambda state: on_busy(), reraise=True)
