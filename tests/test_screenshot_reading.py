"""The project's screenshot corpus read, redacted and scored by the real OCR.

The whole corpus is read once for the module (about a minute on two cores), then every test
looks at its part of the result: each sensitive item hidden and unreadable when the redacted
image is read again, nothing else painted over (Luhn-valid order and tracking numbers
included), evidence kept readable, unreadable screenshots told apart from clear photos.
"""

from __future__ import annotations

import pytest

from bench.screenshot_corpus import samples
from bench.screenshot_eval import read_sample, score, totals
from engine.ocr import OcrReader

CORPUS = samples()
READABLE = [s for s in CORPUS if not (s.unreadable or s.textless)]
OTHERS = [s for s in CORPUS if s.unreadable or s.textless]


@pytest.fixture(scope="module")
def reader():
    ocr = OcrReader(workers=1)
    ocr.load()
    yield ocr
    ocr.close()


@pytest.fixture(scope="module")
def scores(reader):
    return {sample.name: score(sample, reader) for sample in READABLE}


@pytest.mark.parametrize("name", [s.name for s in READABLE if any(i.sensitive for d in s.strings for i in d.items)])
def test_every_sensitive_item_is_painted_over_and_unreadable_when_read_again(scores, name):
    assert scores[name].missed == []


@pytest.mark.parametrize("name", [s.name for s in READABLE])
def test_nothing_else_is_painted_over(scores, name):
    assert scores[name].false_positives == []


def test_luhn_valid_order_and_tracking_numbers_are_not_cards(scores):
    decoys = [(s.name, i) for s in READABLE for d in s.strings for i in d.items if i.luhn_valid]
    assert len(decoys) >= 4
    for name, item in decoys:
        reading = scores[name].reading
        assert not any(r.kind == "card" and _covers(r.box, item.box) for r in reading.redactions), (name, item.value)


def test_evidence_beside_personal_data_stays_readable(scores):
    obscured = {name: s.obscured for name, s in scores.items() if s.obscured}
    assert obscured == {}


def test_evidence_is_found_in_almost_every_screenshot(scores):
    figures = totals(list(scores.values()))
    lost = {name: s.lost for name, s in scores.items() if s.lost}
    assert figures["evidence_recall"] >= 0.95, lost


@pytest.mark.parametrize("sample", OTHERS, ids=[s.name for s in OTHERS])
def test_unreadable_screenshots_are_told_apart_from_clear_photos(reader, sample):
    reading, _ = read_sample(sample, reader)
    assert reading.unreadable is sample.unreadable


def test_no_readable_screenshot_is_called_unreadable(scores):
    assert [name for name, s in scores.items() if s.reading.unreadable] == []


def _covers(box, item) -> bool:
    width = min(box[2], item[2]) - max(box[0], item[0])
    height = min(box[3], item[3]) - max(box[1], item[1])
    return width > 0 and height > 0
