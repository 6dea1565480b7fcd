"""The support questions and synthetic screenshots the benchmarks send.

One set for every benchmark, so that figures from the CPU benchmarks and the GPU benchmark
describe the same kind of traffic. Light on purpose (PIL only): bench/gpu.py imports it
before it decides which heavy libraries to load.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

QUESTIONS = (
    "Why was I charged?",
    "为什么扣我钱?",
    "What does CARD_DECLINED (E-4012) mean?",
    "Where is my parcel?",
    "My router light is solid red, what should I do?",
    "I am locked out of my account.",
    "How do I turn off auto-renew?",
    "The app says my payment failed, but the bank shows the charge.",
)


def screenshot(width: int, height: int, text: str) -> Image.Image:
    """A light page of text rows with a red banner: what a billing or error screen looks like."""
    image = Image.new("RGB", (width, height), (246, 247, 249))
    draw = ImageDraw.Draw(image)
    for row in range(0, height, max(height // 40, 12)):
        draw.text((width // 20, row), f"{text}  row {row}  Payment failed  CARD_DECLINED (E-4012)", fill=(20, 20, 20))
    draw.rectangle((width // 2, height // 8, width - width // 10, height // 4), fill=(200, 40, 40))
    return image


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
