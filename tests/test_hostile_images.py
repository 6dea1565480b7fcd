"""Hostile image input: a corpus built here, a memory bound, fuzzing, and the widget API.

tests/test_images.py covers the ordinary refusals, modes, orientation and metadata. This
file adds what an attacker (or a badly broken client) sends: decompression bombs in every
accepted format, scan and chunk floods, structurally broken files, misnamed and disguised
files, long animations, extreme aspect ratios, 16-bit and CMYK sources, odd orientation
tags. For every one of them `prepare_image` must either return a usable RGB image within
the pixel budget or raise `ImageRejected` with a known reason and a message in both
languages; never anything else, never unbounded time or memory.

Every file is generated here, in memory, from Pillow or hand-written headers.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import pickle
import struct
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from engine.images import REASONS, ImageLimits, ImageRejected, PreparedImage, prepare_image

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
ANY = "accepted or refused"  # the outcome is not pinned: only the contract is checked
DEFAULT = ImageLimits()
# "Bombs within the limit" (tiny files that decode to as many pixels as allowed) run under
# a 10 MP source limit, so the corpus stays quick; memory grows linearly with the limit.
AT_LIMIT = ImageLimits(max_source_pixels=10_000_000)
AT_LIMIT_SIDE = 3162  # 3162 x 3162 = 9,998,244 pixels
MEMORY_BOUND_MB = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pillow warns about the malformed metadata this file feeds it; the refusal is what counts.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


# --- byte builders ----------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@functools.cache
def small(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small valid file of an accepted format (misnamed files, broken variants, fuzz seeds)."""
    image = Image.new("RGB", size, (20, 160, 90))
    image.paste((250, 250, 250), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    if fmt == "GIF":
        return encode(image.convert("P"), "GIF")
    if fmt == "WEBP":
        return encode(image, "WEBP", lossless=True)
    if fmt == "JPEG":
        return encode(image, "JPEG", quality=85)
    return encode(image, fmt)


# PNG


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


IEND = png_chunk(b"IEND", b"")


def zeros_deflated(size: int) -> bytes:
    """A zlib stream of `size` zero bytes (about 1000:1), built without holding them all."""
    compressor, block = zlib.compressobj(9), bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    parts.append(compressor.compress(bytes(size & ((1 << 20) - 1))))
    return b"".join(parts) + compressor.flush()


def png_declaring(width: int, height: int, depth: int = 8, colour: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width x height; a 16 MB zero stream as pixel data."""
    extra = png_chunk(b"PLTE", bytes(3)) if colour == 3 else b""
    idat = zeros_deflated(1 << 24) if idat is None else idat
    return PNG_SIGNATURE + ihdr(width, height, depth, colour) + extra + png_chunk(b"IDAT", idat) + IEND


def png_zero_bomb(width: int, height: int, depth: int = 8, colour: int = 2, channels: int = 3) -> bytes:
    """A valid PNG of all-zero pixels: a few kB that inflate to every pixel it declares."""
    row = 1 + (width * channels * depth + 7) // 8
    return png_declaring(width, height, depth, colour, idat=zeros_deflated(row * height))


def png_with_chunks(*chunks: bytes, base: bytes | None = None) -> bytes:
    """A small valid PNG with extra chunks placed before its first IDAT."""
    base = base or small("PNG")
    cut = base.index(b"IDAT") - 4
    return base[:cut] + b"".join(chunks) + base[cut:]


def png_after_ihdr(header: bytes) -> bytes:
    """A small PNG's chunks after its IHDR, behind another signature + IHDR."""
    return PNG_SIGNATURE + header + small("PNG")[8 + 25 :]


# GIF (hand-written, so every header field is where the test says)

GIF_ONE_PIXEL = b"\x02\x02\x44\x01\x00"  # LZW minimum code size 2; one sub-block: clear, index 0, end


def gif(frames: list[tuple[int, int]], screen: tuple[int, int] = (1, 1), extensions: bytes = b"") -> bytes:
    """GIF89a, 2-colour global palette, and one 1-pixel image per frame whose descriptor claims (w, h)."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" if len(frames) > 1 else b""
    body = b"".join(
        b"\x21\xf9\x04\x00\x02\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + GIF_ONE_PIXEL
        for w, h in frames
    )
    return head + loop + extensions + body + b"\x3b"


def animation(fmt: str, frames: int, size: tuple[int, int] = (32, 32), **params) -> bytes:
    """`frames` distinct frames (a dot moving across), so no encoder merges any of them."""
    images = []
    for i in range(frames):
        image = Image.new("L", size, 255)
        image.putpixel((i % size[0], i // size[0] % size[1]), 0)
        images.append(image)
    data = encode(images[0], fmt, save_all=True, append_images=images[1:], duration=20, loop=0, **params)
    assert Image.open(io.BytesIO(data)).n_frames == frames
    return data


# WebP


def webp_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)


def riff_webp(*chunks: bytes) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8x_declaring(width: int, height: int) -> bytes:
    """A VP8X header with a width x height canvas (24-bit fields), then a 1x1 lossless image."""
    canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
    one_pixel = encode(Image.new("RGB", (1, 1)), "WEBP", lossless=True)
    return riff_webp(webp_chunk(b"VP8X", bytes(4) + canvas), one_pixel[12:])


def webp_vp8l_declaring(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header claims width x height (14-bit fields, at most 16384)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "WEBP", lossless=True))
    start = data.index(b"VP8L") + 8
    assert data[start] == 0x2F  # the VP8L signature byte
    bits = int.from_bytes(data[start + 1 : start + 5], "little") & ~0x0FFFFFFF
    data[start + 1 : start + 5] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


# BMP


def bmp_header(width: int, height: int, bits: int = 24, compression: int = 0, colours: int = 0,
               pixel_offset: int | None = None, image_size: int = 0) -> bytes:
    """BITMAPFILEHEADER + BITMAPINFOHEADER; append the palette and pixels."""
    offset = 14 + 40 + 4 * colours if pixel_offset is None else pixel_offset
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, image_size, 2835, 2835, colours, 0)
    return b"BM" + struct.pack("<IHHI", offset + image_size, 0, 0, offset) + info


def bmp_rle8(width: int, height: int, stream: bytes) -> bytes:
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    return bmp_header(width, height, 8, compression=1, colours=256, image_size=len(stream)) + palette + stream


def bmp_16bit_565(width: int = 8, height: int = 4) -> bytes:
    """A 16-bit BMP with BI_BITFIELDS masks for RGB565, all pixels pure red (Pillow writes none)."""
    row = struct.pack("<H", 0xF800) * width + b"\x00" * ((4 - width * 2 % 4) % 4)
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    return bmp_header(width, height, 16, compression=3, pixel_offset=14 + 40 + 12, image_size=len(row) * height) \
        + masks + row * height


# JPEG


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG split into its marker segments; a scan segment carries its entropy-coded data."""
    segments, position = [data[:2]], 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append(data[position:])
            break
        end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[position:end])
        position = end
    return segments


def jpeg_with_extra_scans(side: int, extra: int) -> bytes:
    """A progressive JPEG with its last scan repeated: libjpeg-turbo's "LJT-01-003" scan flood.

    Over a flat picture the last (refinement) scan is a dozen bytes, yet every copy costs
    the decoder a pass over the whole image.
    """
    data = encode(Image.new("RGB", (side, side), (90, 120, 200)), "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(data)
    scans = [s for s in segments if s[1] == 0xDA]
    assert len(scans) == 10
    return b"".join(segments[:-1]) + scans[-1] * extra + segments[-1]


def jpeg_patched(offset_after: bytes, skip: int, replacement: bytes, data: bytes | None = None) -> bytes:
    """A small JPEG with `replacement` written `skip` bytes after the first `offset_after`."""
    data = data or small("JPEG")
    at = data.index(offset_after) + skip
    return data[:at] + replacement + data[at + len(replacement) :]


def jpeg_declaring(width: int, height: int) -> bytes:
    return jpeg_patched(b"\xff\xc0", 5, struct.pack(">HH", height, width), encode(Image.new("RGB", (8, 8)), "JPEG"))


# EXIF


def orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def tiff_ifd(*entries: tuple[int, int, int, bytes], next_ifd: int = 0) -> bytes:
    """A big-endian TIFF header and one IFD of (tag, type, count, 4-byte value) entries."""
    body = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, typ, count) + value.ljust(4, b"\x00") for tag, typ, count, value in entries
    )
    return b"MM\x00\x2a\x00\x00\x00\x08" + body + struct.pack(">I", next_ifd)


