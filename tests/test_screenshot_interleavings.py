"""Staged screenshots under any interleaving: attached once, redacted, never lost.

A message's screenshots can be finished by its own task, by its turn, by the recovery after a
restart, or by several of them at once. Whatever the order, each accepted message ends with
its screenshots attached exactly once (redacted), one answer, and nothing left in staging.
"""

from __future__ import annotations

import asyncio
import io
import json

from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, ImageDraw, ImageFont

from tests.test_screenshot_flow import FONT, inbound, make, reader  # noqa: F401 (the module's OCR reader)

CARD = "5425 2334 3010 9903"


def small_statement(n: int) -> bytes:
    image = Image.new("RGB", (560, 120), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 22)
    draw.text((12, 12), f"Invoice {n}: $1{n}.00", font=font, fill="black")
    draw.text((12, 60), f"Card {CARD}", font=font, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


SHOTS = [small_statement(n) for n in range(3)]

# Each step: (message index, what runs it: its task / its turn / a plain finish / a pause / a crash and restart).
steps = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["process", "finish", "turn", "pause", "crash"])),
                 min_size=1, max_size=8)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps, images=st.lists(st.integers(1, 2), min_size=3, max_size=3))
def test_any_interleaving_attaches_each_screenshot_once(tmp_path_factory, reader, plan, images):
    asyncio.run(_run(tmp_path_factory.mktemp("interleave"), reader, plan, images))


async def _run(data_dir, reader, plan, images) -> None:
    manager, _, _ = make(data_dir, reader)
    accepted = [await manager.accept(inbound(tuple(SHOTS[:count]), key=f"visitor-{i}"))
                for i, count in enumerate(images)]
    running: list[asyncio.Task] = []
    for index, action in plan:
        target = accepted[index].message_id
        if action == "crash":  # the process dies wherever its work is, and starts again
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            running = []
            manager.close()
            manager, _, _ = make(data_dir, reader)
            running.append(asyncio.ensure_future(manager.recover()))
        elif action == "pause":
            await asyncio.sleep(0.05 * (index + 1))
        elif action == "process":
            running.append(asyncio.ensure_future(manager.process(target)))
        elif action == "turn":
            running.append(asyncio.ensure_future(manager.turns.process(target)))
        else:
            running.append(asyncio.ensure_future(manager.screenshots.finish(target)))
    await asyncio.gather(*running)
    await manager.recover()  # whatever the plan left, a start finishes it

    store = manager.store
    for message, count in zip(accepted, images):
        row = store.message(message.message_id)
        ids = json.loads(row["attachment_ids"])
        assert len(ids) == count, (row, count)
        for attachment in store.attachments(ids).values():
            assert [r["kind"] for r in attachment.reading["redactions"]] == ["card"]
        replies = [r for r in store.messages(row["conversation_id"]) if r.get("reply_to") == message.message_id]
        assert sorted(r["kind"] for r in replies if r["kind"] in ("answer", "handover")) in (["answer"], ["handover"])
    assert store.staged_images() == []
    assert list((data_dir / "staging").iterdir()) == []
    manager.close()
