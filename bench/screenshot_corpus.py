"""Support screenshots drawn here, so that every string, box and sensitivity in them is known.

Reading screenshots (OCR), painting over personal data, pulling evidence out of them and noticing
unreadable ones all need realistic inputs with exact ground truth. Collected screenshots would carry
real people's data and nobody's exact boxes; these are drawn with Pillow from Debian's fonts, with
documented test card numbers or generated Luhn-valid ones, reserved e-mail domains and fictional
phone numbers. Drawing is deterministic, so `bench/data/screenshot_truth.json` (committed) stays the
truth of what is drawn, and a difference is a change someone made, not noise.

    python -m bench.screenshot_corpus OUT_DIR    # the images and their truth.json
    python -m bench.screenshot_corpus --check    # exit 1 when the committed truth is stale
    python -m bench.screenshot_corpus --update   # rewrite the committed truth
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import random
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

TRUTH = Path(__file__).resolve().parent / "data" / "screenshot_truth.json"
SENSITIVE_KINDS = frozenset({"card", "iban", "email", "phone", "code"})
EVIDENCE_KINDS = frozenset({"error_code", "amount", "order", "tracking", "date", "title"})


# --- ground truth -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One piece of a drawn string that matters: personal data to paint over, or evidence to read."""
    kind: str
    value: str
    box: tuple[int, int, int, int]
    sensitive: bool
    luhn_valid: bool = False


@dataclass(frozen=True)
class Drawn:
    text: str
    box: tuple[int, int, int, int]
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Sample:
    name: str
    image: Image.Image
    strings: tuple[Drawn, ...]
    language: str
    textless: bool
    unreadable: bool
    tags: tuple[str, ...]


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def luhn_fill(pattern: str) -> str:
    """`pattern` with its one '?' replaced by the digit that makes its digits pass Luhn: card-like
    numbers that belong to nobody, ending where a scene needs them to (e.g. a masked '1881')."""
    for digit in "0123456789":
        candidate = pattern.replace("?", digit)
        if luhn_ok("".join(c for c in candidate if c.isdigit())):
            return candidate
    raise ValueError(pattern)


def _card_like_runs(value: str) -> list[str]:
    """Digit runs of card length in `value`: each run of bare digits, and digit groups joined by single
    spaces or hyphens (how card numbers are written)."""
    grouped = [re.sub(r"[ -]", "", run) for run in re.findall(r"\d+(?:[ -]\d+)+", value)]
    return [run for run in re.findall(r"\d+", value) + grouped if 13 <= len(run) <= 19]


def _item(kind: str, value: str, box: tuple[int, int, int, int]) -> Item:
    if kind not in SENSITIVE_KINDS | EVIDENCE_KINDS:
        raise ValueError(kind)
    decoy = kind in ("order", "tracking") and any(luhn_ok(run) for run in _card_like_runs(value))
    return Item(kind, value, box, kind in SENSITIVE_KINDS, decoy)


# --- fonts --------------------------------------------------------------------------------------

FONT_DIR = Path("/usr/share/fonts")
_FONT_FILES = {
    "sans": "truetype/dejavu/DejaVuSans.ttf",
    "sans-bold": "truetype/dejavu/DejaVuSans-Bold.ttf",
    "mono": "truetype/dejavu/DejaVuSansMono.ttf",
    "cjk": "opentype/noto/NotoSansCJK-Regular.ttc",
    "cjk-bold": "opentype/noto/NotoSansCJK-Bold.ttc",
}
_SIMPLIFIED_CHINESE_FACE = 2  # in the Noto Sans CJK collections: JP, KR, SC, TC, HK


@functools.cache
def font(face: str, size: int) -> ImageFont.FreeTypeFont:
    """Pillow's basic layout on purpose: with or without libraqm, every machine places glyphs alike."""
    path = FONT_DIR / _FONT_FILES[face]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the screenshot corpus draws with Debian's fonts: "
                                "apt-get install fonts-noto-cjk fonts-dejavu")
    index = _SIMPLIFIED_CHINESE_FACE if path.suffix == ".ttc" else 0
    return ImageFont.truetype(str(path), size, index=index, layout_engine=ImageFont.Layout.BASIC)


def _has_cjk(text: str) -> bool:
    return any("\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef" for char in text)


def _face(text: str, bold: bool, mono: bool) -> str:
    if _has_cjk(text):
        return "cjk-bold" if bold else "cjk"
    if mono:
        return "mono"
    return "sans-bold" if bold else "sans"


# --- drawing a screen ---------------------------------------------------------------------------

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Theme:
    page: Color
    surface: Color
    text: Color
    muted: Color
    line: Color
    accent: Color
    danger: Color
    success: Color
    on_accent: Color


LIGHT = Theme(page=(245, 246, 248), surface=(255, 255, 255), text=(28, 30, 34), muted=(104, 111, 122),
              line=(224, 227, 232), accent=(37, 99, 235), danger=(214, 40, 40), success=(22, 150, 74),
              on_accent=(255, 255, 255))
DARK = Theme(page=(16, 17, 19), surface=(30, 31, 35), text=(234, 236, 240), muted=(150, 155, 165),
             line=(52, 55, 60), accent=(96, 160, 250), danger=(248, 113, 113), success=(74, 210, 128),
             on_accent=(12, 14, 18))
# A phone at lowest brightness in a dark room: every colour within four levels of the background.
NIGHT = Theme(page=(9, 9, 11), surface=(10, 10, 12), text=(13, 13, 15), muted=(12, 12, 14), line=(11, 11, 13),
              accent=(12, 12, 15), danger=(13, 11, 11), success=(10, 12, 11), on_accent=(9, 9, 11))


def _pixel_box(box: Iterable[float]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


class Screen:
    """A page drawn in logical units (points on a phone, pixels on a desktop) that records every
    string it draws, with the tight pixel box of each one and of each item inside it."""

    def __init__(self, size: tuple[int, int], scale: int = 1, theme: Theme = LIGHT):
        self.size, self.scale, self.theme = size, scale, theme
        self.width, self.height = size[0] // scale, size[1] // scale
        self.image = Image.new("RGB", size, theme.page)
        self.draw = ImageDraw.Draw(self.image)
        self.strings: list[Drawn] = []

    def text(self, x: float, y: float, text: str, size: float = 15, *, bold: bool = False, mono: bool = False,
             color: Color | None = None, kind: str | None = None, items: Iterable[tuple[str, str]] = (),
             align: str = "left") -> Drawn:
        """Draws `text` with its top-left (or top-right, top-centre) at x, y. `kind` makes the whole
        text one item; `items` names substrings as (kind, value), boxed where they are drawn."""
        face = font(_face(text, bold, mono), round(size * self.scale))
        width = face.getlength(text)
        left = x * self.scale - {"left": 0, "right": width, "center": width / 2}[align]
        top = y * self.scale
        self.draw.text((left, top), text, font=face, fill=color or self.theme.text)
        wanted = ([(kind, text)] if kind else []) + list(items)
        found = []
        for item_kind, value in wanted:
            start = text.index(value)
            box = self.draw.textbbox((left + face.getlength(text[:start]), top), value, font=face)
            found.append(_item(item_kind, value, _pixel_box(box)))
        drawn = Drawn(text, _pixel_box(self.draw.textbbox((left, top), text, font=face)), tuple(found))
        self.strings.append(drawn)
        return drawn

    def box(self, x0: float, y0: float, x1: float, y1: float, fill: Color | None = None,
            outline: Color | None = None, radius: float = 0, width: float = 1) -> None:
        corners = [round(v * self.scale) for v in (x0, y0, x1, y1)]
        self.draw.rounded_rectangle(corners, radius=round(radius * self.scale), fill=fill, outline=outline,
                                    width=max(1, round(width * self.scale)))

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color | None = None, width: float = 1) -> None:
        self.draw.line([round(v * self.scale) for v in (x0, y0, x1, y1)], fill=color or self.theme.line,
                       width=max(1, round(width * self.scale)))

    def circle(self, cx: float, cy: float, r: float, fill: Color) -> None:
        self.draw.ellipse([round(v * self.scale) for v in (cx - r, cy - r, cx + r, cy + r)], fill=fill)

    def sample(self, name: str, language: str, *tags: str) -> Sample:
        return Sample(name, self.image, tuple(self.strings), language, False, False, tags)


