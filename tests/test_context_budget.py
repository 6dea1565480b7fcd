"""The prompt never passes the context budget: the builder's count is an upper bound of the
real prompt, measured by the tiny Qwen3-VL checkpoint's own processor and chat template."""

from __future__ import annotations

import pytest

from bot.context import ContextBuilder, ContextOptions
from engine.base import SamplingParams

EDGES = ["Hello there", "  \n\nHello there   ", "\n\n\n", "回答：  你好 \n", "x\r\n\r\n", " ]\n[ ", "🙂 ok 🙂\n"]


def history(turns: int) -> list[dict]:
    rows = []
    for turn in range(turns):
        for role in ("user", "bot"):
            rows.append({"id": len(rows) + 1, "role": role, "text": f"{EDGES[turn % len(EDGES)]}{turn}"
                         f"{EDGES[(turn + 3) % len(EDGES)]}", "created_at": "2026-12-07T09:00:00+00:00"})
    return rows


@pytest.mark.parametrize("budget", [240, 400, 800])
async def test_the_counted_prompt_is_never_smaller_than_the_real_one(engine, budget):
    builder = ContextBuilder(engine, ContextOptions(budget_tokens=budget))
    rows = history(40)
    new = {"id": 999, "role": "user", "text": "  Why was I charged 88?  \n", "created_at": "2026-12-07T10:00:00+00:00"}
    request, stats = builder.build("You are Snapdesk's support assistant.\n", rows, new, {}, max_new_tokens=1,
                                   sampling=SamplingParams())
    assert stats.history_messages > 2, "the budget should leave room for some history"
    generation = await engine.generate(request, timeout=60)
    assert generation.prompt_tokens <= stats.prompt_tokens_estimate <= budget
