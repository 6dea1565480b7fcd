"""The screenshot corpus is trustworthy ground truth: what the repository says is drawn is what is
drawn, every box sits where its string is, the card numbers and IBANs are well-formed, the decoys
really look like card numbers, and the corpus covers the scenes OCR and redaction must handle.

No OCR here: these check the corpus itself, quickly.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from PIL import Image, ImageChops

from bench import screenshot_corpus as corpus

SENSITIVE = {"card", "iban", "email", "phone", "code"}
EVIDENCE = {"error_code", "amount", "order", "tracking", "date", "title"}


@pytest.fixture(scope="module")
def shots():
    return corpus.samples()


def items(shots, kind=None):
    return [(shot, drawn, item) for shot in shots for drawn in shot.strings for item in drawn.items
            if kind is None or item.kind == kind]


def luhn(digits: str) -> bool:
    checksum = 0
    for i, digit in enumerate(int(d) for d in reversed(digits)):
        checksum += digit if i % 2 == 0 else (digit * 2 if digit < 5 else digit * 2 - 9)
    return checksum % 10 == 0


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def card_length_runs(value: str) -> list[str]:
    """Runs of 13-19 digits: bare, or in groups joined by spaces or hyphens the way cards are written."""
    joined = re.sub(r"(?<=\d)[ -](?=\d)", "", value)
    return [run for run in re.findall(r"\d+", value) + re.findall(r"\d+", joined) if 13 <= len(run) <= 19]


def test_the_committed_truth_is_what_the_generator_draws():
    committed = json.loads(corpus.TRUTH.read_text(encoding="utf-8"))
    assert json.loads(json.dumps(corpus.truth())) == committed


def test_drawing_is_deterministic(shots):
    by_name = {shot.name: shot for shot in shots}
    for name in ("card_statement_en_desktop", "renewal_bill_zh_phone", "photo_payment_failed_en", "router_photo",
                 "tiny_order_status_en"):
        again = corpus.sample(name)
        assert hashlib.sha256(again.image.tobytes()).digest() == hashlib.sha256(by_name[name].image.tobytes()).digest()
        assert again.strings == by_name[name].strings


def test_names_are_unique_file_safe_and_images_rgb(shots):
    names = [shot.name for shot in shots]
    assert len(names) == len(set(names))
    assert 30 <= len(names) <= 40
    for shot in shots:
        assert re.fullmatch(r"[a-z0-9_]+", shot.name)
        assert shot.image.mode == "RGB"
        assert shot.language in ("en", "zh", "mixed")
    with pytest.raises(KeyError):
        corpus.sample("no_such_screenshot")


def test_every_item_is_a_substring_boxed_inside_its_string_and_the_image(shots):
    for shot in shots:
        width, height = shot.image.size
        for drawn in shot.strings:
            x0, y0, x1, y1 = drawn.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (shot.name, drawn)
            for item in drawn.items:
                assert item.value in drawn.text, (shot.name, item)
                a0, b0, a1, b1 = item.box
                assert 0 <= a0 < a1 <= width and 0 <= b0 < b1 <= height, (shot.name, item)
                assert x0 - 2 <= a0 and y0 - 2 <= b0 and a1 <= x1 + 2 and b1 <= y1 + 2, (shot.name, drawn.box, item)
                assert item.kind in SENSITIVE | EVIDENCE
                assert item.sensitive == (item.kind in SENSITIVE)


def width_share(text: str) -> float:
    """Roughly how wide `text` is drawn, in Latin letters: a Chinese character takes about two."""
    return sum(2 if "\u3000" <= char <= "\uffef" else 1 for char in text)


def test_item_boxes_sit_on_their_substring_and_are_tight_around_its_ink(shots):
    """Where a substring starts in its string and how much of it it takes show in its box; inside the box,
    the ink of its glyphs reaches every edge."""
    for shot, drawn, item in items(shots):
        if "photo" in shot.tags or shot.unreadable:
            continue
        x0, _, x1, _ = drawn.box
        start = drawn.text.index(item.value)
        whole = width_share(drawn.text)
        assert abs((item.box[0] - x0) / (x1 - x0) - width_share(drawn.text[:start]) / whole) < 0.2, (shot.name, item)
        assert abs((item.box[2] - item.box[0]) / (x1 - x0) - width_share(item.value) / whole) < 0.3, (shot.name, item)
        crop = shot.image.crop(item.box)
        background = max(crop.getcolors(crop.width * crop.height))[1]
        ink = ImageChops.difference(crop, Image.new("RGB", crop.size, background)).convert("L").point(
            lambda v: 255 if v > 40 else 0).getbbox()
        slack = max(3, crop.height // 5)  # faint anti-aliased edges, side bearings: less than a character
        assert ink, (shot.name, item)
        assert ink[0] <= slack and ink[1] <= slack, (shot.name, item, ink)
        assert ink[2] >= crop.width - slack and ink[3] >= crop.height - slack, (shot.name, item, ink)


def test_card_numbers_pass_luhn_and_ibans_pass_mod_97(shots):
    cards = items(shots, "card")
    for shot, _, item in cards:
        assert re.fullmatch(r"\d[\d -]+\d", item.value), item.value
        digits = re.sub(r"\D", "", item.value)
        assert 13 <= len(digits) <= 19 and luhn(digits), (shot.name, item.value)
    assert len({re.sub(r"\D", "", item.value) for _, _, item in cards}) >= 6, "different card numbers across samples"
    ibans = items(shots, "iban")
    for shot, _, item in ibans:
        assert iban_ok(item.value), (shot.name, item.value)
    assert {"DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32"} <= {item.value for _, _, item in ibans}


def test_decoys_are_marked_and_really_pass_luhn(shots):
    numbers = items(shots, "order") + items(shots, "tracking")
    for shot, _, item in numbers:
        assert item.luhn_valid == any(luhn(run) for run in card_length_runs(item.value)), (shot.name, item.value)
    for shot, _, item in items(shots):
        assert not item.luhn_valid or item.kind in ("order", "tracking"), (shot.name, item)
    decoys = [item for _, _, item in numbers if item.luhn_valid]
    assert any(item.kind == "order" and re.fullmatch(r"\d{4}( \d{4}){3}", item.value) for item in decoys)
    assert any(item.kind == "tracking" and re.fullmatch(r"\d{16}", item.value) for item in decoys)
    assert any(item.kind == "order" and re.fullmatch(r"[A-Z]+-\d{16}-\d+", item.value) for item in decoys)


def test_the_corpus_covers_the_scenes_support_sees(shots):
    tags = {tag for shot in shots for tag in shot.tags}
    assert {"desktop", "phone", "photo", "jpeg", "dark", "small-text", "statement", "bill", "error", "order",
            "tracking", "login", "2fa", "checkout", "transfer", "device", "skeleton", "decoy", "blurred", "too-dark",
            "tiny"} <= tags
    assert {shot.language for shot in shots} == {"en", "zh", "mixed"}
    sizes = {shot.image.size for shot in shots}
    assert {(1080, 2340), (750, 1334), (1920, 1080), (1440, 900)} <= sizes
    for language in ("en", "zh"):
        for device in ("phone", "desktop"):
            assert any(shot.language == language and device in shot.tags for shot in shots), (language, device)
    assert {item.kind for _, _, item in items(shots)} == SENSITIVE | EVIDENCE
    values = {item.value for _, _, item in items(shots)}
    assert {"CARD_DECLINED", "E-4012", "RISK_REJECTED", "E-3301", "0x80070005", "HTTP 502", "ERR_CONNECTION_RESET",
            "DD2024030588812", "112-4432871-9930012", "SF1234567890123", "1Z999AA10123456784", "482913", "739215",
            "Tr0ub4dor&3", "jane.doe@example.com", "+86 138 0013 8000", "138-0013-8000", "(415) 555-0132",
            "+44 20 7946 0958", "4539 1488 0343 6467", "5425-2334-3010-9903", "3714 496353 98431",
            "¥1,288.00", "$88.00", "88.00 元", "CNY 88.00", "€12.50", "2024-03-05 14:22", "2024年3月5日",
            "Mar 5, 2024"} <= values
    texts = {drawn.text for shot in shots for drawn in shot.strings}
    assert "Visa •••• 1881" in texts and "9:41" in texts
    assert any("自动续费" in text and "会员" in text for text in texts) and any("扣款" in text for text in texts)


def test_readable_screens_have_one_title_and_text_free_ones_none(shots):
    for shot in shots:
        titles = [item for drawn in shot.strings for item in drawn.items if item.kind == "title"]
        assert len(titles) == (0 if shot.textless else 1), shot.name
        if shot.textless:
            assert not shot.strings and not shot.unreadable
    assert {tag for shot in shots if shot.textless for tag in shot.tags} >= {"device", "skeleton"}


def test_photographed_screens_are_jpeg_photos_with_their_strings(shots):
    photos = [shot for shot in shots if "photo" in shot.tags and not shot.textless]
    assert len(photos) >= 2
    for shot in photos:
        assert "jpeg" in shot.tags and shot.strings and not shot.unreadable
        assert corpus.file_name(shot).endswith(".jpg")


def test_unreadable_screens_are_blurred_too_dark_or_tiny(shots):
    unreadable = {tag: shot for shot in shots if shot.unreadable for tag in shot.tags}
    assert {"blurred", "too-dark", "tiny"} <= set(unreadable)
    low, high = zip(*unreadable["too-dark"].image.getextrema())
    assert max(high) - min(low) < 8
    assert unreadable["tiny"].image.size == (160, 90)
    for shot in unreadable.values():
        assert shot.strings and not shot.textless


def test_small_text_and_dark_mode_are_what_they_say(shots):
    small = [shot for shot in shots if "small-text" in shot.tags]
    for shot in small:
        heights = [drawn.box[3] - drawn.box[1] for drawn in shot.strings]
        assert sum(h <= 16 for h in heights) >= len(heights) // 3, shot.name
    for shot in shots:
        if "dark" in shot.tags:
            grey = shot.image.convert("L").resize((64, 64))
            assert sum(grey.getdata()) / (64 * 64) < 80, shot.name


def test_write_saves_every_image_and_its_truth(tmp_path):
    paths = corpus.write(tmp_path)
    rows = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    assert [path.name for path in paths] == [row["file"] for row in rows]
    assert rows == json.loads(corpus.TRUTH.read_text(encoding="utf-8"))
    assert {path.suffix for path in paths} == {".png", ".jpg"}


def test_check_fails_when_the_committed_truth_is_stale(monkeypatch, tmp_path, capsys):
    rows = json.loads(corpus.TRUTH.read_text(encoding="utf-8"))
    monkeypatch.setattr(corpus, "truth", lambda: rows)
    assert corpus.main(["--check"]) == 0
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps([dict(rows[0], tags=["desktop"])] + rows[1:]), encoding="utf-8")
    monkeypatch.setattr(corpus, "TRUTH", stale)
    assert corpus.main(["--check"]) == 1
    assert rows[0]["name"] in capsys.readouterr().err
    assert corpus.main(["--update"]) == 0
    assert json.loads(stale.read_text(encoding="utf-8")) == rows


def test_missing_fonts_name_the_debian_packages(monkeypatch, tmp_path):
    corpus.font.cache_clear()
    monkeypatch.setattr(corpus, "FONT_DIR", tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-cjk fonts-dejavu"):
            corpus.font("cjk", 20)
    finally:
        corpus.font.cache_clear()