def _phone(size: tuple[int, int] = (1080, 2340), theme: Theme = LIGHT) -> Screen:
    """A phone screen (3x for 1080 wide, 2x for 750) with its status bar."""
    screen = Screen(size, 3 if size[0] >= 1000 else 2, theme)
    screen.text(24, 14, "9:41", 15, bold=True)
    right = screen.width - 20
    screen.box(right - 26, 17, right - 2, 29, outline=theme.text, radius=3)
    screen.box(right - 24, 19, right - 8, 27, fill=theme.text, radius=1)
    for bar in range(4):
        screen.box(right - 58 + bar * 5, 27 - bar * 3, right - 55 + bar * 5, 29, fill=theme.text)
    return screen


def _app_bar(screen: Screen, title: str, y: float = 48) -> float:
    """A phone app's top bar: back chevron and the screen's title. Returns the y below it."""
    screen.line(22, y + 14, 14, y + 22, screen.theme.accent, 2.5)
    screen.line(14, y + 22, 22, y + 30, screen.theme.accent, 2.5)
    screen.text(screen.width / 2, y + 11, title, 17, bold=True, kind="title", align="center")
    screen.line(0, y + 44, screen.width, y + 44)
    return y + 60


def _browser(screen: Screen, tab: str, url: str) -> float:
    """A desktop browser's tab strip and address bar. Returns the y where the page starts."""
    theme = screen.theme
    screen.box(0, 0, screen.width, 84, fill=theme.line)
    screen.box(76, 8, 336, 40, fill=theme.page, radius=8)
    screen.text(96, 16, tab, 13, color=theme.text)
    for i, colour in enumerate(((237, 106, 94), (245, 191, 79), (97, 197, 84))):
        screen.circle(20 + i * 18, 24, 6, colour)
    screen.box(0, 40, screen.width, 84, fill=theme.page)
    screen.box(120, 48, screen.width - 120, 76, fill=theme.surface, radius=14)
    screen.text(146, 54, url, 14, color=theme.muted)
    return 84


def _web_page(size: tuple[int, int], tab: str, url: str, at: tuple[float, float], title: str, title_size: float,
              theme: Theme = LIGHT) -> tuple[Screen, float]:
    """A desktop browser showing a page with the screen's title at `at` (below the address bar).
    Returns the screen and where the page starts."""
    s = Screen(size, theme=theme)
    top = _browser(s, tab, url)
    s.text(at[0], top + at[1], title, title_size, bold=True, kind="title")
    return s, top


def _button(screen: Screen, x0: float, y0: float, x1: float, y1: float, label: str, primary: bool = True,
            size: float = 15) -> None:
    theme = screen.theme
    if primary:
        screen.box(x0, y0, x1, y1, fill=theme.accent, radius=8)
    else:
        screen.box(x0, y0, x1, y1, outline=theme.line, radius=8, width=1.5)
    screen.text((x0 + x1) / 2, (y0 + y1) / 2 - size * 0.62, label, size, bold=True,
                color=theme.on_accent if primary else theme.accent, align="center")


def _panel(screen: Screen, x0: float, y0: float, x1: float, y1: float) -> None:
    screen.box(x0, y0, x1, y1, fill=screen.theme.surface, outline=screen.theme.line, radius=12)


def _field(screen: Screen, x0: float, x1: float, y: float, label: str, value: str, kind: str | None) -> None:
    """A form's input with its label above it, filled in."""
    screen.text(x0, y, label, 13, color=screen.theme.muted)
    screen.box(x0, y + 22, x1, y + 66, fill=screen.theme.surface, outline=screen.theme.line, radius=6)
    screen.text(x0 + 16, y + 34, value, 16, kind=kind)


Row = tuple[str, str, str | None]  # label, value, kind of the value (None: not an item)


def _rows(screen: Screen, x0: float, x1: float, y: float, rows: Iterable[Row], size: float = 15,
          step: float = 36, divider: bool = True) -> float:
    """Label on the left, value on the right, one row per line: a detail page's fields. Returns the y below."""
    for label, value, kind in rows:
        screen.text(x0, y, label, size, color=screen.theme.muted)
        screen.text(x1, y, value, size, kind=kind, align="right")
        if divider:
            screen.line(x0, y + step - size * 0.7, x1, y + step - size * 0.7)
        y += step
    return y


Cell = tuple[str, "str | tuple[tuple[str, str], ...] | None"]  # text, and its kind or its (kind, value) items


def _table(screen: Screen, columns: Iterable[tuple[float, str]], y: float, rows: Iterable[Iterable[Cell]],
           size: float = 14, step: float = 40) -> float:
    """A statement table: a header of (x, heading), then rows of cells; a negative x right-aligns its
    column at -x. Returns the y below."""
    columns = list(columns)
    for x, heading in columns:
        screen.text(abs(x), y, heading, size - 1, bold=True, color=screen.theme.muted,
                    align="right" if x < 0 else "left")
    for row in rows:
        y += step
        screen.line(abs(columns[0][0]), y - step * 0.3, abs(columns[-1][0]), y - step * 0.3)
        for (x, _), (text, what) in zip(columns, row):
            kind, items = (None, what) if isinstance(what, tuple) else (what, ())
            screen.text(abs(x), y, text, size, kind=kind, items=items, align="right" if x < 0 else "left")
    return y + step


# --- what happens to a screenshot on its way to support -----------------------------------------

def _map_box(box: tuple[int, int, int, int], move: Callable[[float, float], tuple[float, float]],
             size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The bounding box of a box's moved corners, kept inside the image."""
    xs, ys = zip(*(move(x, y) for x in (box[0], box[2]) for y in (box[1], box[3])))
    x0, y0, x1, y1 = _pixel_box((min(xs), min(ys), max(xs), max(ys)))
    return max(0, x0), max(0, y0), min(size[0], x1), min(size[1], y1)


def _moved(strings: Iterable[Drawn], move: Callable[[float, float], tuple[float, float]],
           size: tuple[int, int]) -> tuple[Drawn, ...]:
    return tuple(Drawn(d.text, _map_box(d.box, move, size),
                       tuple(replace(i, box=_map_box(i.box, move, size)) for i in d.items)) for d in strings)


def _homography(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> tuple[float, ...]:
    """The eight coefficients of the projective map taking four points to four others (Gauss-Jordan)."""
    rows = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v])
    for col in range(8):
        pivot = max(range(col, 8), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(8):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col])]
    return tuple(rows[i][8] / rows[i][i] for i in range(8))


def _project(h: tuple[float, ...], x: float, y: float) -> tuple[float, float]:
    a, b, c, d, e, f, g, k = h
    w = g * x + k * y + 1
    return (a * x + b * y + c) / w, (d * x + e * y + f) / w


