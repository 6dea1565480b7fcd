"""Reading screenshots locally: speed, memory, and how well the corpus is redacted and read.

`ocr_ms_1080p` and `ocr_cpu_s_1080p` come from the corpus's 1920x1080 screens (the median of
their readings); `turn_overhead_ms_ocr` is what reading adds to a whole turn with one such
screenshot (the same conversation core with OCR on and off, the same instant engine, in one
run); `ocr_peak_rss_mb` is the peak resident memory of a fresh process that loads the reader and
reads one 1080p screenshot, less that of one that only imports the same modules.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .figures import Figure
from .screenshot_corpus import samples
from .screenshot_eval import score, totals

TURNS = 5

# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's size when it was forked.
_RSS_SCRIPT = """
import re, sys
from engine.ocr import OcrReader
from PIL import Image
import onnxruntime, rapidocr
if sys.argv[1] == "read":
    reader = OcrReader(workers=1)
    reader.load()
    reader.read_sync(Image.open(sys.argv[2]).convert("RGB"))
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def _peak_rss_mb(image_path: Path) -> float:
    def peak(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, mode, str(image_path)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        return int(out.stdout.strip().splitlines()[-1])

    return (peak("read") - peak("import")) / 1024


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def _turn_seconds(data_dir: Path, reader, screenshot: bytes) -> list[float]:
    from bot.conversation import ConversationManager, ManagerOptions
    from bot.escalation import EscalationPolicy
    from bot.messages import ChannelRegistry, Inbound
    from bot.screenshots import ReadingOptions
    from bot.store import Store
    from bot.template_versions import PublishedTemplates
    from bot.templates import TemplateLibrary
    from engine.stub import StubEngine

    class Quiet:
        name = "widget"

        async def send(self, conversation, outbound) -> None:
            return None

    engine = StubEngine(reply="That is the renewal of your membership.")
    engine.start()
    store = Store(data_dir)
    templates = PublishedTemplates(store, TemplateLibrary())
    templates.seed()
    channels = ChannelRegistry()
    channels.register(Quiet())
    manager = ConversationManager(store, engine, templates, EscalationPolicy(), channels, ManagerOptions(),
                                  reader=reader, reading=ReadingOptions(ocr=reader is not None))
    seconds = []
    for turn in range(TURNS):
        inbound = Inbound(channel="widget", conversation_key=f"bench-{turn}", message_id=f"bench-{turn}",
                          user_id="bench", user_name="Bench", text="Why was I charged?", images=(screenshot,))
        started = time.perf_counter()
        await manager.handle(inbound)
        seconds.append(time.perf_counter() - started)
    manager.close()
    engine.close()
    return seconds


def run() -> list[Figure]:
    from engine.ocr import OcrReader

    reader = OcrReader(workers=1)
    reader.load()
    corpus = samples()
    readable = [s for s in corpus if not (s.unreadable or s.textless)]
    scores = [score(s, reader) for s in readable]
    figures = totals(scores)

    desktop = [s for s in corpus if s.image.size == (1920, 1080) and not s.unreadable]
    wall, cpu = [], []
    for sample in desktop:
        image = sample.image.convert("RGB")
        started, started_cpu = time.perf_counter(), time.process_time()
        reader.read_sync(image)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)

    screenshot = _png(desktop[0].image)
    with tempfile.TemporaryDirectory() as on_dir, tempfile.TemporaryDirectory() as off_dir:
        with_ocr = asyncio.run(_turn_seconds(Path(on_dir), reader, screenshot))
        without = asyncio.run(_turn_seconds(Path(off_dir), None, screenshot))
        image_path = Path(on_dir) / "screen.png"
        image_path.write_bytes(screenshot)
        rss = _peak_rss_mb(image_path)
    reader.close()

    return [
        Figure("ocr_ms_1080p", round(statistics.median(wall) * 1000, 1), "",
               f"median wall time to read one 1920x1080 corpus screenshot ({len(desktop)} screens)"),
        Figure("ocr_cpu_s_1080p", round(statistics.median(cpu), 2), "",
               "median CPU seconds (all threads) to read one 1920x1080 screenshot"),
        Figure("redaction_recall", round(figures["redaction_recall"], 3), ">= 1.0",
               f"sensitive items painted over and unreadable when read again ({figures['sensitive_items']:.0f} items)"),
        Figure("redaction_false_positives", figures["redaction_false_positives"], "<= 0",
               "painted boxes that cover no sensitive item (Luhn-valid order and tracking numbers included)"),
        Figure("evidence_recall", round(figures["evidence_recall"], 3), ">= 0.95",
               f"error codes, amounts, orders, tracking numbers, dates and titles found "
               f"({figures['evidence_items']:.0f} items)"),
        Figure("turn_overhead_ms_ocr", round((statistics.median(with_ocr) - statistics.median(without)) * 1000, 1), "",
               "what reading adds to a turn with one 1080p screenshot (median of turns with OCR on minus off)"),
        Figure("ocr_peak_rss_mb", round(rss, 1), "", "peak memory the reader adds to a process (load + one 1080p read)"),
    ]
