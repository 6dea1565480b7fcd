"""Image intake: turn an uploaded screenshot into a safe, bounded RGB image for the model.

Every chat channel hands us bytes from untrusted end users, so this is the one place that
decides what an image is. The real format comes from the magic bytes, never the file name;
the pixel count is checked from the header before any pixel is decoded, so decompression
bombs are refused cheaply; the result is upright, RGB, metadata-free (no GPS position or
device details carried along) and scaled down to the model's pixel budget. Any bad input
ends as an `ImageRejected` with a reason code and a short message to show the user.

`prepare_image` is synchronous CPU work: run it in a thread. It keeps no shared state and
never changes Pillow's global settings.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from PIL import ExifTags, Image

# Imported for their side effect: registering exactly the decoders that `Image.open` may
# use up front, instead of Pillow loading every plugin lazily on some request's thread.
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin  # noqa: F401
from PIL import PngImagePlugin, WebPImagePlugin  # noqa: F401

REASONS = ("empty", "too_large", "unsupported_format", "too_many_pixels", "aspect_ratio", "corrupt")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # byte size of the upload
    max_source_pixels: int = 40_000_000  # width * height from the header, checked before decoding
    max_pixels: int = 1280 * 32 * 32  # pixel budget of the output image
    max_aspect_ratio: float = 200.0  # longer side / shorter side


_MESSAGES = {
    "empty": {
        "en": "That image is empty. Please send the screenshot again.",
        "zh": "这张图片是空的，请重新发送截图。",
    },
    "too_large": {
        "en": "That image is too large to read (limit {max_mb} MB). "
        "Please send a smaller screenshot.",
        "zh": "图片文件太大，无法读取（上限 {max_mb} MB）。请发送小一些的截图。",
    },
    "unsupported_format": {
        "en": "That file is not an image we can read. "
        "Please send a PNG, JPEG, WebP, GIF or BMP screenshot.",
        "zh": "无法识别这个文件。请发送 PNG、JPEG、WebP、GIF 或 BMP 格式的截图。",
    },
    "too_many_pixels": {
        "en": "That image has too many pixels to read (limit {max_megapixels} megapixels). "
        "Please send a smaller screenshot.",
        "zh": "图片分辨率太高，无法读取（上限 {max_megapixels} 百万像素）。请发送小一些的截图。",
    },
    "aspect_ratio": {
        "en": "That image is too long and narrow to read (limit {max_ratio}:1). "
        "Please send a regular screenshot, or split it into a few parts.",
        "zh": "图片过于细长，无法读取（长宽比上限 {max_ratio}:1）。"
        "请发送普通截图，或分成几张发送。",
    },
    "corrupt": {
        "en": "That image seems to be damaged or incomplete. Please send it again.",
        "zh": "这张图片似乎已损坏或不完整，请重新发送。",
    },
}


def _plain_number(value: float) -> str:
    """20.0 -> "20", 0.5 -> "0.5": limits as a person would write them."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


class ImageRejected(Exception):
    """Bad input. `reason` is one of REASONS; `message(language)` is fit to show the user."""

    def __init__(self, reason: str, limits: ImageLimits = ImageLimits()) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.limits = limits
        super().__init__(self.message("en"))

    def message(self, language: str = "en") -> str:
        """Text for the user in "en" or "zh" (also "zh-CN", "zh_Hans"); otherwise English."""
        base_language = language.lower().replace("_", "-").split("-")[0]
        templates = _MESSAGES[self.reason]
        return templates.get(base_language, templates["en"]).format(
            max_mb=_plain_number(self.limits.max_bytes / (1024 * 1024)),
            max_megapixels=_plain_number(self.limits.max_source_pixels / 1_000_000),
            max_ratio=_plain_number(self.limits.max_aspect_ratio),
        )

    def __reduce__(self):
        # Keeps the exception picklable (e.g. across a process pool) despite the custom __init__.
        return type(self), (self.reason, self.limits)


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # mode "RGB", empty .info
    width: int
    height: int
    source_format: str  # "PNG" | "JPEG" | "WEBP" | "GIF" | "BMP", from the magic bytes
    source_width: int
    source_height: int
    source_bytes: int
    _png: bytes | None = field(default=None, init=False, repr=False, compare=False)

    mime: ClassVar[str] = "image/png"

    def encoded(self) -> bytes:
        """The image as a metadata-free PNG, to store; encoded on first use, then cached."""
        if self._png is None:
            buffer = io.BytesIO()
            self.image.save(buffer, format="PNG", compress_level=1)
            object.__setattr__(self, "_png", buffer.getvalue())
        return self._png

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.encoded()).hexdigest()