def _grain(image: Image.Image, seed: int, amplitude: int) -> Image.Image:
    """Sensor noise of +-amplitude levels, from a seeded generator (Pillow's own noise is not seeded)."""
    width, height = image.size
    levels = 2 * amplitude + 1
    noise = Image.frombytes("L", image.size, random.Random(seed).randbytes(width * height))
    noise = noise.point(lambda v: v * levels // 256)
    return ImageChops.add(image, Image.merge("RGB", (noise, noise, noise)), scale=1.0, offset=-amplitude)


def _jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _desk(size: tuple[int, int], top: Color, bottom: Color) -> Image.Image:
    """A vertical gradient: a wall or a desk behind the photographed thing."""
    column = Image.new("RGB", (1, 256))
    for y in range(256):
        column.putpixel((0, y), tuple(round(a + (b - a) * y / 255) for a, b in zip(top, bottom)))
    return column.resize(size, Image.Resampling.BILINEAR)


def _photographed(shot: Sample, name: str, size: tuple[int, int], angle: float, keystone: float, blur: float,
                  seed: int) -> Sample:
    """`shot` as a phone camera sees a screen: in its bezel on a desk, turned by `angle` degrees (<= 3),
    the far edge narrowed by `keystone` (perspective), slightly out of focus, grainy, saved as JPEG."""
    w, h = shot.image.size
    fit = 0.82 * min(size[0] / w, size[1] / h)
    half_w, half_h = w * fit / 2, h * fit / 2
    turn = math.radians(angle)
    quad = []
    for x, y in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)):
        x *= 1 - keystone if y < 0 else 1
        quad.append((size[0] / 2 + x * math.cos(turn) - y * math.sin(turn),
                     size[1] / 2 + x * math.sin(turn) + y * math.cos(turn)))
    corners = [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
    forward, backward = _homography(corners, quad), _homography(quad, corners)

    photo = _desk(size, (178, 170, 160), (92, 86, 80))
    bezel = max(w, h) * 0.035
    outer = [(-bezel, -bezel), (w + bezel, -bezel), (w + bezel, h + bezel), (-bezel, h + bezel)]
    ImageDraw.Draw(photo).polygon([_project(forward, x, y) for x, y in outer], fill=(24, 24, 27))
    screen = shot.image.transform(size, Image.Transform.PERSPECTIVE, backward, Image.Resampling.BICUBIC)
    mask = Image.new("L", shot.image.size, 255).transform(size, Image.Transform.PERSPECTIVE, backward,
                                                           Image.Resampling.BILINEAR)
    photo.paste(screen, (0, 0), mask)
    photo = _grain(photo.filter(ImageFilter.GaussianBlur(blur)), seed, 6)
    strings = _moved(shot.strings, lambda x, y: _project(forward, x, y), size)
    tags = ("photo", "jpeg") + tuple(tag for tag in shot.tags if tag not in ("desktop", "phone"))
    return Sample(name, _jpeg(photo), strings, shot.language, False, False, tags)


def _blurred(shot: Sample, name: str, radius: float = 7) -> Sample:
    return replace(shot, name=name, image=shot.image.filter(ImageFilter.GaussianBlur(radius)), unreadable=True,
                   tags=shot.tags + ("blurred",))


def _tiny(shot: Sample, name: str, size: tuple[int, int]) -> Sample:
    k = size[0] / shot.image.width
    image = shot.image.resize(size, Image.Resampling.LANCZOS)
    return replace(shot, name=name, image=image, strings=_moved(shot.strings, lambda x, y: (x * k, y * k), size),
                   unreadable=True, tags=shot.tags + ("tiny",))


# --- numbers the scenes show (test numbers, or generated: nobody's) -----------------------------

VISA_1881 = luhn_fill("4716 2?30 5531 1881")
VISA_PHONE = luhn_fill("4929 0418 7?26 5530")
UNIONPAY_19 = luhn_fill("6217 0012 3456 7890 12?")
ORDER_DECOY = luhn_fill("7302 5519 0846 21?7")          # an order number written like a card number
TRACKING_DECOY = luhn_fill("73120458816?0293")            # a 16-digit tracking number
TRACKING_DECOY_SPACED = luhn_fill("4302 9918 6631 0?72")
GB_IBAN = "GB82 WEST 1234 5698 7654 32"  # the IBAN registry's own examples pass mod-97 and belong to nobody


# --- scenes ----------------------------------------------------------------------------------

_SCENES: dict[str, Callable[[str], Sample]] = {}


def _scene(build: Callable[[str], Sample]) -> Callable[[str], Sample]:
    _SCENES[build.__name__.removeprefix("_")] = build
    return build


def _sidebar(screen: Screen, top: float, entries: Iterable[str], active: int) -> None:
    screen.box(0, top, 220, screen.height, fill=screen.theme.surface)
    screen.line(220, top, 220, screen.height)
    for i, entry in enumerate(entries):
        if i == active:
            screen.box(12, top + 20 + i * 44, 208, top + 56 + i * 44, fill=screen.theme.page, radius=8)
        screen.text(32, top + 28 + i * 44, entry, 15, bold=i == active,
                    color=screen.theme.text if i == active else screen.theme.muted)


@_scene
def _card_statement_en_desktop(name: str) -> Sample:
    s, top = _web_page((1920, 1080), "Card statement · Northbank", "https://online.northbank.example/cards/statement",
                       (270, 36), "Card statement — March 2024", 30)
    _sidebar(s, top, ("Overview", "Cards", "Payments", "Statements", "Settings"), 1)
    _panel(s, 270, top + 100, 900, top + 330)
    s.text(300, top + 124, "Visa •••• 1881", 20, bold=True)
    s.text(300, top + 164, f"Card number  {VISA_1881}", 17, mono=True, items=[("card", VISA_1881)])
    s.text(300, top + 204, "Valid thru 09/27", 15, color=s.theme.muted)
    s.text(300, top + 240, "Statement closing date 2024-03-05", 15, items=[("date", "2024-03-05")])
    s.text(300, top + 274, "Payment due Mar 30, 2024", 15, items=[("date", "Mar 30, 2024")])
    _panel(s, 940, top + 100, 1860, top + 330)
    s.text(970, top + 124, "New balance", 16, color=s.theme.muted)
    s.text(970, top + 154, "$1,288.40", 40, bold=True, kind="amount")
    s.text(970, top + 230, "Minimum payment $35.00", 16, items=[("amount", "$35.00")])
    s.text(970, top + 264, "Credit limit $5,000.00", 16, items=[("amount", "$5,000.00")])
    s.text(270, top + 370, "Transactions", 20, bold=True)
    _table(s, ((270, "Date"), (470, "Description"), (-1860, "Amount")), top + 414, (
        (("Mar 5, 2024", "date"), ("StreamPlus Premium — auto-renewal", None), ("$88.00", "amount")),
        (("Mar 3, 2024", "date"), ("Green Basket Grocery #0412", None), ("$42.17", "amount")),
        (("Feb 28, 2024", "date"), ("Payment received — thank you", None), ("$250.00", "amount")),
        (("Feb 27, 2024", "date"), ("CloudDrive 2 TB monthly", None), ("$9.99", "amount")),
        (("Feb 21, 2024", "date"), ("Metro Transit top-up", None), ("$20.00", "amount")),
    ), size=16, step=48)
    return s.sample(name, "en", "desktop", "statement")


@_scene
def _bank_statement_en_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "Accounts · Rheinbank", "https://banking.rheinbank.example/accounts/main",
                       (60, 32), "Account overview", 28)
    _panel(s, 60, top + 96, 1380, top + 290)
    _rows(s, 90, 1350, top + 120, (
        ("Account holder", "Jane Doe", None),
        ("IBAN", "DE89 3704 0044 0532 0130 00", "iban"),
        ("BIC", "COBADEFFXXX", None),
        ("Available balance", "€2,417.63", "amount"),
    ), size=16, step=40)
    s.text(60, top + 320, "Recent transactions", 20, bold=True)
    _table(s, ((60, "Booked"), (240, "Description"), (-1380, "Amount")), top + 362, (
        (("2024-03-05", "date"), (f"Transfer to {GB_IBAN}", (("iban", GB_IBAN),)), ("€12.50", "amount")),
        (("2024-03-04", "date"), ("Card payment — Café am Markt", None), ("€4.80", "amount")),
        (("2024-03-01", "date"), ("Salary March", None), ("€3,150.00", "amount")),
        (("2024-02-29", "date"), ("Direct debit — Stadtwerke", None), ("€86.20", "amount")),
    ), size=15, step=44)
    return s.sample(name, "en", "desktop", "statement", "transfer")


@_scene
def _payment_failed_en_desktop(name: str) -> Sample:
    s = Screen((1440, 900))
    top = _browser(s, "Checkout · StreamPlus", "https://streamplus.example/checkout/pay")
    s.text(80, top + 40, "Checkout", 28, bold=True)
    for i in range(5):
        s.box(80, top + 110 + i * 60, 820, top + 150 + i * 60, fill=s.theme.line, radius=6)
    s.image.paste(Image.blend(s.image, Image.new("RGB", s.size, (0, 0, 0)), 0.45))
    dialog = top + 150
    x0, x1 = s.width / 2 - 300, s.width / 2 + 300
    s.box(x0, dialog, x1, dialog + 470, fill=s.theme.surface, radius=16)
    s.circle(s.width / 2, dialog + 60, 28, s.theme.danger)
    s.line(s.width / 2 - 10, dialog + 50, s.width / 2 + 10, dialog + 70, s.theme.surface, 4)
    s.line(s.width / 2 + 10, dialog + 50, s.width / 2 - 10, dialog + 70, s.theme.surface, 4)
    s.text(s.width / 2, dialog + 104, "Payment failed", 26, bold=True, kind="title", align="center")
    s.text(s.width / 2, dialog + 150, "Your card was declined by the issuing bank.", 16, align="center",
           color=s.theme.muted)
    s.text(s.width / 2, dialog + 182, "CARD_DECLINED (E-4012)", 17, mono=True, color=s.theme.danger, align="center",
           items=[("error_code", "CARD_DECLINED"), ("error_code", "E-4012")])
    _rows(s, x0 + 40, x1 - 40, dialog + 232, (
        ("Amount", "$88.00", "amount"),
        ("Card", "Visa •••• 1881", None),
        ("Order", "DD2024030588812", "order"),
        ("Attempted", "2024-03-05 14:22", "date"),
    ), size=15, step=34)
    _button(s, x0 + 40, dialog + 386, s.width / 2 - 10, dialog + 434, "Try another card")
    _button(s, s.width / 2 + 10, dialog + 386, x1 - 40, dialog + 434, "Contact support", primary=False)
    return s.sample(name, "en", "desktop", "error", "checkout")


