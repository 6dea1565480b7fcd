"""Tests for engine.images: refusals, mode conversions, orientation, metadata, budget, robustness.

Every fixture image is generated here (Pillow or raw bytes); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import random
import re
import struct
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import ExifTags, Image, ImageDraw, ImageFile, ImageOps, PngImagePlugin

from engine import images
from engine.images import REASONS, ImageLimits, ImageRejected, PreparedImage, prepare_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
DEFAULT_BUDGET = ImageLimits().max_pixels
CJK = re.compile(r"[\u4e00-\u9fff]")


# --- fixture builders -------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Random pixels: compresses badly, so truncating the file cuts into pixel data."""
    return Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def encode_in(fmt: str, image: Image.Image) -> bytes:
    """Save in one of the accepted formats, with the options each one needs."""
    if fmt == "GIF":
        return encode(image.convert("P"), "GIF")
    if fmt == "JPEG":
        return encode(image, "JPEG", quality=90)
    if fmt == "WEBP":
        return encode(image, "WEBP", lossless=True)
    return encode(image, fmt)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims width x height RGB pixels, with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen claims width x height."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def gif_with_first_frame(width: int, height: int) -> bytes:
    """A GIF with a 1x1 logical screen whose first frame claims width x height."""
    data = encode(Image.new("P", (1, 1)), "GIF")
    descriptor = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1)
    assert data.count(descriptor) == 1
    return data.replace(descriptor, b"\x2c" + struct.pack("<HHHH", 0, 0, width, height))


def png_chunk_types(data: bytes) -> list[bytes]:
    assert data.startswith(PNG_SIGNATURE)
    types, offset = [], len(PNG_SIGNATURE)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def screenshot_like(width: int, height: int) -> Image.Image:
    """Left half red, right half blue, with some dark text-like strokes near the top."""
    image = Image.new("RGB", (width, height), BLUE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width // 2 - 1, height - 1), fill=RED)
    for y in range(10, height // 8, 12):
        draw.line((10, y, width - 10, y), fill=BLACK, width=2)
    return image


def assert_close(actual, expected, tolerance: int = 0) -> None:
    assert len(actual) == len(expected)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected)), (actual, expected)


