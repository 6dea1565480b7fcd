"""Template work (reading, checking, rendering an operator's draft) off the event loop, with a time limit.

Reading a draft is pure-Python work that holds the interpreter for up to a few hundred
milliseconds; on the event loop it would stall every other request meanwhile. It runs on a
small pool of its own instead, so that it neither blocks the loop nor takes the threads other
work (image decoding, the database) waits for, and the request gets its answer within
``TIME_LIMIT_S`` whatever happens there. A thread cannot be stopped, so the work itself is
bounded too (:mod:`bot.template_limits`); the time limit is the last wall.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from bot.templates import TemplateError, TemplateIssue

WORKERS = 2
TIME_LIMIT_S = 5.0

_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="snapdesk-templates")
T = TypeVar("T")


async def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` on the template pool; a TemplateError (a limit) past the time limit."""
    future = asyncio.get_running_loop().run_in_executor(_pool, functools.partial(function, *args, **kwargs))
    try:
        return await asyncio.wait_for(future, TIME_LIMIT_S)
    except asyncio.TimeoutError:
        issue = TemplateIssue("", f"checking the template took longer than {TIME_LIMIT_S:g} s; make it shorter or "
                                  "simpler", limit=True)
        raise TemplateError(issue) from None