@_scene
def _risk_rejected_en_phone(name: str) -> Sample:
    s = _phone((750, 1334))
    y = _app_bar(s, "Transaction blocked")
    s.circle(s.width / 2, y + 70, 36, s.theme.danger)
    s.box(s.width / 2 - 4, y + 46, s.width / 2 + 4, y + 80, fill=s.theme.surface, radius=2)
    s.circle(s.width / 2, y + 92, 4.5, s.theme.surface)
    s.text(s.width / 2, y + 128, "We couldn't complete this payment", 18, bold=True, align="center")
    s.text(s.width / 2, y + 160, "Our security checks stopped it.", 14, color=s.theme.muted, align="center")
    s.text(s.width / 2, y + 194, "RISK_REJECTED (E-3301)", 15, mono=True, color=s.theme.danger, align="center",
           items=[("error_code", "RISK_REJECTED"), ("error_code", "E-3301")])
    _rows(s, 24, s.width - 24, y + 250, (
        ("Amount", "€12.50", "amount"),
        ("Merchant", "Urban Bikes Berlin", None),
        ("Date", "Mar 5, 2024 09:15", "date"),
        ("Reference", "DD2024030509150", "order"),
    ), size=14, step=38)
    _button(s, 24, s.height - 130, s.width - 24, s.height - 86, "Verify it's me")
    _button(s, 24, s.height - 74, s.width - 24, s.height - 30, "Contact support", primary=False)
    return s.sample(name, "en", "phone", "error")


@_scene
def _access_denied_en_desktop(name: str) -> Sample:
    s = Screen((1920, 1080), theme=replace(LIGHT, page=(0, 95, 184)))
    s.box(560, 260, 1360, 780, fill=(243, 243, 243), outline=(160, 160, 160))
    s.box(560, 260, 1360, 300, fill=(255, 255, 255))
    s.text(580, 270, "Settings", 14, color=(60, 60, 60))
    s.text(600, 330, "Update failed", 28, kind="title")
    s.text(600, 392, "There were problems installing some updates, but we'll try again later.", 15)
    s.text(600, 424, "If you keep seeing this, contact support with the error code below.", 15)
    s.box(600, 470, 1320, 570, fill=(255, 255, 255), outline=(210, 210, 210))
    s.text(620, 486, "2024-03 Cumulative Update for Desktop (KB5035853)", 15, bold=True)
    s.text(620, 522, "Install error - 0x80070005", 15, color=(196, 43, 28), items=[("error_code", "0x80070005")])
    s.text(600, 600, "Last checked: 2024-03-05 14:22", 15, color=(90, 90, 90), items=[("date", "2024-03-05 14:22")])
    _button(s, 600, 700, 780, 744, "Retry")
    return s.sample(name, "en", "desktop", "error")


@_scene
def _connection_reset_en_desktop(name: str) -> Sample:
    s = Screen((1440, 900), theme=replace(LIGHT, page=(255, 255, 255)))
    top = _browser(s, "pay.shop.example", "pay.shop.example/checkout/confirm")
    s.box(280, top + 150, 328, top + 210, outline=(95, 99, 104), radius=4, width=3)
    s.line(290, top + 170, 318, top + 170, (95, 99, 104), 3)
    s.text(280, top + 250, "This site can't be reached", 30, kind="title", color=(32, 33, 36))
    s.text(280, top + 310, "The connection was reset.", 16, color=(95, 99, 104))
    s.text(280, top + 350, "Try:", 16, color=(95, 99, 104))
    s.text(300, top + 380, "• Checking the connection", 16, color=(95, 99, 104))
    s.text(300, top + 410, "• Checking the proxy and the firewall", 16, color=(95, 99, 104))
    s.text(280, top + 460, "ERR_CONNECTION_RESET", 13, color=(95, 99, 104), kind="error_code")
    _button(s, 1040, top + 540, 1160, top + 580, "Reload")
    return s.sample(name, "en", "desktop", "error")


@_scene
def _bad_gateway_en_desktop(name: str) -> Sample:
    s = Screen((1920, 1080), theme=replace(LIGHT, page=(255, 255, 255)))
    top = _browser(s, "502 Bad Gateway", "https://api.streamplus.example/v2/billing/renew")
    s.text(960, top + 260, "502 Bad Gateway", 44, bold=True, kind="title", align="center")
    s.line(560, top + 340, 1360, top + 340)
    s.text(960, top + 370, "The server received an invalid response from the upstream server.", 18,
           align="center", color=(80, 80, 80))
    s.text(960, top + 420, "Error code: HTTP 502", 18, align="center", items=[("error_code", "HTTP 502")])
    s.text(960, top + 460, "Request ID 7f3a9c1e-52b0 · 2024-03-05 14:22 UTC", 15, mono=True, align="center",
           color=(120, 120, 120), items=[("date", "2024-03-05 14:22")])
    s.text(960, top + 520, "nginx", 14, align="center", color=(120, 120, 120))
    return s.sample(name, "en", "desktop", "error")


def _order_page(tab: str, url: str, title: str, meta: str,
                meta_items: Iterable[tuple[str, str]]) -> tuple[Screen, float]:
    """A web shop's order page down to its empty shipping panel. Returns the screen and the page's top."""
    s, top = _web_page((1920, 1080), tab, url, (240, 40), title, 30)
    s.text(240, top + 96, meta, 16, color=s.theme.muted, items=meta_items)
    _panel(s, 240, top + 140, 1680, top + 420)
    return s, top


@_scene
def _order_status_en_desktop(name: str) -> Sample:
    s, top = _order_page("Your order · ShopMart", "https://www.shopmart.example/your-orders/details", "Order details",
                         "Ordered on Mar 5, 2024   |   Order # 112-4432871-9930012",
                         [("date", "Mar 5, 2024"), ("order", "112-4432871-9930012")])
    s.text(270, top + 166, "Shipped", 22, bold=True, color=s.theme.success)
    s.text(270, top + 206, "Arriving Friday, Mar 8, 2024", 18, items=[("date", "Mar 8, 2024")])
    s.text(270, top + 246, "UPS — Tracking ID 1Z999AA10123456784", 16, items=[("tracking", "1Z999AA10123456784")])
    for i, done in enumerate((True, True, False, False)):
        s.circle(290 + i * 300, top + 320, 10, s.theme.success if done else s.theme.line)
        if i < 3:
            s.line(300 + i * 300, top + 320, 580 + i * 300, top + 320, s.theme.success if done else s.theme.line, 4)
    for i, step in enumerate(("Ordered", "Shipped", "Out for delivery", "Delivered")):
        s.text(270 + i * 300, top + 344, step, 14, color=s.theme.muted)
    s.box(1300, top + 180, 1420, top + 300, fill=(214, 219, 228), radius=8)
    s.text(1440, top + 190, "Noise-cancelling headphones", 16, bold=True)
    s.text(1440, top + 222, "Qty 1", 15, color=s.theme.muted)
    _panel(s, 240, top + 450, 900, top + 700)
    s.text(270, top + 470, "Ship to", 17, bold=True)
    s.text(270, top + 506, "Jane Doe", 16)
    s.text(270, top + 536, "500 Example Avenue, Springfield", 16)
    s.text(270, top + 566, "Phone (415) 555-0132", 16, items=[("phone", "(415) 555-0132")])
    _panel(s, 940, top + 450, 1680, top + 700)
    s.text(970, top + 470, "Order summary", 17, bold=True)
    _rows(s, 970, 1650, top + 510, (
        ("Item(s) subtotal", "$81.49", "amount"),
        ("Shipping", "$0.00", "amount"),
        ("Tax", "$6.51", "amount"),
        ("Order total", "$88.00", "amount"),
    ), size=16, step=40)
    return s.sample(name, "en", "desktop", "order", "tracking")