# --- refusals ---------------------------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    data = encode_in(fmt, noise_image())
    return data[: len(data) * 6 // 10]


def _after_valid_png_header() -> bytes:
    header_end = len(PNG_SIGNATURE) + 25  # signature + IHDR chunk
    return encode(noise_image(), "PNG")[:header_end] + random.Random(1).randbytes(4000)


def _after_valid_gif_header() -> bytes:
    data = encode(noise_image().convert("P"), "GIF")
    return data[: 13 + 3 * 256] + random.Random(2).randbytes(4000)  # header + global palette


def _corrupted_png_pixel_data() -> bytes:
    data = bytearray(encode(noise_image(), "PNG"))
    idat = data.index(b"IDAT") + 4
    data[idat + 100 : idat + 600] = random.Random(3).randbytes(500)
    return bytes(data)


HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9" height="9"/></svg>'
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"


def refusal(case_id, build, reason, limits=ImageLimits()):
    """One refusal case; build() makes the bytes when the test runs, not at collection."""
    return pytest.param(build, reason, limits, id=case_id)


REFUSALS = [
    refusal("empty bytes", lambda: b"", "empty"),
    refusal("whitespace only", lambda: b" \r\n\t ", "empty"),
    refusal("over max_bytes", lambda: bytes(1001), "too_large", ImageLimits(max_bytes=1000)),
    refusal("html named .png", lambda: HTML, "unsupported_format"),
    refusal("svg", lambda: b'<?xml version="1.0"?>' + SVG, "unsupported_format"),
    refusal("pdf", lambda: PDF, "unsupported_format"),
    refusal("zip", lambda: b"PK\x03\x04" + bytes(26) + b"screenshot.png", "unsupported_format"),
    refusal("plain text", lambda: b"the app crashed when I clicked pay", "unsupported_format"),
    refusal("random bytes", lambda: random.Random(0).randbytes(4096), "unsupported_format"),
    refusal("real tiff", lambda: encode(noise_image(), "TIFF"), "unsupported_format"),
    refusal("real ico", lambda: encode(noise_image(), "ICO"), "unsupported_format"),
    refusal("png bomb 100000x100000", lambda: png_declaring(100_000, 100_000), "too_many_pixels"),
    refusal("png 8000x8000 over the limit", lambda: png_declaring(8000, 8000), "too_many_pixels"),
    refusal("gif bomb 65535x65535 screen", lambda: gif_declaring(65535, 65535), "too_many_pixels"),
    refusal("gif 8000x8000 over the limit", lambda: gif_declaring(8000, 8000), "too_many_pixels"),
    refusal("gif frame beyond its screen", lambda: gif_with_first_frame(8000, 8000), "too_many_pixels"),
    refusal("10000x20", lambda: encode(Image.new("RGB", (10_000, 20)), "PNG"), "aspect_ratio"),
    refusal("20x10000", lambda: encode(Image.new("L", (20, 10_000)), "PNG"), "aspect_ratio"),
    refusal(
        "4:1 over a custom 3:1 limit",
        lambda: encode(Image.new("RGB", (400, 100)), "PNG"),
        "aspect_ratio",
        ImageLimits(max_aspect_ratio=3.0),
    ),
    refusal("truncated png", lambda: _truncated("PNG"), "corrupt"),
    refusal("truncated jpeg", lambda: _truncated("JPEG"), "corrupt"),
    refusal("truncated gif", lambda: _truncated("GIF"), "corrupt"),
    refusal("truncated webp", lambda: _truncated("WEBP"), "corrupt"),
    refusal("truncated bmp", lambda: _truncated("BMP"), "corrupt"),
    refusal("garbage after valid png header", _after_valid_png_header, "corrupt"),
    refusal("garbage after valid gif header", _after_valid_gif_header, "corrupt"),
    refusal("corrupted png pixel data", _corrupted_png_pixel_data, "corrupt"),
    refusal("png signature only", lambda: PNG_SIGNATURE, "corrupt"),
]


@pytest.mark.parametrize(("build", "reason", "limits"), REFUSALS)
def test_refusal(build, reason, limits):
    with pytest.raises(ImageRejected) as caught:
        prepare_image(build(), limits)
    error = caught.value
    assert error.reason == reason
    english, chinese = error.message("en"), error.message("zh")
    assert english and chinese and english != chinese
    assert CJK.search(chinese)
    assert str(error) == english


def test_every_reason_is_covered_by_a_refusal_case():
    assert {case.values[1] for case in REFUSALS} == set(REASONS)


@pytest.mark.parametrize(
    "data",
    [
        png_declaring(100_000, 100_000),
        png_declaring(8000, 8000),
        gif_declaring(65535, 65535),
        gif_declaring(8000, 8000),
    ],
    ids=["png bomb", "png over limit", "gif bomb", "gif over limit"],
)
def test_bombs_are_refused_from_the_header_without_decoding(data, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spying_load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    # tracemalloc sees Python allocations only (Pillow's pixel buffers come from C malloc),
    # so the load spy is what proves no pixel was decoded.
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected) as caught:
            prepare_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too_many_pixels"
    assert decoded == []
    assert peak < 50 * 1024 * 1024

    prepare_image(encode(noise_image(), "PNG"))
    assert (64, 48) in decoded  # the spy does see a real decode


def test_header_pixel_limit_is_enforced_by_us_not_only_by_pillow():
    # 3000x3000 is far under Pillow's own bomb ceiling: only our check can refuse it.
    with pytest.raises(ImageRejected) as caught:
        prepare_image(png_declaring(3000, 3000), ImageLimits(max_source_pixels=9_000_000 - 1))
    assert caught.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as caught:
        prepare_image(png_declaring(3000, 3000), ImageLimits(max_source_pixels=9_000_000))
    assert caught.value.reason == "corrupt"  # at the limit it is decoded, and the tiny IDAT runs out


# --- messages ---------------------------------------------------------------------------


def test_messages_include_the_limits():
    assert "20 MB" in ImageRejected("too_large").message("en")
    assert "20 MB" in ImageRejected("too_large").message("zh")
    assert "5 MB" in ImageRejected("too_large", ImageLimits(max_bytes=5 * 1024 * 1024)).message("en")
    assert "40 megapixels" in ImageRejected("too_many_pixels").message("en")
    assert "200:1" in ImageRejected("aspect_ratio").message("en")
    assert "PNG" in ImageRejected("unsupported_format").message("en")


def test_message_language_fallback_and_variants():
    error = ImageRejected("corrupt")
    assert error.message("fr") == error.message() == error.message("en") == str(error)
    assert error.message("zh-CN") == error.message("zh_Hans") == error.message("ZH")


def test_rejection_is_picklable_and_validates_its_reason():
    limits = ImageLimits(max_bytes=1024 * 1024)
    copy = pickle.loads(pickle.dumps(ImageRejected("too_large", limits)))
    assert copy.reason == "too_large" and copy.limits == limits
    assert "1 MB" in str(copy)
    with pytest.raises(ValueError):
        ImageRejected("not a reason")


# --- accepted modes ---------------------------------------------------------------------


def prepared_pixels(data: bytes) -> tuple[PreparedImage, Image.Image]:
    prepared = prepare_image(data)
    assert prepared.image.mode == "RGB"
    assert prepared.image.info == {}
    return prepared, prepared.image


def test_rgba_transparent_pixels_become_white():
    source = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    source.putpixel((2, 0), (0, 0, 0, 0))
    source.putpixel((3, 0), (0, 0, 255, 128))
    _, out = prepared_pixels(encode(source, "PNG"))
    assert out.getpixel((0, 0)) == RED
    assert out.getpixel((2, 0)) == WHITE
    assert_close(out.getpixel((3, 0)), (127, 127, 255), tolerance=1)


def test_la_grayscale_with_alpha():
    source = Image.new("LA", (2, 1), (100, 255))
    source.putpixel((1, 0), (0, 0))
    _, out = prepared_pixels(encode(source, "PNG"))
    assert out.getpixel((0, 0)) == (100, 100, 100)
    assert out.getpixel((1, 0)) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_becomes_white(fmt):
    source = Image.new("P", (2, 1), 1)
    source.putpalette([*BLACK, *GREEN])
    source.putpixel((0, 0), 0)
    _, out = prepared_pixels(encode(source, fmt, transparency=0))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == GREEN


def test_cmyk_jpeg():
    source = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(source, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    _, out = prepared_pixels(data)
    assert_close(out.getpixel((8, 8)), RED, tolerance=12)


def test_16_bit_grayscale_png_keeps_its_brightness():
    source = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        source.putpixel((x, 0), value)
    data = encode(source, "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    _, out = prepared_pixels(data)
    assert_close(out.getpixel((0, 0)), BLACK, tolerance=0)
    assert_close(out.getpixel((1, 0)), (128, 128, 128), tolerance=1)
    assert_close(out.getpixel((2, 0)), WHITE, tolerance=0)


def test_16_bit_transparent_colour_is_dropped_not_applied_to_8_bit_values():
    source = Image.new("I;16", (2, 1), 32768)  # mid gray: 128 once scaled to 8 bits
    source.putpixel((1, 0), 128)  # the 16-bit transparent key, nearly black
    _, out = prepared_pixels(encode(source, "PNG", transparency=128))
    assert_close(out.getpixel((0, 0)), (128, 128, 128), tolerance=1)
    assert out.getpixel((1, 0)) == BLACK  # shown opaque: documented limitation


def test_l_grayscale():
    _, out = prepared_pixels(encode(Image.new("L", (3, 3), 100), "PNG"))
    assert out.getpixel((1, 1)) == (100, 100, 100)


def test_bilevel_mode_1():
    source = Image.new("1", (2, 1), 0)
    source.putpixel((1, 0), 1)
    _, out = prepared_pixels(encode(source, "PNG"))
    assert out.getpixel((0, 0)) == BLACK
    assert out.getpixel((1, 0)) == WHITE


BMP_COLOURS = {
    "RGB": (RED, BLUE),
    "P": (RED, BLUE),
    "L": ((60, 60, 60), (200, 200, 200)),
    "1": (BLACK, WHITE),
}


@pytest.mark.parametrize("mode", BMP_COLOURS)
def test_bmp(mode):
    left, right = BMP_COLOURS[mode]
    source = Image.new("RGB", (4, 2), left)
    source.paste(right, (2, 0, 4, 2))
    data = encode(source.convert(mode, dither=Image.Dither.NONE), "BMP")
    assert Image.open(io.BytesIO(data)).mode == mode
    prepared, out = prepared_pixels(data)
    assert prepared.source_format == "BMP"
    assert out.getpixel((0, 0)) == left
    assert out.getpixel((3, 1)) == right


def test_webp_lossless_and_with_alpha():
    source = Image.new("RGBA", (4, 2), (*GREEN, 255))
    source.putpixel((3, 1), (0, 0, 0, 0))
    prepared, out = prepared_pixels(encode(source, "WEBP", lossless=True))
    assert prepared.source_format == "WEBP"
    assert out.getpixel((0, 0)) == GREEN
    assert out.getpixel((3, 1)) == WHITE


def test_lossy_webp():
    prepared, out = prepared_pixels(encode(Image.new("RGB", (32, 32), BLUE), "WEBP", quality=90))
    assert_close(out.getpixel((16, 16)), BLUE, tolerance=12)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_the_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    prepared, out = prepared_pixels(data)
    assert prepared.source_format == fmt
    assert out.getpixel((4, 4)) == RED


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("I;16B", 32768, (128, 128, 128)),
        ("I", 32768, (128, 128, 128)),
        ("I", 65535, WHITE),
        ("F", 128.0, (128, 128, 128)),
        ("YCbCr", (76, 85, 255), RED),
        ("PA", (0, 0), WHITE),
    ],
)
def test_modes_no_accepted_format_produces_directly(mode, value, expected):
    # These cannot come out of PNG/JPEG/WebP/GIF/BMP as such, so test the converter itself.
    if mode == "I;16B":
        source = Image.frombytes(mode, (2, 2), struct.pack(">H", value) * 4)
    else:
        source = Image.new(mode, (2, 2), value)
    out = images._to_rgb(source)
    assert out.mode == "RGB"
    assert_close(out.getpixel((1, 1)), expected, tolerance=2)


# --- EXIF orientation -------------------------------------------------------------------

# How the pixels are stored for each orientation tag, given the upright picture.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_quadrants() -> Image.Image:
    """64x48: top-left quadrant red, the rest blue."""
    image = Image.new("RGB", (64, 48), BLUE)
    image.paste(RED, (0, 0, 32, 24))
    return image


def with_orientation(fmt: str, orientation: int) -> bytes:
    stored = upright_quadrants()
    if STORED_AS[orientation] is not None:
        stored = stored.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    params = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    return encode(stored, fmt, exif=exif.tobytes(), **params)


def assert_upright(image: Image.Image, tolerance: int) -> None:
    assert image.size == (64, 48)
    assert_close(image.getpixel((16, 12)), RED, tolerance)
    for corner in [(48, 12), (16, 36), (48, 36)]:
        assert_close(image.getpixel(corner), BLUE, tolerance)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_comes_out_upright(fmt, orientation):
    data = with_orientation(fmt, orientation)
    tolerance = 40 if fmt == "JPEG" else 0
    # The fixture means what we think it means: Pillow's own exif_transpose agrees.
    assert Image.open(io.BytesIO(data)).getexif()[ExifTags.Base.Orientation] == orientation
    assert_upright(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), tolerance)

    prepared = prepare_image(data)
    assert_upright(prepared.image, tolerance)
    assert (prepared.width, prepared.height) == (64, 48)
    stored_size = (48, 64) if orientation in (5, 6, 7, 8) else (64, 48)
    assert (prepared.source_width, prepared.source_height) == stored_size


