"""`snapdesk inspect`: what Snapdesk reads in a screenshot, without a model or a server.

An operator checking why a screenshot was redacted (or not), or what evidence an agent will
see, runs the very steps a conversation runs: intake, OCR, redaction, evidence, and the size
the screenshot is stored at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.images import ImageRejected, prepare_image
from engine.ocr import OcrReader
from engine.screenshots import ScreenshotReading, fit_reading, read_screenshot, reading_limits

from .settings import Settings

EXIT_REFUSED = 2


def inspect_one(path: Path, settings: Settings, reader: OcrReader) -> tuple[ScreenshotReading, dict]:
    """Raises OSError for an unreadable file and ImageRejected for a refused image."""
    options = settings.reading_options()
    data = path.read_bytes()
    started = time.perf_counter()
    prepared = prepare_image(data, reading_limits(settings.image_limits()))
    decoded = time.perf_counter()
    rows = reader.read_sync(prepared.image)
    read = time.perf_counter()
    reading = read_screenshot(prepared.image, rows, options.kinds, redact=options.redact,
                              ocr_ms=(read - decoded) * 1000)
    reading = fit_reading(reading, settings.image_limits().max_pixels)
    timings = {"decode_ms": round((decoded - started) * 1000, 1), **reading.timings,
               "total_ms": round((time.perf_counter() - started) * 1000, 1)}
    return reading, timings


class Refused(Exception):
    """An image that cannot be used, with the line to print."""


def read_file(name: str, settings: Settings, reader: OcrReader) -> tuple[ScreenshotReading, dict]:
    """`inspect_one` for a file named on the command line; Refused says why it cannot be read."""
    try:
        return inspect_one(Path(name), settings, reader)
    except OSError as exc:
        raise Refused(f"cannot read {name}: {exc.strerror or exc}") from None
    except ImageRejected as exc:
        raise Refused(f"{name}: {exc.message('en')} ({exc.reason})") from None


def _document(path: Path, reading: ScreenshotReading, timings: dict) -> dict:
    return {
        "file": str(path),
        "width": reading.image.width,
        "height": reading.image.height,
        "lines": list(reading.lines),
        "evidence": reading.evidence.as_dict(),
        "summary": reading.evidence.summary(),
        "redactions": [r.as_dict() for r in reading.redactions],
        "unreadable": reading.unreadable,
        "readability": reading.readability.as_dict(),
        "timings": timings,
    }


def _print_text(document: dict) -> None:
    print(f"== {document['file']} ({document['width']}x{document['height']} as stored)")
    print(f"Text ({len(document['lines'])} lines):")
    for line in document["lines"]:
        x0, y0, x1, y1 = line["box"]
        print(f"  [{x0:>4},{y0:>4} {x1:>4},{y1:>4}] {line['score']:.2f}  {line['text']}")
    evidence = document["evidence"]
    print(f"Evidence: {document['summary'] or '(none)'}")
    for key in ("title", "error_codes", "amounts", "orders", "tracking", "dates"):
        value = evidence.get(key)
        if value:
            print(f"  {key.replace('_', ' ')}: {value if isinstance(value, str) else ', '.join(value)}")
    print(f"Redactions ({len(document['redactions'])}):")
    for redaction in document["redactions"]:
        last4 = f" •••• {redaction['last4']}" if redaction["last4"] else ""
        print(f"  {redaction['kind']}{last4} at {redaction['box']}")
    if document["unreadable"]:
        figures = document["readability"]
        print(f"Unreadable: no text and too little detail (sharpness {figures['sharpness']}, "
              f"contrast {figures['contrast']})")
    print("Timings: " + " · ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in document["timings"].items()))


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    reader = OcrReader(workers=1, timeout_s=settings.ocr_timeout_s)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    documents = []
    for name in args.images:
        path = Path(name)
        try:
            reading, timings = read_file(name, settings, reader)
        except Refused as exc:
            print(f"snapdesk: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if out_dir is not None:
            reading.image.save(out_dir / f"{path.stem}.png", format="PNG")
        document = _document(path, reading, timings)
        documents.append(document)
        if not args.json:
            _print_text(document)
    if args.json:
        print(json.dumps(documents, ensure_ascii=False, indent=2))
    reader.close()
    return 0


def add_parser(commands) -> None:
    inspect = commands.add_parser(
        "inspect", help="read screenshots as Snapdesk does: text, evidence, personal data painted out, timings"
    )
    inspect.add_argument("images", nargs="+", metavar="IMAGE")
    inspect.add_argument("--json", action="store_true", help="one JSON document: a list with one object per image")
    inspect.add_argument("--out", metavar="DIR", help="write each redacted image as DIR/<name>.png")