@_scene
def _tracking_en_phone(name: str) -> Sample:
    s = _phone()
    y = _app_bar(s, "Track package")
    _panel(s, 16, y, s.width - 16, y + 150)
    s.text(32, y + 18, "Parcel Express", 14, color=s.theme.muted)
    s.text(32, y + 42, "In transit", 24, bold=True, color=s.theme.accent)
    s.text(32, y + 82, f"Tracking no. {TRACKING_DECOY}", 14, items=[("tracking", TRACKING_DECOY)])
    s.text(32, y + 110, "Estimated delivery Mar 8, 2024", 14, items=[("date", "Mar 8, 2024")])
    events = (("Mar 6, 2024 08:12", "Left the Oakland sorting centre"),
              ("Mar 5, 2024 21:40", "Arrived at sorting centre"),
              ("Mar 5, 2024 16:05", "Picked up by carrier"),
              ("Mar 5, 2024 14:22", "Label created"))
    y += 186
    for i, (when, what) in enumerate(events):
        s.circle(32, y + 9, 6, s.theme.accent if i == 0 else s.theme.line)
        if i < len(events) - 1:
            s.line(32, y + 17, 32, y + 70, s.theme.line, 2)
        s.text(52, y, what, 15, bold=i == 0)
        s.text(52, y + 24, when, 13, color=s.theme.muted, kind="date")
        y += 76
    _button(s, 16, s.height - 80, s.width - 16, s.height - 32, "Contact carrier")
    return s.sample(name, "en", "phone", "tracking", "decoy")


@_scene
def _locked_account_en_phone(name: str) -> Sample:
    s = _phone()
    y = _app_bar(s, "Account locked")
    s.circle(s.width / 2, y + 80, 40, s.theme.page)
    s.box(s.width / 2 - 18, y + 76, s.width / 2 + 18, y + 104, fill=s.theme.danger, radius=4)
    s.box(s.width / 2 - 12, y + 58, s.width / 2 + 12, y + 84, outline=s.theme.danger, radius=12, width=4)
    s.text(s.width / 2, y + 146, "Too many sign-in attempts", 19, bold=True, align="center")
    s.text(24, y + 190, "The account", 15, color=s.theme.muted)
    s.text(24, y + 214, "jane.doe@example.com", 17, bold=True, kind="email")
    s.text(24, y + 244, "is locked until 2024-03-05 15:00.", 15, color=s.theme.muted,
           items=[("date", "2024-03-05 15:00")])
    s.text(24, y + 290, "We texted an unlock link to", 15, color=s.theme.muted)
    s.text(24, y + 314, "(415) 555-0132", 17, bold=True, kind="phone")
    s.text(24, y + 366, "Error code: ACCOUNT_LOCKED", 13, mono=True, color=s.theme.muted,
           items=[("error_code", "ACCOUNT_LOCKED")])
    _button(s, 16, s.height - 140, s.width - 16, s.height - 92, "Reset password")
    _button(s, 16, s.height - 80, s.width - 16, s.height - 32, "Contact support", primary=False)
    return s.sample(name, "en", "phone", "login")


@_scene
def _two_factor_en_phone_dark(name: str) -> Sample:
    s = _phone((750, 1334), DARK)
    s.box(10, 38, s.width - 10, 104, fill=(58, 60, 66), radius=14)
    s.text(26, 46, "MESSAGES · now", 11, color=s.theme.muted)
    s.text(26, 68, "Your code: 739215. Don't share it.", 14, items=[("code", "739215")])
    y = _app_bar(s, "Two-step verification", 112)
    s.text(24, y + 24, "Enter the 6-digit code we sent to", 15, color=s.theme.muted)
    s.text(24, y + 48, "+44 20 7946 0958", 17, bold=True, kind="phone")
    for i in range(6):
        s.box(24 + i * 56, y + 100, 70 + i * 56, y + 156, outline=s.theme.line, radius=8, width=1.5)
    s.text(24, y + 180, "The code expires at 09:46.", 13, color=s.theme.muted)
    _button(s, 24, y + 224, s.width - 24, y + 268, "Verify")
    s.text(s.width / 2, y + 292, "Resend code", 14, color=s.theme.accent, align="center")
    return s.sample(name, "en", "phone", "dark", "2fa")


@_scene
def _temporary_password_en_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "Inbox · Mail", "https://mail.example.com/inbox/18e0c2a9",
                       (250, 24), "Your temporary sign-in details", 20)
    _sidebar(s, top, ("Inbox", "Starred", "Sent", "Drafts", "Spam"), 0)
    s.text(250, top + 58, "IT Service Desk <it-help@example.com>  to me  2024-03-05 14:22", 12,
           color=s.theme.muted, items=[("email", "it-help@example.com"), ("date", "2024-03-05 14:22")])
    s.line(250, top + 84, 1400, top + 84)
    lines = (
        ("Hello Jane,", ()),
        ("as you asked, your account was reset. Sign in with:", ()),
        ("Username: jane.doe@example.com", (("email", "jane.doe@example.com"),)),
        ("Password: Tr0ub4dor&3", (("code", "Tr0ub4dor&3"),)),
        ("You will be asked to choose a new password. The temporary one expires on Mar 6, 2024.",
         (("date", "Mar 6, 2024"),)),
        ("If you did not ask for this, call the service desk on +44 20 7946 0958 right away.",
         (("phone", "+44 20 7946 0958"),)),
        ("Kind regards,", ()),
        ("IT Service Desk", ()),
    )
    for i, (line, items) in enumerate(lines):
        s.text(250, top + 110 + i * 24, line, 13, items=items)
    return s.sample(name, "en", "desktop", "small-text", "login")


@_scene
def _card_form_en_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "Payment · StreamPlus", "https://streamplus.example/checkout/payment",
                       (120, 36), "Payment method", 28)
    s.text(120, top + 100, "Saved cards", 17, bold=True)
    saved = (("Mastercard  5425-2334-3010-9903", "5425-2334-3010-9903", "Expires 11/26"),
             ("American Express  3714 496353 98431", "3714 496353 98431", "Expires 04/27"))
    for i, (line, number, expiry) in enumerate(saved):
        _panel(s, 120, top + 136 + i * 84, 780, top + 206 + i * 84)
        s.circle(150, top + 171 + i * 84, 9, s.theme.accent if i == 0 else s.theme.line)
        s.text(176, top + 148 + i * 84, line, 16, mono=True, items=[("card", number)])
        s.text(176, top + 176 + i * 84, expiry, 13, color=s.theme.muted)
    s.text(120, top + 330, "Add a card", 17, bold=True)
    for i, (label, value) in enumerate((("Card number", "4539 1488 0343 6467"), ("Name on card", "Jane Doe"))):
        _field(s, 120, 780, top + 370 + i * 84, label, value, "card" if i == 0 else None)
    _panel(s, 860, top + 100, 1320, top + 400)
    s.text(890, top + 124, "Order summary", 18, bold=True)
    _rows(s, 890, 1290, top + 166, (
        ("StreamPlus Premium, 1 year", "$79.00", "amount"),
        ("Tax", "$9.00", "amount"),
        ("Total", "$88.00", "amount"),
    ), size=15, step=40)
    _button(s, 890, top + 310, 1290, top + 360, "Pay now")
    return s.sample(name, "en", "desktop", "checkout")


@_scene
def _order_list_en_desktop(name: str) -> Sample:
    s, top = _web_page((1920, 1080), "Your orders · Gadgetry", "https://gadgetry.example/account/orders",
                       (240, 40), "Your orders", 30)
    orders = (
        (f"Order No. {ORDER_DECOY}", ORDER_DECOY, "Mar 5, 2024", "$88.00", "Delivered"),
        ("Order ORD-4539148803436467-02", "ORD-4539148803436467-02", "Feb 27, 2024", "$129.99", "Refunded"),
        ("Order DD2024022711045", "DD2024022711045", "Feb 27, 2024", "$15.40", "Delivered"),
    )
    for i, (line, number, when, total, state) in enumerate(orders):
        y = top + 110 + i * 200
        _panel(s, 240, y, 1680, y + 170)
        s.box(240, y, 1680, y + 56, fill=s.theme.page, radius=12)
        s.text(270, y + 16, f"Placed {when}", 15, color=s.theme.muted, items=[("date", when)])
        s.text(620, y + 16, f"Total {total}", 15, color=s.theme.muted, items=[("amount", total)])
        s.text(1650, y + 16, line, 15, mono=True, align="right", items=[("order", number)])
        s.text(270, y + 76, state, 20, bold=True, color=s.theme.success if state == "Delivered" else s.theme.muted)
        s.box(270, y + 110, 330, y + 160, fill=(214, 219, 228), radius=6)
        _button(s, 1440, y + 90, 1650, y + 136, "Buy it again", primary=False)
    return s.sample(name, "en", "desktop", "order", "decoy")