def jpeg_with_raw_exif(tiff: bytes) -> bytes:
    return encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG", quality=90, exif=b"Exif\x00\x00" + tiff)


def exif_blob_bomb(tags: int = 2000, blob: int = 100_000) -> bytes:
    """An IFD whose `tags` entries all point at the same `blob` bytes (tags x blob if copied)."""
    offset = 8 + 2 + 12 * tags + 4
    entries = b"".join(struct.pack(">HHII", 0x1000 + i, 7, blob, offset) for i in range(tags))
    return b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", tags) + entries + bytes(4) + bytes(blob)


STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


def jpeg_oriented(orientation: int, size: tuple[int, int] = (1600, 1000)) -> bytes:
    """Upright: left half red, right half blue; stored as `orientation` says, over the budget."""
    upright = Image.new("RGB", size, (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    stored = upright.transpose(STORED_AS[orientation]) if orientation in STORED_AS else upright
    return encode(stored, "JPEG", quality=90, exif=orientation_exif(orientation))


def upright_landscape(prepared: PreparedImage) -> bool:
    """Scaled into the budget, wider than tall, red on the left and blue on the right."""
    image = prepared.image
    left = image.getpixel((image.width // 8, image.height // 2))
    right = image.getpixel((image.width * 7 // 8, image.height // 2))
    return (image.width > image.height and image.width * image.height <= DEFAULT.max_pixels
            and left[0] > 200 > left[2] and right[2] > 200 > right[0])


# --- the corpus -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str  # a file name as a user would send it: the extension may lie
    expect: str  # a reason from REASONS, the source format it must be read as, or ANY
    build: Callable[[], bytes]
    limits: ImageLimits = DEFAULT
    max_seconds: float | None = None
    check: Callable[[PreparedImage], bool] | None = None  # a further property of the accepted image


SIDE = AT_LIMIT_SIDE


def not_turned(prepared: PreparedImage) -> bool:
    """The 64x48 picture of jpeg_with_raw_exif, left as stored: the tag is no orientation."""
    return prepared.image.size == (64, 48)


CORPUS = [
    # Decompression bombs: declared sizes far over the limit, refused from the header alone.
    Case("bomb-png-100000x100000-rgba16.png", "too_many_pixels", lambda: png_declaring(100_000, 100_000, 16, 6)),
    Case("bomb-png-100000x100000-palette.png", "too_many_pixels", lambda: png_declaring(100_000, 100_000, 8, 3)),
    Case("bomb-png-2147483647-square.png", "too_many_pixels", lambda: png_declaring(2**31 - 1, 2**31 - 1, idat=b"")),
    Case("bomb-png-4294967295-beyond-spec.png", ANY, lambda: png_declaring(2**32 - 1, 2**32 - 1, idat=b"")),
    Case("bomb-png-100000x100000-bad-crc.png", ANY,
         lambda: PNG_SIGNATURE + ihdr(100_000, 100_000)[:-4] + bytes(4) + IEND),
    Case("bomb-apng-first-frame-65535x65535.png", ANY,
         lambda: png_with_chunks(png_chunk(b"acTL", struct.pack(">II", 1, 0)),
                                 png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 65535, 65535, 0, 0, 1, 10, 0, 0)))),
    Case("bomb-gif-frame-65535x65535.gif", "too_many_pixels", lambda: gif([(65535, 65535)])),
    Case("bomb-gif-screen-and-frame-65535x65535.gif", "too_many_pixels",
         lambda: gif([(65535, 65535)], screen=(65535, 65535))),
    Case("bomb-gif-65535x65535-second-frame.gif", "GIF", lambda: gif([(1, 1), (65535, 65535)])),
    Case("bomb-jpeg-sof-65500x65500.jpg", "too_many_pixels", lambda: jpeg_declaring(65500, 65500)),
    Case("bomb-webp-vp8x-canvas-16777216.webp", ANY, lambda: webp_vp8x_declaring(1 << 24, 1 << 24)),
    Case("bomb-webp-vp8l-16384x16384.webp", "too_many_pixels", lambda: webp_vp8l_declaring(16384, 16384)),
    Case("bomb-bmp-100000x100000.bmp", "too_many_pixels", lambda: bmp_header(100_000, 100_000) + bytes(64)),
    Case("bomb-bmp-top-down-100000x100000.bmp", "too_many_pixels", lambda: bmp_header(100_000, -100_000) + bytes(64)),
    Case("bomb-bmp-width-2147483647.bmp", ANY, lambda: bmp_header(2**31 - 1, 1) + bytes(64)),
    Case("bomb-png-iccp-16mb-inflated.png", ANY,
         lambda: png_with_chunks(png_chunk(b"iCCP", b"icc\x00\x00" + zeros_deflated(1 << 24)))),
    Case("bomb-png-ztxt-16mb-inflated.png", ANY,
         lambda: png_with_chunks(png_chunk(b"zTXt", b"Comment\x00\x00" + zeros_deflated(1 << 24)))),
    Case("bomb-png-exif-tags-share-one-blob.png", "PNG",
         lambda: png_with_chunks(png_chunk(b"eXIf", exif_blob_bomb()))),
    # Bombs within the limit: tiny files that decode to (almost) every allowed pixel.
    Case("limit-png-rgb-zeros.png", "PNG", lambda: png_zero_bomb(SIDE, SIDE), AT_LIMIT),
    Case("limit-png-rgba-zeros.png", "PNG", lambda: png_zero_bomb(SIDE, SIDE, 8, 6, 4), AT_LIMIT),
    Case("limit-png-16bit-grey-zeros.png", "PNG", lambda: png_zero_bomb(SIDE, SIDE, 16, 0, 1), AT_LIMIT),
    Case("limit-gif-transparent.gif", "GIF",
         lambda: encode(Image.new("P", (SIDE, SIDE), 3), "GIF", transparency=3), AT_LIMIT),
    Case("limit-webp-lossless-rgba.webp", "WEBP",
         lambda: encode(Image.new("RGBA", (SIDE, SIDE), (1, 2, 3, 4)), "WEBP", lossless=True, method=0, quality=0),
         AT_LIMIT),
    Case("limit-jpeg-progressive.jpg", "JPEG",
         lambda: encode(Image.new("RGB", (SIDE, SIDE), (9, 9, 9)), "JPEG", progressive=True, subsampling=0),
         AT_LIMIT),
    Case("limit-bmp-rle8.bmp", "BMP",
         lambda: bmp_rle8(SIDE, SIDE, (b"\xff\x05" * (SIDE // 255) + b"\x00\x00") * SIDE + b"\x00\x01"), AT_LIMIT),
    # Floods: valid structures repeated to burn time.
    Case("flood-jpeg-1000-scans.jpg", "corrupt", lambda: jpeg_with_extra_scans(2000, 990), max_seconds=2),
    Case("flood-jpeg-100-scans-still-read.jpg", "JPEG", lambda: jpeg_with_extra_scans(512, 90), max_seconds=2),
    Case("flood-png-20000-unknown-chunks.png", "PNG",
         lambda: png_with_chunks(png_chunk(b"quUx", b"") * 20_000), max_seconds=2),
    Case("flood-gif-comment-in-50000-blocks.gif", "GIF",
         lambda: gif([(1, 1)], extensions=b"\x21\xfe" + b"\x01x" * 50_000 + b"\x00"), max_seconds=2),
    Case("flood-bmp-rle8-row-padding.bmp", "BMP",
         lambda: bmp_rle8(4000, 500, b"\x01\x07\x00\x00" * 500 + b"\x00\x01"), max_seconds=2),
    # Truncated and structurally broken files of every accepted format.
    Case("broken-png-no-idat.png", "corrupt", lambda: PNG_SIGNATURE + ihdr(16, 16) + IEND),
    Case("broken-png-zero-size.png", "corrupt", lambda: PNG_SIGNATURE + ihdr(0, 0) + IEND),
    Case("broken-png-bit-depth-7.png", "corrupt", lambda: png_after_ihdr(ihdr(40, 30, 7))),
    Case("broken-png-colour-type-5.png", "corrupt", lambda: png_after_ihdr(ihdr(40, 30, 8, 5))),
    Case("broken-png-idat-bad-crc.png", ANY, lambda: small("PNG")[:-16] + bytes(4) + IEND),
    Case("broken-png-no-iend.png", ANY, lambda: small("PNG")[:-12]),
    Case("broken-png-idat-not-zlib.png", "corrupt",
         lambda: png_declaring(4, 4, idat=b"this is not a zlib stream at all")),
    Case("broken-png-chunk-length-4gb.png", "corrupt", lambda: PNG_SIGNATURE + ihdr(4, 4) + b"\xff\xff\xff\xffIDAT"),
    Case("broken-jpeg-soi-only.jpg", "corrupt", lambda: b"\xff\xd8\xff"),
    Case("broken-jpeg-headers-only.jpg", "corrupt", lambda: small("JPEG")[: small("JPEG").index(b"\xff\xda")]),
    Case("broken-jpeg-no-eoi.jpg", ANY, lambda: small("JPEG")[:-2]),
    Case("broken-jpeg-huffman-counts-zeroed.jpg", ANY, lambda: jpeg_patched(b"\xff\xc4", 5, bytes(16))),
    Case("broken-jpeg-zero-components.jpg", "corrupt", lambda: jpeg_patched(b"\xff\xc0", 9, b"\x00")),
    Case("broken-gif-header-only.gif", "corrupt", lambda: b"GIF89a"),
    Case("broken-gif-screen-only.gif", "corrupt", lambda: gif([(1, 1)])[:13]),
    Case("broken-gif-no-trailer.gif", ANY, lambda: gif([(1, 1)])[:-1]),
    Case("broken-gif-lzw-code-size-12.gif", ANY,
         lambda: gif([(1, 1)]).replace(GIF_ONE_PIXEL, b"\x0c" + GIF_ONE_PIXEL[1:])),
    Case("broken-gif-zero-size-frame.gif", ANY, lambda: gif([(0, 0)], screen=(0, 0))),
    Case("broken-webp-riff-only.webp", "corrupt", lambda: b"RIFF\x04\x00\x00\x00WEBP"),
    Case("broken-webp-riff-size-4gb.webp", ANY, lambda: b"RIFF\xff\xff\xff\xff" + small("WEBP")[8:]),
    Case("broken-webp-vp8-garbage.webp", "corrupt",
         lambda: riff_webp(webp_chunk(b"VP8 ", b"\x9d\x01\x2a" + bytes(40)))),
    Case("broken-webp-vp8l-bad-signature.webp", "corrupt", lambda: small("WEBP")[:20] + b"\x00" + small("WEBP")[21:]),
    Case("broken-bmp-header-only.bmp", "corrupt", lambda: b"BM" + bytes(12)),
    Case("broken-bmp-pixels-beyond-file.bmp", "corrupt", lambda: bmp_header(16, 16, pixel_offset=10**7) + bytes(32)),
    Case("broken-bmp-bit-count-7.bmp", "corrupt", lambda: bmp_header(4, 4, bits=7) + bytes(64)),
    Case("broken-bmp-header-size-2gb.bmp", "corrupt", lambda: b"BM" + bytes(12) + struct.pack("<I", 2**31) + bytes(60)),
    Case("broken-bmp-palette-2-billion.bmp", "corrupt",
         lambda: bmp_header(4, 4, bits=8, colours=2**31, pixel_offset=60) + bytes(64)),
    Case("broken-bmp-rle8-overruns.bmp", ANY, lambda: bmp_rle8(4, 4, b"\xff\x01" * 50 + b"\x00\x02\xff\xff" * 4)),
    # Names that lie about the format: the bytes decide, and what is stored is a fresh PNG.
    Case("photo-really-jpeg.png", "JPEG", lambda: small("JPEG")),
    Case("screenshot-really-png.jpg", "PNG", lambda: small("PNG")),
    Case("animation-really-gif.webp", "GIF", lambda: small("GIF")),
    Case("image-really-webp.gif", "WEBP", lambda: small("WEBP")),
    Case("picture-really-bmp.jpeg", "BMP", lambda: small("BMP")),
    Case("png-with-zip-appended.png", "PNG", lambda: small("PNG") + b"PK\x03\x04" + bytes(26) + b"payload.exe",
         check=lambda p: b"payload" not in p.encoded()),
    Case("jpeg-with-php-appended.jpg", "JPEG", lambda: small("JPEG") + b"<?php system($_GET['c']); ?>",
         check=lambda p: b"<?php" not in p.encoded()),
    # Other things disguised as images.
    Case("elf-binary.png", "unsupported_format",
         lambda: b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + bytes(200)),
    Case("windows-exe.png", "unsupported_format", lambda: b"MZ\x90\x00" + bytes(60) + b"PE\x00\x00" + bytes(100)),
    Case("svg-without-prolog.png", "unsupported_format",
         lambda: b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>'),
    Case("svgz.png", "unsupported_format", lambda: zlib.compress(b'<svg xmlns="http://www.w3.org/2000/svg"/>')),
    Case("html-with-bom.png", "unsupported_format",
         lambda: b"\xef\xbb\xbf<!doctype html><script>fetch('/x')</script>"),
    Case("html-utf16.png", "unsupported_format", lambda: "<html><body>hi</body></html>".encode("utf-16")),
    Case("pdf-binary.png", "unsupported_format",
         lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
    Case("docx-zip.png", "unsupported_format",
         lambda: b"PK\x03\x04\x14\x00\x06\x00" + bytes(22) + b"[Content_Types].xml"),
    Case("php-script.png", "unsupported_format", lambda: b"<?php echo 'hi'; ?>"),
    Case("heic-photo.png", "unsupported_format",
         lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)),
    Case("avif.png", "unsupported_format", lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64)),
    Case("jpeg-xl.png", "unsupported_format", lambda: b"\xff\x0a\xfa\x7f" + bytes(64)),
    Case("photoshop.png", "unsupported_format", lambda: b"8BPS\x00\x01" + bytes(64)),
    Case("wav-in-riff.webp", "unsupported_format", lambda: b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)),
    Case("gif-javascript-polyglot.gif", "corrupt", lambda: b"GIF89a/*\x00\x00*/=1;alert(document.cookie)//"),
    Case("png-signature-then-html.png", "corrupt", lambda: PNG_SIGNATURE + b"<html><script>alert(1)</script></html>"),
    Case("text-starting-with-bm.bmp", "corrupt", lambda: b"BMW invoice #4471: the car is ready for pickup."),
    Case("jpeg-soi-then-html.jpg", "corrupt", lambda: b"\xff\xd8\xff<html>" + bytes(32)),
    Case("webp-riff-then-html.webp", "corrupt", lambda: b"RIFF\x40\x00\x00\x00WEBP<html><script></script></html>"),
    # Long animations: only the first frame is decoded.
    Case("animated-600-frames.gif", "GIF", lambda: animation("GIF", 600), max_seconds=2),
    Case("animated-20000-frames.gif", "GIF", lambda: gif([(1, 1)] * 20_000), max_seconds=2),
    Case("animated-600-frames.png", "PNG", lambda: animation("PNG", 600), max_seconds=2),
    Case("animated-600-frames.webp", "WEBP", lambda: animation("WEBP", 600, lossless=True), max_seconds=2),
    # Extreme aspect ratios (the limit is 200:1).
    Case("strip-1x20000.png", "aspect_ratio", lambda: encode(Image.new("L", (1, 20_000)), "PNG")),
    Case("strip-20000x1.png", "aspect_ratio", lambda: encode(Image.new("L", (20_000, 1)), "PNG")),
    Case("strip-3x65000.png", "aspect_ratio", lambda: encode(Image.new("RGB", (3, 65_000)), "PNG")),
    Case("strip-3x65000.jpg", "aspect_ratio", lambda: encode(Image.new("RGB", (3, 65_000)), "JPEG")),
    Case("strip-1x20000.gif", "aspect_ratio", lambda: encode(Image.new("P", (1, 20_000)), "GIF")),
    Case("strip-20000x1.bmp", "aspect_ratio", lambda: encode(Image.new("RGB", (20_000, 1)), "BMP")),
    Case("strip-16383x1.webp", "aspect_ratio", lambda: encode(Image.new("RGB", (16_383, 1)), "WEBP", lossless=True)),
    Case("ratio-exactly-200-1x200.png", "PNG", lambda: encode(Image.new("L", (1, 200)), "PNG")),
    Case("ratio-just-over-1x201.png", "aspect_ratio", lambda: encode(Image.new("L", (1, 201)), "PNG")),
    Case("ratio-200-at-20000x100.png", "PNG", lambda: encode(Image.new("RGB", (20_000, 100), (5, 5, 5)), "PNG"),
         check=lambda p: p.width / p.height > 190),
    # 16-bit and CMYK sources.
    Case("png-16bit-rgb.png", "PNG", lambda: png_zero_bomb(64, 32, 16, 2, 3)),
    Case("png-16bit-rgba.png", "PNG", lambda: png_zero_bomb(64, 32, 16, 6, 4)),
    Case("png-16bit-grey-alpha.png", "PNG", lambda: png_zero_bomb(64, 32, 16, 4, 2)),
    Case("png-16bit-grey-downscaled.png", "PNG", lambda: encode(Image.new("I;16", (2400, 1600), 40_000), "PNG"),
         check=lambda p: 150 <= p.image.getpixel((10, 10))[0] <= 160),
    Case("png-2bit-palette.png", "PNG", lambda: encode(Image.new("P", (30, 10)), "PNG", bits=2)),
    Case("bmp-16bit-rgb565.bmp", "BMP", bmp_16bit_565,
         check=lambda p: p.image.getpixel((0, 0))[0] > 240 and p.image.getpixel((0, 0))[1:] == (0, 0)),
    Case("bmp-32bit-alpha.bmp", "BMP", lambda: encode(Image.new("RGBA", (8, 4), (0, 0, 255, 0)), "BMP")),
    Case("jpeg-cmyk-progressive.jpg", "JPEG",
         lambda: encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", progressive=True)),
    Case("jpeg-cmyk-downscaled.jpg", "JPEG", lambda: encode(Image.new("CMYK", (2400, 1600), (0, 255, 255, 0)), "JPEG"),
         check=lambda p: p.image.getpixel((10, 10))[0] > 200 and p.width * p.height <= DEFAULT.max_pixels),
    Case("jpeg-grey-downscaled.jpg", "JPEG", lambda: encode(Image.new("L", (2400, 1600), 77), "JPEG")),
    # Orientation: 1 to 8 through the downscaling (JPEG draft) path, and tags that are no orientation.
    *(Case(f"orientation-{o}-downscaled.jpg", "JPEG", functools.partial(jpeg_oriented, o), check=upright_landscape)
      for o in range(1, 9)),
    *(Case(f"orientation-value-{v}.jpg", "JPEG",
           functools.partial(lambda v: jpeg_with_raw_exif(tiff_ifd((0x0112, 3, 1, struct.pack(">H", v)))), v),
           check=not_turned)
      for v in (0, 9, 255, 65535)),
    Case("orientation-as-text.jpg", "JPEG", lambda: jpeg_with_raw_exif(tiff_ifd((0x0112, 2, 2, b"6\x00"))),
         check=not_turned),
    Case("orientation-as-rational.jpg", "JPEG",
         lambda: jpeg_with_raw_exif(tiff_ifd((0x0112, 5, 1, struct.pack(">I", 26))) + struct.pack(">II", 6, 1)),
         check=not_turned),
    Case("orientation-ifd-chain-loops.jpg", "JPEG",
         lambda: jpeg_with_raw_exif(tiff_ifd((0x0112, 3, 1, struct.pack(">H", 6)), next_ifd=8)),
         check=lambda p: p.image.size == (48, 64)),
    Case("orientation-in-xmp-only.png", "PNG",
         lambda: png_with_chunks(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
                                           b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'),
                                 base=encode(Image.new("RGB", (64, 48)), "PNG")),
         check=lambda p: p.image.size == (48, 64)),
    # Metadata Pillow cannot parse must not cost a readable picture (it is dropped anyway).
    Case("exif-not-tiff.png", "PNG", lambda: encode(Image.new("RGB", (8, 8)), "PNG", exif=b"Exif\x00\x00garbage")),
    Case("exif-not-tiff.webp", "WEBP", lambda: encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True, exif=b"junk!")),
    Case("raw-profile-exif-not-hex.png", "PNG",
         lambda: png_with_chunks(png_chunk(b"tEXt", b"Raw profile type exif\x00\nexif\n  10\nzzzz"))),
]
assert len({case.name for case in CORPUS}) == len(CORPUS), "corpus names must be unique"


@functools.cache
def build_corpus() -> dict[str, bytes]:
    """Every corpus file by name, built once per process (about a second, a few MB in all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {case.name: case.build() for case in CORPUS}


# --- the contract -----------------------------------------------------------------------


def outcome(data: bytes, limits: ImageLimits = DEFAULT) -> PreparedImage | ImageRejected:
    """prepare_image's result or its refusal; anything else propagates and fails the test."""
    try:
        return prepare_image(data, limits)
    except ImageRejected as error:
        return error


def assert_contract(result: PreparedImage | ImageRejected, limits: ImageLimits) -> None:
    """A usable RGB image within the budget, or a refusal with a known reason and messages."""
    if isinstance(result, ImageRejected):
        assert result.reason in REASONS
        assert result.message("en").strip() and result.message("zh").strip()
        return
    assert isinstance(result, PreparedImage)
    image = result.image
    assert image.mode == "RGB" and image.info == {}
    assert (result.width, result.height) == image.size
    assert image.width >= 1 and image.height >= 1
    assert image.width * image.height <= limits.max_pixels
    assert result.source_format in FORMATS
    assert result.source_width * result.source_height <= limits.max_source_pixels
    image.getpixel((image.width - 1, image.height - 1))  # the pixels are really there


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CORPUS])
def test_hostile_corpus(case: Case):
    data = build_corpus()[case.name]
    started = time.perf_counter()
    result = outcome(data, case.limits)
    elapsed = time.perf_counter() - started
    assert_contract(result, case.limits)
    got = result.reason if isinstance(result, ImageRejected) else result.source_format
    if case.expect != ANY:
        assert got == case.expect
    if isinstance(result, PreparedImage):
        encoded = result.encoded()  # what the conversation stores
        assert encoded.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(encoded)).size == result.image.size
        if case.check is not None:
            assert case.check(result), case.name
    if case.max_seconds is not None:
        assert elapsed < case.max_seconds, f"{case.name} took {elapsed:.2f} s"


def test_corpus_covers_every_format_and_reason():
    expected = {case.expect for case in CORPUS}
    assert set(FORMATS) <= expected
    assert set(REASONS) - {"empty", "too_large"} <= expected  # size checks, in test_images.py and below
    assert sum(case.name.endswith(".png") and case.expect == "unsupported_format" for case in CORPUS) >= 10
    magics = {"PNG": PNG_SIGNATURE, "JPEG": b"\xff\xd8", "GIF": b"GIF8", "WEBP": b"RIFF", "BMP": b"BM"}
    for fmt, magic in magics.items():
        broken = [name for name, data in build_corpus().items()
                  if name.startswith("broken-") and data.startswith(magic)]
        assert len(broken) >= 4, fmt


def test_a_scan_flood_is_refused_before_decoding(monkeypatch):
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    with pytest.raises(ImageRejected) as caught:
        prepare_image(build_corpus()["flood-jpeg-1000-scans.jpg"])
    assert caught.value.reason == "corrupt"
    assert decoded == []


# --- memory -----------------------------------------------------------------------------

_MEASURE = r"""
import json, pickle, resource, sys, warnings
warnings.simplefilter("ignore")
from engine.images import ImageLimits, ImageRejected, prepare_image

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

with open(sys.argv[1], "rb") as file:
    items = pickle.load(file)
baseline, baseline_maxrss = peak_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcomes = {}
for name, data, limits in items:
    try:
        prepared = prepare_image(data, ImageLimits(**limits))
        prepared.encoded()
        outcomes[name] = prepared.source_format
    except ImageRejected as error:
        outcomes[name] = error.reason
print(json.dumps({"baseline_kib": baseline, "peak_kib": peak_kib(), "outcomes": outcomes,
                  "ru_maxrss_kib": [baseline_maxrss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux /proc")
def test_whole_corpus_runs_in_bounded_memory(tmp_path):
    """Every corpus item in one fresh process: its peak RSS grows by less than MEMORY_BOUND_MB.

    The peak is VmHWM, the high-water mark of the child's own address space, read after
    imports and after loading the corpus bytes, so the figure is what intake itself needed
    at its worst moment. (ru_maxrss would not do: Linux carries it across execve, so the
    child starts at whatever pytest's own peak was, and a smaller growth never shows.)
    The 10 MP bombs-within-the-limit dominate the figure (lossless WebP with alpha: about
    19 bytes per source pixel); the bombs over the limit must add nothing.
    """
    corpus = build_corpus()
    path = tmp_path / "corpus.pickle"
    path.write_bytes(pickle.dumps([(case.name, corpus[case.name], asdict(case.limits)) for case in CORPUS]))
    finished = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    lines = finished.stdout.splitlines()
    assert len(lines) == 1, finished.stdout[-2000:]
    report = json.loads(lines[0])
    growth_mb = (report["peak_kib"] - report["baseline_kib"]) / 1024
    print(f"hostile corpus: {len(CORPUS)} files, peak RSS growth {growth_mb:.0f} MB (bound {MEMORY_BOUND_MB} MB)")
    assert growth_mb < MEMORY_BOUND_MB
    for case in CORPUS:
        got = report["outcomes"][case.name]
        assert got in REASONS or got in FORMATS
        if case.expect != ANY:
            assert got == case.expect, case.name


# --- fuzzing ----------------------------------------------------------------------------

# Small limits keep each decode cheap whatever a mutated header declares; the contract
# does not depend on the limits.
FUZZ_LIMITS = ImageLimits(max_bytes=1 << 20, max_source_pixels=1_000_000, max_pixels=64 * 64)
FUZZ_SETTINGS = settings(
    max_examples=2500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@functools.cache
def fuzz_seeds() -> tuple[bytes, ...]:
    """Small valid files: each accepted format, and the odd variants of each."""
    rgba = Image.new("RGBA", (24, 16), (200, 10, 10, 128))
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return (
        small("PNG", (24, 16)),
        small("JPEG", (24, 16)),
        small("GIF", (24, 16)),
        small("WEBP", (24, 16)),
        small("BMP", (24, 16)),
        encode(rgba, "PNG"),
        encode(Image.new("I;16", (16, 8), 30_000), "PNG"),
        encode(Image.new("RGB", (24, 16), (1, 200, 3)), "JPEG", progressive=True),
        encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        encode(Image.new("RGB", (16, 8)), "JPEG", exif=orientation_exif(6)),
        encode(rgba, "WEBP", quality=60),
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        encode(Image.new("P", (24, 16), 1), "BMP"),
        bmp_16bit_565(6, 4),
        bmp_rle8(8, 4, b"\x04\x01\x04\x02\x00\x00" * 4 + b"\x00\x01"),
    )


INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF)


def magic_spans(data: bytes) -> list[tuple[int, int]]:
    """Where the format sniffer looks (a WebP's RIFF size in between is fair game)."""
    if data.startswith(b"RIFF"):
        return [(0, 4), (8, 12)]
    for magic in (PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF8", b"BM"):
        if data.startswith(magic):
            return [(0, len(magic))]
    return []


@st.composite
def mutated_images(draw) -> bytes:
    seed = draw(st.sampled_from(fuzz_seeds()))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "byte", "truncate", "insert", "delete", "field", "repeat", "splice")))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[max(at, 1):]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "field":
            # Overwrite a header field (sizes, lengths, counts, offsets) with an edge value.
            offset = draw(st.integers(0, min(len(data), 96)))
            width = draw(st.sampled_from((1, 2, 4)))
            order = draw(st.sampled_from(("big", "little")))
            value = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            data[offset : offset + width] = value.to_bytes(width, order)
        elif kind == "repeat":
            # Duplicate a run of bytes: repeated chunks, segments, scans, frames.
            length = draw(st.integers(1, 256))
            data[at:at] = bytes(data[at : at + length]) * draw(st.integers(1, 50))
        elif kind == "splice":
            other = draw(st.sampled_from(fuzz_seeds()))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    if draw(st.integers(0, 9)):  # mostly keep the magic bytes, so the decoders are what gets fuzzed
        for start, end in magic_spans(seed):
            if len(data) >= end:
                data[start:end] = seed[start:end]
    return bytes(data)


MAGICS = (PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"RIFF\x00\x00\x00\x00WEBPVP8X")


def check_fuzzed(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_contract(outcome(data, FUZZ_LIMITS), FUZZ_LIMITS)


@FUZZ_SETTINGS
@given(mutated_images())
def test_fuzz_mutated_valid_images(data):
    check_fuzzed(data)


@settings(FUZZ_SETTINGS, max_examples=500)
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data):
    check_fuzzed(data)


@settings(FUZZ_SETTINGS, max_examples=1500)
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_behind_a_real_magic(magic, rest):
    check_fuzzed(magic + rest)


# --- over HTTP: the widget API ----------------------------------------------------------

HTTP_LIMIT_BYTES = 1 << 20
_client_ids = itertools.count(1)


def _upload(base: str, name: str, data: bytes, text: str = "", replies: int = 2) -> dict:
    """A fresh visitor sends one message with one file (as image/png); returns the conversation
    once `replies` messages have answered it."""
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{base}/widget/api/messages",
        headers=headers,
        data={"client_message_id": f"hostile-{next(_client_ids):06d}", "text": text},
        files=[("images", (name, data, "image/png"))],
        timeout=30,
    )
    assert response.status_code == 202, (name, response.status_code, response.text)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers, timeout=10).json()
        if sum(m["role"] != "user" for m in conversation["messages"]) >= replies:
            return conversation
        time.sleep(0.05)
    raise AssertionError(f"{name}: no answer arrived")


def test_hostile_uploads_through_the_widget_api(tmp_path):
    from engine.stub import StubEngine
    from tests.live_server import live_server

    cases, corpus = {case.name: case for case in CORPUS}, build_corpus()
    hostile = [
        "elf-binary.png", "svg-without-prolog.png", "html-with-bom.png", "pdf-binary.png", "docx-zip.png",
        "bomb-png-100000x100000-palette.png", "bomb-gif-frame-65535x65535.gif", "strip-3x65000.png",
        "flood-jpeg-1000-scans.jpg", "broken-png-idat-not-zlib.png",
    ]
    with live_server(tmp_path, engine=StubEngine(), image_max_bytes=HTTP_LIMIT_BYTES, widget_rate_per_ip=10_000,
                     widget_rate_per_visitor=1_000) as (base, app):
        limits = app.state.runtime.settings.image_limits()
        for name in hostile:
            case = cases[name]
            conversation = _upload(base, name, corpus[name])
            user, notice, handover = conversation["messages"][:3]
            assert user["role"] == "user" and user["images"] == []
            assert notice["role"] == "system" and notice["kind"] == "notice"
            assert notice["text"] == ImageRejected(case.expect, limits).message("en"), name
            assert handover["kind"] == "handover"  # nothing else to answer: a person takes over

        # With a question alongside, the question is still answered after the notice.
        conversation = _upload(base, "also-text.png", corpus["elf-binary.png"], text="Why was I charged?")
        assert [m["kind"] for m in conversation["messages"][1:3]] == ["notice", "answer"]

        # A real picture under the wrong name and type is read for what it is.
        conversation = _upload(base, "photo-really-jpeg.png", corpus["photo-really-jpeg.png"], replies=1)
        assert len(conversation["messages"][0]["images"]) == 1
        assert [m["kind"] for m in conversation["messages"][1:]] == ["answer"]

        # Over the byte limit: refused at the door with a readable message.
        token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
        too_big = httpx.post(
            f"{base}/widget/api/messages",
            headers={"Authorization": f"Bearer {token}"},
            data={"client_message_id": "hostile-too-big-1"},
            files=[("images", ("huge.png", PNG_SIGNATURE + bytes(HTTP_LIMIT_BYTES), "image/png"))],
            timeout=30,
        )
        assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"
        assert too_big.json()["message"]

        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