def test_orientation_survives_downscaling():
    upright = screenshot_like(2000, 1000)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())
    out = prepare_image(data, ImageLimits(max_pixels=20_000)).image
    assert out.width > out.height
    assert_close(out.getpixel((out.width // 4, out.height * 3 // 4)), RED, tolerance=40)
    assert_close(out.getpixel((out.width * 3 // 4, out.height * 3 // 4)), BLUE, tolerance=40)


def test_malformed_exif_does_not_reject_a_readable_photo():
    data = encode(Image.new("RGB", (16, 16), GREEN), "JPEG", quality=95, exif=b"Exif\x00\x00garbage")
    assert_close(prepare_image(data).image.getpixel((8, 8)), GREEN, tolerance=12)


# --- metadata ---------------------------------------------------------------------------

SECRETS = (b"SecretPhone", b"Grandma's living room", b"FAKE-ICC-PROFILE")


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.Base.Model] = "SecretPhone"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 36.0)
    return exif


def image_with_metadata(fmt: str) -> bytes:
    source = Image.new("RGB", (32, 24), GREEN)
    params = {"exif": exif_with_gps().tobytes(), "icc_profile": b"FAKE-ICC-PROFILE" * 8}
    if fmt == "PNG":
        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", "Grandma's living room")
        text.add_itxt("Description", "Grandma's living room", lang="en")
        params["pnginfo"] = text
    elif fmt == "JPEG":
        params.update(quality=95, comment="Grandma's living room")
    else:
        params["lossless"] = True
    return encode(source, fmt, **params)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_metadata_is_dropped(fmt):
    data = image_with_metadata(fmt)
    original = Image.open(io.BytesIO(data))
    assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the fixture does carry GPS data
    assert "icc_profile" in original.info

    prepared = prepare_image(data)
    assert prepared.image.info == {}
    assert not prepared.image.getexif()

    encoded = prepared.encoded()
    assert set(png_chunk_types(encoded)) == {b"IHDR", b"IDAT", b"IEND"}
    reopened = Image.open(io.BytesIO(encoded))
    assert reopened.info == {}
    assert not reopened.getexif()
    assert all(secret not in encoded for secret in SECRETS)


# --- pixel budget -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_screenshot_fits_the_budget(fmt):
    data = encode_in(fmt, screenshot_like(4000, 3000))
    prepared = prepare_image(data)
    width, height = prepared.image.size
    assert (prepared.width, prepared.height) == (width, height)
    assert (prepared.source_width, prepared.source_height) == (4000, 3000)
    assert width * height <= DEFAULT_BUDGET
    assert width * height >= 0.99 * DEFAULT_BUDGET  # the JPEG draft never goes below the output size
    assert math.isclose(width / height, 4000 / 3000, rel_tol=0.01)
    assert_close(prepared.image.getpixel((width // 4, height // 2)), RED, tolerance=30)
    assert_close(prepared.image.getpixel((width * 3 // 4, height // 2)), BLUE, tolerance=30)


def test_jpeg_draft_and_full_decode_agree_on_size():
    source = screenshot_like(4000, 3000)
    sizes = {prepare_image(encode_in(fmt, source)).image.size for fmt in ("JPEG", "PNG")}
    assert len(sizes) == 1


def test_small_image_is_not_upscaled():
    source = noise_image(300, 200)
    prepared = prepare_image(encode(source, "PNG"))
    assert prepared.image.size == (300, 200)
    assert prepared.image.tobytes() == source.tobytes()


def test_custom_pixel_budget():
    prepared = prepare_image(encode(noise_image(1000, 500), "PNG"), ImageLimits(max_pixels=10_000))
    assert prepared.width * prepared.height <= 10_000
    assert prepared.width * prepared.height >= 9_000
    assert math.isclose(prepared.width / prepared.height, 2.0, rel_tol=0.01)


def test_thin_image_under_a_tiny_budget_keeps_at_least_one_pixel():
    prepared = prepare_image(encode(Image.new("RGB", (1000, 5)), "PNG"), ImageLimits(max_pixels=100))
    assert prepared.width >= 1 and prepared.height >= 1
    assert prepared.width * prepared.height <= 100


# --- encoded output ---------------------------------------------------------------------


def test_encoded_is_deterministic_cached_png():
    data = encode(noise_image(), "JPEG", quality=90)
    first, second = prepare_image(data), prepare_image(data)
    encoded = first.encoded()
    assert encoded.startswith(PNG_SIGNATURE)
    assert first.encoded() is encoded
    assert second.encoded() == encoded
    assert first.sha256 == hashlib.sha256(encoded).hexdigest() == second.sha256
    assert first.mime == PreparedImage.mime == "image/png"
    reopened = Image.open(io.BytesIO(encoded))
    assert reopened.format == "PNG" and reopened.mode == "RGB"
    assert reopened.tobytes() == first.image.tobytes()


def test_prepared_image_records_the_source():
    data = encode(noise_image(40, 30), "GIF")
    prepared = prepare_image(data)
    assert prepared.source_format == "GIF"
    assert (prepared.source_width, prepared.source_height) == (40, 30)
    assert prepared.source_bytes == len(data)


def test_format_comes_from_the_bytes_not_a_claimed_type():
    # A JPEG with PNG-looking trailing text is still a JPEG; nothing but bytes goes in.
    data = encode(noise_image(), "JPEG") + b".png image/png"
    assert prepare_image(data).source_format == "JPEG"


# --- robustness, threads, global state --------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_damaged_files_only_ever_raise_image_rejected(fmt):
    data = encode_in(fmt, noise_image(48, 32, seed=7))
    rng = random.Random(fmt)
    variants = [data[: len(data) * i // 20] for i in range(20)]
    for _ in range(20):
        damaged = bytearray(data)
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        variants.append(bytes(damaged))
    for variant in variants:
        try:
            prepared = prepare_image(variant)
        except ImageRejected as error:
            assert error.reason in REASONS
        else:
            assert prepared.image.mode == "RGB"
            assert prepared.width * prepared.height <= DEFAULT_BUDGET


def test_concurrent_calls_match_serial_results():
    source = screenshot_like(1600, 1200)
    inputs = [encode_in(fmt, source) for fmt in ("JPEG", "PNG", "WEBP", "BMP")] * 3
    serial = [prepare_image(data).sha256 for data in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda data: prepare_image(data).sha256, inputs))
    assert concurrent == serial


def test_pillow_global_settings_are_left_alone():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for data in (png_declaring(100_000, 100_000), _truncated("JPEG"), encode(noise_image(), "PNG")):
        try:
            prepare_image(data)
        except ImageRejected:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


def test_one_sniffer_tells_what_a_file_really_is_for_intake_and_the_channels():
    """Slack and Telegram ask the same question before they keep a download as a screenshot."""
    def encoded(fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(buffer, fmt)
        return buffer.getvalue()

    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
        assert images.sniff_format(encoded(fmt)) == fmt
    assert images.sniff_format(b"BM" + bytes(12)) == "BMP"  # cut short: intake calls it damaged
    for not_an_image in (b"%PDF-1.7\n", b"<!DOCTYPE html><svg>", b"PK\x03\x04", b"", b"RIFF\0\0\0\0WAVEfmt "):
        assert images.sniff_format(not_an_image) is None, not_an_image
    from adapters import slack_api, telegram

    assert slack_api.sniff_format is telegram.sniff_format is images.sniff_format