@_scene
def _receipt_small_en_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "Receipt · Mail", "https://mail.example.com/inbox/18e0b771",
                       (420, 30), "Receipt from Harbour Coffee Roasters", 18, replace(LIGHT, page=(255, 255, 255)))
    s.text(420, top + 60, "Receipt R-20240305-0042 · Mar 5, 2024 08:47", 12, color=s.theme.muted,
           items=[("order", "R-20240305-0042"), ("date", "Mar 5, 2024 08:47")])
    s.line(420, top + 88, 1020, top + 88)
    items = (("Flat white (large)", "$5.20"), ("Oat milk", "$0.80"), ("Almond croissant", "$4.50"),
             ("Beans — Ethiopia Guji 250 g", "$16.00"), ("Gift card reload", "$60.00"), ("Tip", "$1.50"))
    y = _rows(s, 420, 1020, top + 104, ((label, price, "amount") for label, price in items), size=12, step=24,
              divider=False)
    s.line(420, y, 1020, y)
    y = _rows(s, 420, 1020, y + 12, (("Total", "$88.00", "amount"), ("Tax included", "$6.02", "amount")),
              size=13, step=26, divider=False)
    s.text(420, y + 12, "Charged to Mastercard 5555 5555 5555 4444 (contactless)", 12,
           items=[("card", "5555 5555 5555 4444")])
    s.text(420, y + 36, "Questions? orders@harbour-coffee.example.com · (415) 555-0132", 12, color=s.theme.muted,
           items=[("email", "orders@harbour-coffee.example.com"), ("phone", "(415) 555-0132")])
    return s.sample(name, "en", "desktop", "small-text", "statement")


@_scene
def _card_statement_en_phone_dark(name: str) -> Sample:
    s = _phone(theme=DARK)
    y = _app_bar(s, "Card details")
    s.box(16, y, s.width - 16, y + 200, fill=(44, 62, 120), radius=16)
    s.text(32, y + 20, "Visa Platinum", 16, bold=True, color=(240, 244, 255))
    s.text(32, y + 98, VISA_PHONE, 20, mono=True, color=(240, 244, 255), kind="card")
    s.text(32, y + 150, "JANE DOE      09/28", 14, mono=True, color=(200, 210, 240))
    _rows(s, 24, s.width - 24, y + 230, (
        ("Current balance", "$1,288.40", "amount"),
        ("Statement date", "2024-03-05", "date"),
        ("Due date", "Mar 30, 2024", "date"),
    ), size=15, step=40)
    s.text(24, y + 372, "Recent", 17, bold=True)
    spend = (("StreamPlus Premium", "Mar 5, 2024", "$88.00"), ("Green Basket Grocery", "Mar 3, 2024", "$42.17"),
             ("Metro Transit", "Feb 21, 2024", "$20.00"))
    for i, (what, when, amount) in enumerate(spend):
        row = y + 410 + i * 64
        s.text(24, row, what, 15)
        s.text(24, row + 24, when, 13, color=s.theme.muted, kind="date")
        s.text(s.width - 24, row, amount, 15, bold=True, kind="amount", align="right")
    return s.sample(name, "en", "phone", "dark", "statement")


@_scene
def _renewal_bill_zh_phone(name: str) -> Sample:
    s = _phone()
    y = _app_bar(s, "账单详情")
    s.circle(s.width / 2, y + 50, 28, (255, 94, 58))
    s.text(s.width / 2, y + 92, "星河视频 自动续费 会员", 16, align="center")
    s.text(s.width / 2, y + 120, "-¥88.00", 34, bold=True, align="center", items=[("amount", "¥88.00")])
    s.text(s.width / 2, y + 172, "扣款成功", 15, color=s.theme.success, align="center")
    _rows(s, 20, s.width - 20, y + 226, (
        ("扣款时间", "2024年3月5日 14:22", "date"),
        ("商品说明", "连续包月 VIP 会员", None),
        ("支付方式", "银行信用卡(1881)", None),
        ("订单号", "DD2024030588812", "order"),
        ("商户单号", "M88120240305142210", "order"),
    ), size=14, step=44)
    s.text(20, y + 466, "下次扣款日 2024年4月5日", 12, color=s.theme.muted, items=[("date", "2024年4月5日")])
    s.text(20, y + 486, "可在「我的-设置-自动续费」中关闭。", 12, color=s.theme.muted)
    _button(s, 20, s.height - 140, s.width - 20, s.height - 92, "关闭自动续费", primary=False)
    _button(s, 20, s.height - 80, s.width - 20, s.height - 32, "联系客服")
    return s.sample(name, "zh", "phone", "bill")


@_scene
def _bill_list_zh_phone_dark(name: str) -> Sample:
    s = _phone(theme=DARK)
    y = _app_bar(s, "账单")
    s.text(20, y, "本月账单", 15, color=s.theme.muted, bold=True)
    s.text(20, y + 28, "支出 ¥1,288.00   收入 ¥3,500.00", 14, color=s.theme.muted,
           items=[("amount", "¥1,288.00"), ("amount", "¥3,500.00")])
    bills = (("星河视频 自动续费", "2024-03-05 14:22", "88.00 元"),
             ("云盘会员 扣款", "2024-03-04 09:10", "CNY 88.00"),
             ("便利店", "2024-03-03 21:47", "23.50 元"),
             ("地铁出行", "2024-03-02 08:31", "¥4.00"),
             ("电费 代扣", "2024-03-01 00:05", "¥1,084.50"))
    for i, (what, when, amount) in enumerate(bills):
        row = y + 80 + i * 72
        s.circle(40, row + 22, 18, s.theme.line)
        s.text(72, row, what, 16)
        s.text(72, row + 28, when, 12, color=s.theme.muted, kind="date")
        s.text(s.width - 20, row + 6, f"-{amount}", 17, bold=True, align="right", items=[("amount", amount)])
        s.line(72, row + 60, s.width - 20, row + 60)
    return s.sample(name, "zh", "phone", "dark", "bill")


@_scene
def _payment_failed_zh_phone(name: str) -> Sample:
    s = _phone((750, 1334))
    y = _app_bar(s, "支付失败")
    s.circle(s.width / 2, y + 70, 36, s.theme.danger)
    s.line(s.width / 2 - 13, y + 57, s.width / 2 + 13, y + 83, s.theme.surface, 4)
    s.line(s.width / 2 + 13, y + 57, s.width / 2 - 13, y + 83, s.theme.surface, 4)
    s.text(s.width / 2, y + 126, "交易存在风险,已被拦截", 18, bold=True, align="center")
    s.text(s.width / 2, y + 160, "错误码 RISK_REJECTED (E-3301)", 14, color=s.theme.danger, align="center",
           items=[("error_code", "RISK_REJECTED"), ("error_code", "E-3301")])
    _rows(s, 24, s.width - 24, y + 216, (
        ("支付金额", "¥1,288.00", "amount"),
        ("收款方", "优品数码旗舰店", None),
        ("订单号", "DD2024030514229", "order"),
        ("时间", "2024年3月5日 14:22", "date"),
    ), size=14, step=40)
    s.text(24, y + 390, "如非本人操作,请立即联系客服。", 12, color=s.theme.muted)
    _button(s, 24, s.height - 74, s.width - 24, s.height - 30, "更换支付方式")
    return s.sample(name, "zh", "phone", "error")


@_scene
def _verification_code_zh_phone(name: str, theme: Theme = LIGHT) -> Sample:
    s = _phone(theme=theme)
    s.box(10, 40, s.width - 10, 120, fill=s.theme.line, radius=16)
    s.text(26, 50, "信息 · 现在", 12, color=s.theme.muted)
    s.text(26, 72, "【星河】验证码 482913,5分钟内有效,请勿泄露。", 13, items=[("code", "482913")])
    y = _app_bar(s, "输入验证码", 132)
    s.text(24, y + 20, "验证码已发送至", 15, color=s.theme.muted)
    s.text(24, y + 46, "+86 138 0013 8000", 20, bold=True, kind="phone")
    for i in range(6):
        s.box(24 + i * 53, y + 100, 70 + i * 53, y + 156, outline=s.theme.line, radius=8, width=1.5)
    s.text(24, y + 180, "58 秒后重新获取", 14, color=s.theme.muted)
    _button(s, 20, s.height - 80, s.width - 20, s.height - 32, "确认")
    return s.sample(name, "zh", "phone", "2fa")


