"""Whether a screenshot holds enough detail to be read at all.

An image with no text found may be a clear photo (a router's lights: the model can answer) or a
screenshot nobody could read (blurred, nearly black, a thumbnail). The two differ in sharpness
(how strong the edges are) and contrast (how far apart dark and light are), both measured on a
grey copy at a fixed size so a phone photo and a desktop capture are judged alike. The
thresholds are calibrated on the project's screenshot corpus (bench/screenshot_corpus.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MEASURE_SIDE = 640  # the longer side of the grey copy that is measured
# Calibrated on bench/screenshot_corpus.py (99th-percentile Laplacian / 1st-99th percentile
# spread, grey levels, at MEASURE_SIDE): readable screens 90-290 / 30-230, a loading skeleton
# 18 / 18, a router photo 33 / 156; a blurred statement 5 / 48, a too-dark screen 4 / 3.
MAX_SIDE_OF_A_THUMBNAIL = 200  # both sides below this: a thumbnail, not a screen
MIN_SHARPNESS = 10.0
MIN_CONTRAST = 8.0

MESSAGES = {
    "en": "I couldn't read that screenshot: it looks too blurred, dark or small. "
    "Could you send a clearer screenshot? I've also asked a person to look.",
    "zh": "这张截图看不清（可能太模糊、太暗或太小），我无法读取。能否发送一张更清晰的截图？我也已请同事查看。",
}


@dataclass(frozen=True)
class Readability:
    sharpness: float
    contrast: float
    too_small: bool

    @property
    def detailed(self) -> bool:
        """Enough detail that a person could make something out, text or not."""
        return not self.too_small and self.sharpness >= MIN_SHARPNESS and self.contrast >= MIN_CONTRAST

    def as_dict(self) -> dict:
        return {"sharpness": round(self.sharpness, 2), "contrast": round(self.contrast, 2), "too_small": self.too_small}


def measure(image: Image.Image) -> Readability:
    grey = image.convert("L")
    too_small = max(grey.size) < MAX_SIDE_OF_A_THUMBNAIL
    scale = MEASURE_SIDE / max(grey.size)
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float32)
    if pixels.shape[0] < 3 or pixels.shape[1] < 3:
        return Readability(0.0, 0.0, True)
    laplacian = (
        pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4 * pixels[1:-1, 1:-1]
    )
    edges = np.abs(laplacian)
    # The strongest edges decide (a page of text is mostly flat background).
    sharpness = float(np.percentile(edges, 99))
    low, high = np.percentile(pixels, [1, 99])
    return Readability(sharpness, float(high - low), too_small)


def unreadable_message(language: str) -> str:
    return MESSAGES.get(language, MESSAGES["en"])