def prepare_image(data: bytes, limits: ImageLimits = ImageLimits()) -> PreparedImage:
    """Validate, decode and normalise one uploaded image; raise ImageRejected for bad input."""
    if not data or data.isspace():
        raise ImageRejected("empty", limits)
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", limits)
    source_format = sniff_format(data)
    if source_format is None:
        raise ImageRejected("unsupported_format", limits)

    try:
        # Image.open reads the header only; it raises DecompressionBombError itself for
        # images far above Pillow's own ceiling.
        with Image.open(io.BytesIO(data), formats=[source_format]) as source:
            source_width, source_height = source.size
            _check_geometry(source_width, source_height, limits)
            if source_format == "JPEG" and _jpeg_scan_count(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
                raise ImageRejected("corrupt", limits)
            output_size = _fit_within(source_width, source_height, limits.max_pixels)
            if source_format == "JPEG" and output_size != source.size:
                # Decode at a reduced DCT scale, never below the output size. The whole
                # stream is still read, so truncation is still detected.
                source.draft("RGB", output_size)
            source.load()  # the first frame only, for animated GIF, PNG and WebP
            transpose = _orientation_transpose(source)
            image = _to_rgb(source)
        image = _resize_down(image, output_size)
        if transpose is not None:
            image = image.transpose(transpose)
        image = _without_metadata(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_many_pixels", limits) from error
    except Exception as error:
        # Malformed files surface from Pillow as OSError, ValueError, SyntaxError,
        # struct.error, EOFError, MemoryError and more; all of them mean the same to the user.
        raise ImageRejected("corrupt", limits) from error

    return PreparedImage(
        image=image,
        width=image.width,
        height=image.height,
        source_format=source_format,
        source_width=source_width,
        source_height=source_height,
        source_bytes=len(data),
    )


def fit_to_budget(image: Image.Image, max_pixels: int) -> Image.Image:
    """An image read at a larger size (for OCR), brought down to the model's pixel budget."""
    return _resize_down(image, _fit_within(image.width, image.height, max_pixels))


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name for the accepted formats' magic bytes, else None.

    The one check of what a file really is, for intake and for the channels that must tell a
    screenshot from another file before downloading all of it (a name or mime type is only a
    claim). A file that starts right but is cut short is still that format: intake then calls it
    damaged, which tells the user more than "not an image"."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


# A progressive JPEG may carry any number of scans, and each one costs libjpeg a pass over
# every block of the image even when it is a dozen bytes long (one end-of-band run can cover
# the whole image). A 330 kB file with 2,000 such scans over 36 megapixels kept one decode
# busy for 23 s; at 14 bytes a scan, 20 MB of them would take hours. This is libjpeg-turbo's
# "LJT-01-003": the file is valid JPEG, and the library leaves the limit to its callers.
# Encoders write about ten scans (libjpeg's progressive default is 10, mozjpeg's at most 11),
# so 100 leaves ample room.
MAX_JPEG_SCANS = 100
# A marker: 0xFF then anything but 0x00 (a stuffed 0xFF inside entropy-coded data), a
# restart marker (also inside entropy-coded data) or 0xFF (fill bytes before a marker).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_scan_count(data: bytes, stop_after: int) -> int:
    """Start-of-scan markers in a JPEG's main image, counted up to stop_after + 1.

    Refusing a scan bomb has to happen before the decode, and Pillow does not expose the
    scan count, so the marker segments are walked here: each segment is skipped by its
    length (scans inside an EXIF thumbnail are not counted) and entropy-coded data by a
    regex search. Counting stops at the first end-of-image marker, like the decoder does
    (a phone's appended preview or video is never decoded). Linear in the file size.
    """
    scans, position = 0, 2  # after the start-of-image marker
    while scans <= stop_after:
        marker = _JPEG_MARKER.search(data, position)
        if marker is None:
            break
        code = data[marker.start() + 1]
        if code == 0xD9:  # end of image
            break
        position = marker.end()
        if code in (0x01, 0xD8):  # markers without a length field
            continue
        if code == 0xDA:
            scans += 1
        position += int.from_bytes(data[position : position + 2], "big")
    return scans


def _check_geometry(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse, from header dimensions alone, what we will not decode."""
    if width < 1 or height < 1:
        raise ImageRejected("corrupt", limits)
    if width * height > limits.max_source_pixels:
        raise ImageRejected("too_many_pixels", limits)
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise ImageRejected("aspect_ratio", limits)


def _fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most max_pixels; never larger."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    fitted_width = max(1, int(width * scale))
    fitted_height = max(1, int(height * scale))
    if fitted_width * fitted_height > max_pixels:
        # Float rounding, or the 1-pixel floor on a very thin image: trim the long side.
        if fitted_width >= fitted_height:
            fitted_width = max(1, max_pixels // fitted_height)
        else:
            fitted_height = max(1, max_pixels // fitted_width)
    return fitted_width, fitted_height


# What turns the stored pixels upright, per EXIF orientation (the table of
# ImageOps.exif_transpose, which we do not call: it also rewrites the EXIF block, which we
# drop anyway, and that rewrite raises on some malformed tags in otherwise readable photos).
_ORIENTATION_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation_transpose(image: Image.Image) -> Image.Transpose | None:
    """The transpose that undoes the EXIF (or XMP) orientation of a loaded image, if any.

    Metadata that cannot be parsed counts as no orientation: the pixels are readable and
    the metadata is dropped anyway. (Pillow parses a PNG eXIf chunk or a WebP EXIF chunk
    that is not a TIFF block, or a PNG "Raw profile type exif" text that is not hex, only
    here, and raises; that refused readable screenshots as "corrupt", while the same bytes
    in a JPEG were ignored.)
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:
        return None
    return _ORIENTATION_TRANSPOSES.get(orientation) if isinstance(orientation, int) else None


_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode as RGB, transparency flattened onto white like a chat background."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _sixteen_bit_to_l(image)
    if image.mode == "RGB":
        return image
    if image.has_transparency_data:
        return _flatten_onto_white(image)
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 0..65535 samples down to 0..255; Pillow's plain convert clips them instead.

    A 16-bit transparent colour cannot be carried over to 8 bits, so it is dropped (the
    image is treated as opaque) rather than left to match the wrong 8-bit pixels.
    """
    scaled = image.convert("I").point(lambda value: value / 257 + 0.5)
    scaled.info.pop("transparency", None)
    return scaled.convert("L")


def _flatten_onto_white(image: Image.Image) -> Image.Image:
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")  # no second full-size copy
    flattened = Image.new("RGB", rgba.size, _WHITE)
    flattened.paste(rgba, mask=rgba)
    return flattened


def _resize_down(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink to `size` (from _fit_within on the source, so a JPEG draft is never below it).

    LANCZOS keeps small screenshot text legible. reducing_gap first shrinks by an integer
    factor with Image.reduce (a box filter), leaving LANCZOS at least 1.5x: on a 4000x3000
    screenshot that is 2.5x faster than plain LANCZOS and within 1/255 of it on average.
    """
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.5)


def _without_metadata(image: Image.Image) -> Image.Image:
    """A plain Image (not a format-specific ImageFile) with empty .info: no EXIF, ICC, text."""
    clean = image.copy()
    clean.info.clear()
    return clean