@_scene
def _account_locked_zh_desktop(name: str) -> Sample:
    s = Screen((1440, 900))
    top = _browser(s, "账号安全中心", "https://account.xinghe.example/security")
    _panel(s, 420, top + 80, 1020, top + 700)
    s.circle(720, top + 150, 36, s.theme.danger)
    s.text(720, top + 206, "账号已锁定", 26, bold=True, kind="title", align="center")
    s.text(720, top + 252, "密码连续输错 5 次,账号已临时锁定。错误码 ACCOUNT_LOCKED", 14, color=s.theme.muted,
           align="center", items=[("error_code", "ACCOUNT_LOCKED")])
    _rows(s, 460, 980, top + 310, (
        ("登录邮箱", "wang.fang@example.com", "email"),
        ("绑定手机", "138-0013-8000", "phone"),
        ("解锁时间", "2024年3月5日 15:00", "date"),
    ), size=15, step=44)
    s.text(460, top + 460, "已为您生成临时密码,请登录后立即修改:", 14, color=s.theme.muted)
    s.text(460, top + 490, "临时密码: Kd9#mQ2v", 17, bold=True, items=[("code", "Kd9#mQ2v")])
    _button(s, 460, top + 600, 980, top + 648, "重置密码")
    return s.sample(name, "zh", "desktop", "login")


@_scene
def _order_detail_zh_desktop(name: str) -> Sample:
    s, top = _order_page("订单详情 - 优品商城", "https://order.youpin.example/detail", "订单详情",
                         "订单号: 202403051422880193    下单时间: 2024-03-05 14:22",
                         [("order", "202403051422880193"), ("date", "2024-03-05 14:22")])
    s.text(270, top + 166, "卖家已发货", 22, bold=True, color=s.theme.accent)
    s.text(270, top + 210, "顺丰速运  运单号 SF1234567890123", 16, items=[("tracking", "SF1234567890123")])
    s.text(270, top + 246, "2024年3月6日 08:12  快件已到达【深圳转运中心】", 15, color=s.theme.muted,
           items=[("date", "2024年3月6日 08:12")])
    s.text(270, top + 300, "收货人: 王芳  138-0013-8000", 15, items=[("phone", "138-0013-8000")])
    s.text(270, top + 330, "收货地址: 广东省深圳市南山区科技园示例路 1 号", 15)
    _panel(s, 240, top + 450, 1680, top + 780)
    s.box(270, top + 480, 370, top + 580, fill=(214, 219, 228), radius=8)
    s.text(400, top + 490, "降噪蓝牙耳机 Pro 旗舰版", 17, bold=True)
    s.text(400, top + 524, "颜色: 曜石黑  数量: 1", 14, color=s.theme.muted)
    s.text(1650, top + 490, "¥1,299.00", 17, kind="amount", align="right")
    _rows(s, 1100, 1650, top + 620, (
        ("优惠券抵扣", "¥11.00", "amount"),
        ("运费", "¥0.00", "amount"),
        ("实付款", "¥1,288.00", "amount"),
    ), size=16, step=40)
    return s.sample(name, "zh", "desktop", "order", "tracking")


@_scene
def _bank_cards_zh_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "银行卡管理", "https://wallet.xinghe.example/cards", (80, 36), "银行卡管理", 28)
    cards = (("储蓄卡", UNIONPAY_19, "绑定时间 2024年3月5日", (56, 120, 200)),
             ("信用卡", "6200 0000 0000 0005", "绑定时间 2023-11-18", (190, 60, 60)))
    for i, (kind, number, when, colour) in enumerate(cards):
        x = 80 + i * 640
        s.box(x, top + 110, x + 600, top + 440, fill=colour, radius=18)
        s.text(x + 30, top + 136, f"示例银行 {kind}", 20, bold=True, color=(255, 255, 255))
        s.text(x + 30, top + 270, number, 26, mono=True, color=(255, 255, 255), kind="card")
        s.text(x + 30, top + 390, when, 14, color=(235, 238, 245), items=[("date", when.split(" ")[1])])
    s.text(80, top + 480, "单日支付限额 ¥50,000.00,单笔 ¥20,000.00。", 15, color=s.theme.muted,
           items=[("amount", "¥50,000.00"), ("amount", "¥20,000.00")])
    _button(s, 80, top + 540, 300, top + 588, "添加银行卡")
    return s.sample(name, "zh", "desktop", "statement")


@_scene
def _logistics_zh_phone(name: str) -> Sample:
    s = _phone((750, 1334))
    y = _app_bar(s, "物流详情")
    _panel(s, 16, y, s.width - 16, y + 120)
    s.text(32, y + 16, "极速快递", 14, color=s.theme.muted)
    s.text(32, y + 40, "派送中", 22, bold=True, color=s.theme.accent)
    s.text(32, y + 80, f"运单号 {TRACKING_DECOY_SPACED}", 14, items=[("tracking", TRACKING_DECOY_SPACED)])
    events = (("2024-03-06 09:30", "快递员正在派送,电话 138-0013-8000"),
              ("2024-03-06 06:12", "已到达【上海浦东营业部】"),
              ("2024-03-05 22:40", "已发出,下一站【上海转运中心】"),
              ("2024-03-05 18:05", "商家已发货"))
    y += 150
    for i, (when, what) in enumerate(events):
        s.circle(30, y + 9, 6, s.theme.accent if i == 0 else s.theme.line)
        s.text(48, y, what, 14, bold=i == 0, items=[("phone", "138-0013-8000")] if i == 0 else ())
        s.text(48, y + 24, when, 12, color=s.theme.muted, kind="date")
        y += 66
    return s.sample(name, "zh", "phone", "tracking", "decoy")


@_scene
def _transactions_small_zh_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "交易明细 - 网上银行", "https://ebank.example.cn/detail", (60, 24), "交易明细", 20)
    s.text(60, top + 60, f"卡号 {UNIONPAY_19}    查询区间 2024-03-01 至 2024-03-05", 13,
           items=[("card", UNIONPAY_19), ("date", "2024-03-01"), ("date", "2024-03-05")])
    rows = (("2024-03-05 14:22", "星河视频 自动续费", "88.00 元", "DD2024030588812"),
            ("2024-03-05 09:15", "优品商城 订单支付", "¥1,288.00", "DD2024030514229"),
            ("2024-03-04 12:03", "便利店消费", "23.50 元", "DD2024030412030"),
            ("2024-03-03 19:44", "话费充值", "CNY 50.00", "DD2024030319441"),
            ("2024-03-02 08:31", "地铁出行", "¥4.00", "DD2024030208310"),
            ("2024-03-01 00:05", "电费代扣", "¥1,084.50", "DD2024030100051"))
    _table(s, ((60, "交易时间"), (260, "摘要"), (-700, "金额"), (760, "订单号")), top + 100,
           (((when, "date"), (what, None), (amount, "amount"), (order, "order"))
            for when, what, amount, order in rows), size=13, step=28)
    return s.sample(name, "zh", "desktop", "small-text", "statement", "bill")


@_scene
def _checkout_mixed_desktop(name: str) -> Sample:
    s, top = _web_page((1920, 1080), "结算 Checkout", "https://global.youpin.example/checkout",
                       (240, 36), "结算 Checkout", 30)
    _panel(s, 240, top + 110, 1100, top + 560)
    s.text(270, top + 136, "联系方式 Contact", 18, bold=True)
    fields = (("邮箱 Email", "jane.doe@example.com", "email"), ("手机 Phone", "+86 138 0013 8000", "phone"),
              ("卡号 Card number", "4242 4242 4242 4242", "card"), ("有效期 Expiry", "08/27", None))
    for i, (label, value, kind) in enumerate(fields):
        y = top + 180 + i * 90
        _field(s, 270, 1070, y, label, value, kind)
    _panel(s, 1140, top + 110, 1680, top + 560)
    s.text(1170, top + 136, "订单摘要 Order summary", 18, bold=True)
    s.text(1170, top + 178, "订单号 Order No. DD2024030588812", 14, color=s.theme.muted,
           items=[("order", "DD2024030588812")])
    _rows(s, 1170, 1650, top + 230, (
        ("年度会员 Annual VIP", "CNY 88.00", "amount"),
        ("运费 Shipping", "$0.00", "amount"),
        ("合计 Total", "¥88.00", "amount"),
    ), size=16, step=44)
    _button(s, 1170, top + 480, 1650, top + 530, "立即支付 Pay now")
    return s.sample(name, "mixed", "desktop", "checkout")


@_scene
def _payment_failed_mixed_phone(name: str) -> Sample:
    s = _phone()
    y = _app_bar(s, "支付失败 Payment failed")
    s.circle(s.width / 2, y + 60, 30, s.theme.danger)
    s.text(s.width / 2, y + 110, "网络连接中断 Connection lost", 17, bold=True, align="center")
    s.text(s.width / 2, y + 142, "ERR_CONNECTION_RESET · HTTP 502", 13, mono=True, color=s.theme.danger,
           align="center", items=[("error_code", "ERR_CONNECTION_RESET"), ("error_code", "HTTP 502")])
    _rows(s, 20, s.width - 20, y + 196, (
        ("金额 Amount", "¥88.00", "amount"),
        ("订单号 Order", "DD2024030588812", "order"),
        ("时间 Time", "2024-03-05 14:22", "date"),
    ), size=14, step=42)
    s.text(20, y + 340, "如已扣款,款项将在 1-3 个工作日内原路退回。", 13, color=s.theme.muted)
    s.text(20, y + 364, "If charged, the money returns in 1-3 business days.", 12, color=s.theme.muted)
    _button(s, 20, s.height - 80, s.width - 20, s.height - 32, "重试 Retry")
    return s.sample(name, "mixed", "phone", "error")


