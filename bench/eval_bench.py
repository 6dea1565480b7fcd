"""How fast `snapdesk eval` gets through the shipped regression sets, on the tiny model.

A CI pipeline runs every template's set on each change, so the rate decides how long it waits.
Each shipped template's set (prompts/cases/) runs as `snapdesk eval TEMPLATE` runs it: the
live version, the same plan, turn, checks and figures, OCR as configured (SNAPDESK_OCR, on by
default: each screenshot is decoded, read and redacted once per run however many cases share
it). Only the model differs: the tiny random-weight checkpoint, its answers capped at
MAX_NEW_TOKENS tokens, so the figure is Snapdesk's own cost around a model, not a model's speed.

Counted in eval_cases_per_min: every case of every set, the ones that call the model and the
ones settled before it (a request for a person, a sensitive topic, only unreadable
screenshots), over the time from the first case to the last; loading the model and the OCR
reader happens once per pipeline job and is left out.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from bot.engine_setup import make_engine, make_manager
from bot.eval_cli import load, plan, run_set
from bot.messages import ChannelRegistry
from bot.regression.cases import SHIPPED_DIRECTORY, shipped_cases
from bot.settings import Settings
from bot.templates import TemplateLibrary
from engine.tiny import build_tiny_checkpoint

from .figures import Figure

MAX_NEW_TOKENS = 32


def run() -> list[Figure]:
    names = [name for name in TemplateLibrary().names() if shipped_cases(name)]
    if not names:
        print(f"eval_bench: skipped, no shipped regression sets in {SHIPPED_DIRECTORY} yet", flush=True)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model=str(build_tiny_checkpoint(f"{tmp}/model")), data_dir=f"{tmp}/data",
                            max_new_tokens=MAX_NEW_TOKENS)
        engine = make_engine(settings)
        manager = make_manager(settings, engine, ChannelRegistry())
        plans = [plan(manager, name) for name in names]
        reader = manager.screenshots.reader

        async def measure() -> tuple[list, float, int]:
            await load(engine, manager)
            read_before = reader.stats["read"] if reader is not None else 0
            started = time.perf_counter()
            rows = [row for chosen in plans for row in await run_set(chosen, manager, settings)]
            elapsed = time.perf_counter() - started
            return rows, elapsed, (reader.stats["read"] if reader is not None else 0) - read_before

        try:
            rows, elapsed, read = asyncio.run(measure())
        finally:
            engine.close()
            if reader is not None:
                reader.close()
            manager.close()
            manager.store.close()
    called = sum(1 for _, result, _ in rows if result.model_called)
    ocr = "on" if settings.ocr else "off"
    return [
        Figure("eval_cases_per_min", len(rows) / elapsed * 60, "",
               f"regression cases a minute over the {len(names)} shipped sets, tiny model (answers up to "
               f"{MAX_NEW_TOKENS} tokens), OCR {ocr}: {called} called the model, {len(rows) - called} settled "
               "before it; loading left out"),
        Figure("eval_cases", len(rows), "", f"cases in the shipped sets ({', '.join(names)})"),
        Figure("eval_screenshots_read_per_run", read, "",
               f"screenshots read by OCR in that run (OCR {ocr}), each once however many cases share it"),
    ]