@_scene
def _transfer_mixed_desktop(name: str) -> Sample:
    s, top = _web_page((1440, 900), "国际汇款 International transfer", "https://ebank.example.cn/transfer/international",
                       (80, 36), "国际汇款 International transfer", 26)
    _panel(s, 80, top + 100, 1360, top + 560)
    _rows(s, 110, 1330, top + 128, (
        ("收款人 Beneficiary", "Harbour Trading Ltd", None),
        ("收款账号 IBAN", GB_IBAN, "iban"),
        ("中转行 Intermediary IBAN", "NL91 ABNA 0417 1643 00", "iban"),
        ("付款账号 From IBAN", "FR14 2004 1010 0505 0001 3M02 606", "iban"),
        ("汇款金额 Amount", "€12.50", "amount"),
        ("手续费 Fee", "CNY 88.00", "amount"),
        ("汇款日期 Date", "2024年3月5日", "date"),
        ("业务编号 Reference", "DD2024030588812", "order"),
    ), size=16, step=52)
    _button(s, 1080, top + 600, 1360, top + 650, "确认汇款 Confirm")
    return s.sample(name, "mixed", "desktop", "transfer")


@_scene
def _photo_payment_failed_en(name: str) -> Sample:
    return _photographed(_payment_failed_en_desktop(name), name, (1600, 1200), angle=2.0, keystone=0.05,
                         blur=0.8, seed=11)


@_scene
def _photo_card_statement_en(name: str) -> Sample:
    return _photographed(_card_statement_en_desktop(name), name, (2048, 1536), angle=-1.5, keystone=0.03,
                         blur=0.6, seed=12)


@_scene
def _photo_renewal_bill_zh(name: str) -> Sample:
    return _photographed(_renewal_bill_zh_phone(name), name, (1200, 1600), angle=-2.5, keystone=0.0, blur=1.0,
                         seed=13)


@_scene
def _router_photo(name: str) -> Sample:
    """The photo a user sends of their router: shapes, a solid red light, no text at all."""
    size = (1600, 1200)
    photo = _desk(size, (196, 190, 182), (120, 112, 104))
    draw = ImageDraw.Draw(photo)
    draw.polygon([(0, 760), (1600, 700), (1600, 1200), (0, 1200)], fill=(142, 112, 84))
    for x in (560, 1040):
        draw.polygon([(x - 14, 520), (x + 14, 520), (x + 24, 180), (x - 4, 176)], fill=(34, 34, 38))
    draw.rounded_rectangle((380, 500, 1220, 820), radius=40, fill=(236, 236, 232))
    draw.rounded_rectangle((380, 760, 1220, 820), radius=30, fill=(200, 200, 196))
    for i in range(5):
        draw.ellipse((520 + i * 110, 640, 544 + i * 110, 664), fill=(70, 90, 70))
    glow = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(glow).ellipse((936, 616, 1016, 688), fill=(255, 40, 30))
    photo = ImageChops.add(photo, glow.filter(ImageFilter.GaussianBlur(22)))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((964, 640, 988, 664), fill=(235, 20, 20))
    for i in range(7):
        draw.rectangle((560 + i * 70, 760, 600 + i * 70, 800), fill=(160, 160, 156))
    photo = _grain(photo.filter(ImageFilter.GaussianBlur(1.2)), 21, 8)
    return Sample(name, _jpeg(photo), (), "en", True, False, ("photo", "jpeg", "device"))


@_scene
def _loading_skeleton_phone(name: str) -> Sample:
    """A screenshot taken before the page loaded: grey bars where text will be."""
    s = Screen((1080, 2340), 3)
    grey = (226, 228, 232)
    s.box(20, 56, 200, 80, fill=grey, radius=6)
    s.box(20, 110, s.width - 20, 290, fill=grey, radius=14)
    for i in range(7):
        y = 320 + i * 62
        s.circle(44, y + 22, 22, grey)
        s.box(80, y + 6, s.width - 80 - (i * 37) % 90, y + 18, fill=grey, radius=6)
        s.box(80, y + 28, s.width - 160 - (i * 53) % 70, y + 38, fill=grey, radius=5)
    return replace(s.sample(name, "en", "phone", "skeleton"), textless=True)


@_scene
def _blurred_card_statement_en(name: str) -> Sample:
    return _blurred(_card_statement_en_desktop(name), name)


@_scene
def _too_dark_verification_zh_phone(name: str) -> Sample:
    shot = _verification_code_zh_phone(name, NIGHT)
    return replace(shot, unreadable=True, tags=shot.tags + ("too-dark",))


@_scene
def _tiny_order_status_en(name: str) -> Sample:
    return _tiny(_order_status_en_desktop(name), name, (160, 90))


# --- the corpus ---------------------------------------------------------------------------------

def sample(name: str) -> Sample:
    try:
        build = _SCENES[name]
    except KeyError:
        raise KeyError(f"no screenshot named {name!r}; known: {', '.join(_SCENES)}") from None
    return build(name)


def samples() -> list[Sample]:
    return [build(name) for name, build in _SCENES.items()]


def file_name(shot: Sample) -> str:
    return f"{shot.name}.jpg" if "jpeg" in shot.tags else f"{shot.name}.png"


def _truth_of(shot: Sample) -> dict:
    return {
        "name": shot.name, "file": file_name(shot), "width": shot.image.width, "height": shot.image.height,
        "language": shot.language, "textless": shot.textless, "unreadable": shot.unreadable,
        "tags": list(shot.tags),
        "strings": [{"text": d.text, "box": list(d.box), "items": [
            {"kind": i.kind, "value": i.value, "box": list(i.box), "sensitive": i.sensitive,
             "luhn_valid": i.luhn_valid} for i in d.items]} for d in shot.strings],
    }


def truth() -> list[dict]:
    return [_truth_of(shot) for shot in samples()]


def _dump(rows: list[dict]) -> str:
    """Indented JSON with each box on one line, so that a changed screenshot reads as a short diff."""
    text = json.dumps(rows, ensure_ascii=False, indent=1)
    return re.sub(r"\[\s+(\d+),\s+(\d+),\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2, \3, \4]", text) + "\n"


def save(shot: Sample, path: Path, *, optimize: bool = False) -> None:
    """Photographed samples as JPEG at a high quality, so the file decodes to nearly the pixels the truth
    describes (they already carry their quality-60 artefacts); screens as PNG. `optimize` takes longer
    for a smaller file of the same pixels."""
    if "jpeg" in shot.tags:
        shot.image.save(path, "JPEG", quality=95, optimize=optimize)
    else:
        shot.image.save(path, "PNG", optimize=optimize)


def write(out_dir: Path) -> list[Path]:
    """Writes every sample and the truth of all of them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for shot in samples():
        path = out_dir / file_name(shot)
        save(shot, path)
        paths.append(path)
        rows.append(_truth_of(shot))
    (out_dir / "truth.json").write_text(_dump(rows), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.screenshot_corpus", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, help="write the images and truth.json here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {TRUTH.name} differs from the drawing")
    mode.add_argument("--update", action="store_true", help=f"rewrite {TRUTH.name}")
    args = parser.parse_args(argv)
    if not (args.out_dir or args.check or args.update):
        parser.error("give OUT_DIR, --check or --update")
    if args.out_dir:
        paths = write(args.out_dir)
        print(f"{len(paths)} screenshots and truth.json written to {args.out_dir}")
    if args.update:
        TRUTH.write_text(_dump(truth()), encoding="utf-8")
        print(f"{TRUTH} rewritten")
    if args.check:
        committed = json.loads(TRUTH.read_text(encoding="utf-8"))
        drawn = json.loads(_dump(truth()))
        if committed != drawn:
            changed = sorted({row["name"] for row in drawn if row not in committed}
                             | {row["name"] for row in committed if row not in drawn})
            print(f"{TRUTH} is stale for: {', '.join(changed)}; run with --update", file=sys.stderr)
            return 1
        print(f"{TRUTH.name} matches the {len(drawn)} drawn screenshots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
