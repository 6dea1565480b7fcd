"""Tests for engine.evidence: what a screenshot's OCR rows show that support needs, and what they
must not be mistaken for (a year, a version, a phone, a redacted card).

Every test goes through `evidence()`, which hides personal data with find_sensitive first, as
Snapdesk does, and checks each finding is exactly its slice of its row.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from engine.evidence import SUMMARY_LIMIT, Evidence, extract_evidence
from engine.sensitive import Finding, find_sensitive


def evidence(rows: list[str], heights: list[float] | None = None) -> Evidence:
    hidden = find_sensitive(rows)
    for finding in hidden:
        assert finding.value == rows[finding.row][finding.start:finding.end]
    return extract_evidence(rows, heights, hidden)


# --- each extractor -------------------------------------------------------------------------

EXTRACTED = [
    # error codes
    pytest.param(["Payment failed — CARD_DECLINED (E-4012)"], "error_codes", ("CARD_DECLINED", "E-4012"),
                 id="error-name-and-code"),
    pytest.param(["风控拒绝：RISK_REJECTED（E-3301）"], "error_codes", ("RISK_REJECTED", "E-3301"),
                 id="error-fullwidth-brackets"),
    pytest.param(["Error code 0x80070005"], "error_codes", ("0x80070005",), id="error-hex"),
    pytest.param(["502 Bad Gateway · HTTP 502"], "error_codes", ("HTTP 502",), id="error-http"),
    pytest.param(["HTTP ERROR 500"], "error_codes", ("HTTP ERROR 500",), id="error-chrome-http-error"),
    pytest.param(["This site can't be reached ERR_CONNECTION_RESET"], "error_codes", ("ERR_CONNECTION_RESET",),
                 id="error-err-prefix"),
    pytest.param(["Error 404 page not found"], "error_codes", ("Error 404",), id="error-word-and-number"),
    pytest.param(["错误码：1001"], "error_codes", ("1001",), id="error-cn-labelled"),
    pytest.param(["Error code: 4012"], "error_codes", ("4012",), id="error-en-labelled"),
    # amounts
    pytest.param(["实付款 ¥1,288.00"], "amounts", ("¥1,288.00",), id="amount-yen-thousands"),
    pytest.param(["Total $88.00"], "amounts", ("$88.00",), id="amount-dollar"),
    pytest.param(["自动续费 88.00 元"], "amounts", ("88.00 元",), id="amount-yuan-after"),
    pytest.param(["CNY 88.00"], "amounts", ("CNY 88.00",), id="amount-code-before"),
    pytest.param(["€12.50 · ￥88"], "amounts", ("€12.50", "￥88"), id="amount-euro-and-fullwidth-yen"),
    pytest.param(["退款 -¥88.00"], "amounts", ("-¥88.00",), id="amount-negative"),
    pytest.param(["1,288.00 CNY"], "amounts", ("1,288.00 CNY",), id="amount-code-after"),
    pytest.param(["US$12.50"], "amounts", ("US$12.50",), id="amount-us-dollar"),
    pytest.param(["会员费 88元"], "amounts", ("88元",), id="amount-yuan-no-space"),
    pytest.param(["¥1，288.00"], "amounts", ("¥1，288.00",), id="amount-fullwidth-comma-kept-as-shown"),
    # orders
    pytest.param(["订单号：DD2024030588812"], "orders", ("DD2024030588812",), id="order-cn-label"),
    pytest.param(["Order #112-4432871-9930012"], "orders", ("#112-4432871-9930012",), id="order-hash-attached"),
    pytest.param(["ORDER # 112-4432871-9930012"], "orders", ("112-4432871-9930012",), id="order-hash-apart"),
    pytest.param(["Your order 112-4432871-9930012 has shipped"], "orders", ("112-4432871-9930012",),
                 id="order-amazon-form"),
    pytest.param(["ORD-20240305-0012"], "orders", ("ORD-20240305-0012",), id="order-ord-prefix"),
    pytest.param(["Order No.:4539 1488 0343 6467"], "orders", ("4539 1488 0343 6467",), id="order-luhn-valid-split"),
    pytest.param(["订单编号", "DD2024030588812 复制"], "orders", ("DD2024030588812",), id="order-value-on-next-row"),
    pytest.param(["业务编号 Reference DD2024030588812"], "orders", ("DD2024030588812",), id="order-reference-label"),
    pytest.param(["商户单号 M88120240305142210"], "orders", ("M88120240305142210",), id="order-merchant-order-label"),
    pytest.param(["Transaction ID: 4539148803436467"], "orders", ("4539148803436467",), id="order-transaction-label"),
    pytest.param(["Receipt R-20240305-0042 · Mar 5, 2024"], "orders", ("R-20240305-0042",), id="order-receipt-label"),
    pytest.param(["2024-03-05 14:22 星河视频 88.00元 DD2024030588812"], "orders", ("DD2024030588812",),
                 id="order-unlabelled-in-table"),
    pytest.param(["交易时间 摘要 金额 订单号", "2024-03-05 14:22 星河视频 88.00元"], "orders", (),
                 id="order-header-label-over-a-date"),
    pytest.param(["Order status: shipped"], "orders", (), id="order-label-without-number"),
    pytest.param(["Order 2024-03-05"], "orders", (), id="order-date-is-not-an-order"),
    # tracking
    pytest.param(["运单号：SF1234567890123"], "tracking", ("SF1234567890123",), id="tracking-cn-label"),
    pytest.param(["SF1234567890123 顺丰速运"], "tracking", ("SF1234567890123",), id="tracking-sf-form"),
    pytest.param(["UPS 1Z999AA10123456784"], "tracking", ("1Z999AA10123456784",), id="tracking-ups-form"),
    pytest.param(["快递单号", "YT1234567890123"], "tracking", ("YT1234567890123",), id="tracking-value-on-next-row"),
    pytest.param(["Tracking number: 9400 1000 0000 0000 0000 00"], "tracking", ("9400 1000 0000 0000 0000 00",),
                 id="tracking-usps-split"),
    # dates
    pytest.param(["下单时间：2024-03-05 14:22"], "dates", ("2024-03-05 14:22",), id="date-iso-with-time"),
    pytest.param(["2024/03/05 14:22:09"], "dates", ("2024/03/05 14:22:09",), id="date-slashes-seconds"),
    pytest.param(["扣款日期 2024年3月5日"], "dates", ("2024年3月5日",), id="date-cn"),
    pytest.param(["3月5日 14:22 自动续费"], "dates", ("3月5日 14:22",), id="date-cn-no-year"),
    pytest.param(["Charged on Mar 5, 2024"], "dates", ("Mar 5, 2024",), id="date-en-month-first"),
    pytest.param(["5 March 2024 at 14:22"], "dates", ("5 March 2024 at 14:22",), id="date-en-day-first-at-time"),
    pytest.param(["Delivered Mar 5"], "dates", ("Mar 5",), id="date-en-no-year"),
    pytest.param(["Paid 05.03.2024"], "dates", ("05.03.2024",), id="date-dotted"),
    pytest.param(["2024-03-05T14:22:00Z"], "dates", ("2024-03-05T14:22:00",), id="date-iso-t"),
    pytest.param(["Last checked:2024-03-0514:22"], "dates", ("2024-03-0514:22",), id="date-ocr-glued-time"),
    pytest.param(["2024年3月6日08:12快件已到达"], "dates", ("2024年3月6日08:12",), id="date-cn-glued-time"),
    pytest.param(["Order ORD-2024-03-05-0012"], "dates", (), id="date-inside-an-id"),
]


@pytest.mark.parametrize(("rows", "field", "values"), EXTRACTED)
def test_each_kind_of_evidence_as_shown(rows, field, values):
    assert getattr(evidence(rows), field) == values


# --- false positives ------------------------------------------------------------------------

NOT_EVIDENCE = [
    pytest.param("© 2024 Snapdesk", id="bare-year"),
    pytest.param("Version v2.3.1", id="version"),
    pytest.param("Battery 50%", id="percentage"),
    pytest.param("9:41", id="lone-time"),
    pytest.param("Call 138-0013-8000", id="phone"),
    pytest.param("You have 1234 points", id="count"),
    pytest.param("PAYMENT FAILED", id="uppercase-words"),
    pytest.param("OK", id="ok"),
    pytest.param("Pay in USD", id="currency-word"),
    pytest.param("UTF-8 COVID-19", id="dashed-words"),
    pytest.param("May I help you 5 times", id="may"),
    pytest.param("snake_case_name", id="lowercase-underscore"),
]


@pytest.mark.parametrize("row", NOT_EVIDENCE)
def test_things_that_are_not_evidence(row):
    found = evidence([row])
    assert (found.error_codes, found.amounts, found.orders, found.tracking, found.dates) == ((),) * 5


def test_a_luhn_valid_order_number_is_evidence_and_a_card_is_not():
    rows = ["订单号：4539148803436467", "支付卡号 4539 1488 0343 6467"]
    assert [f.row for f in find_sensitive(rows)] == [1]
    assert evidence(rows).orders == ("4539148803436467",)


def test_nothing_inside_a_hidden_span_is_evidence():
    rows = ["Order 2024-03-05 ¥88.00 E-4012"]
    everything = extract_evidence(rows)
    assert (everything.dates, everything.amounts, everything.error_codes) == (("2024-03-05",), ("¥88.00",), ("E-4012",))
    hidden = [Finding("phone", 0, 6, len(rows[0]), rows[0][6:])]
    assert extract_evidence(rows, hidden=hidden).is_empty()


def test_values_are_deduplicated_in_first_seen_order_with_spaces_normalised():
    rows = ["E-4012 ¥88.00", "CARD_DECLINED (E-4012)", "¥88.00 again"]
    found = evidence(rows)
    assert found.error_codes == ("E-4012", "CARD_DECLINED")
    assert found.amounts == ("¥88.00",)


def test_a_fullwidth_space_inside_a_value_is_shown_as_one_space():
    assert evidence(["订单号 4539\u30001488 0343 6467"]).orders == ("4539 1488 0343 6467",)
    assert evidence(["2024年3月5日\u300014:22"]).dates == ("2024年3月5日 14:22",)


def test_groups_of_a_number_are_joined_by_single_spaces_only():
    # OCR joins the fragments of one row with one space; a wider gap separates two things.
    assert evidence(["订单号 4539 1488  0343 6467"]).orders == ("4539 1488",)


# --- the title ------------------------------------------------------------------------------

SCREEN = ["9:41", "中国移动 5G 100%", "支付详情", "¥1,288.00", "Payment failed", "CARD_DECLINED (E-4012)"]


@pytest.mark.parametrize(("rows", "heights", "title"), [
    pytest.param(SCREEN, [20, 18, 34, 60, 24, 20], "支付详情", id="tallest-text-not-the-amount"),
    pytest.param(SCREEN, [40, 18, 24, 60, 34, 20], "Payment failed", id="status-bar-time-skipped"),
    pytest.param(SCREEN, [20, 40, 20, 20, 20, 20], "支付详情", id="carrier-row-skipped"),
    pytest.param(SCREEN, [20, 18, 33, 20, 34, 20], "支付详情", id="first-of-nearly-equal"),
    pytest.param(SCREEN, None, "支付详情", id="no-heights-first-substantial"),
    pytest.param(["< Back", "Order details", "Order #112-4432871-9930012"], None, "Order details",
                 id="no-heights-short-row-skipped"),
    pytest.param(["Card 4539 1488 0343 6467", "Card saved"], [50, 20], "Card saved", id="hidden-row-skipped"),
    pytest.param(["9:41", "100%", "12345"], [30, 30, 30], "", id="nothing-textual"),
    pytest.param(["  Help   Centre "], [30], "Help Centre", id="spaces-normalised"),
])
def test_title(rows, heights, title):
    assert evidence(rows, heights).title == title


@pytest.mark.parametrize(("rows", "heights", "title"), [
    pytest.param(["9:41", "Track package", "Parcel Express", "In transit"], [55, 66, 58, 83], "Track package",
                 id="app-bar-over-taller-content"),
    pytest.param(["Settings"] + ["item row"] * 12 + ["BIG BANNER"], [30] + [20] * 12 + [80], "Settings",
                 id="banner-far-down"),
    pytest.param(["● ● ● pay.shop.example", "https://pay.shop.example/checkout", "This site can't be reached",
                  "The connection was reset."], [25, 20, 37, 23], "This site can't be reached",
                 id="browser-tab-and-address-bar"),
    pytest.param(["MESSAGES · now", "Your code: 739215. Don't share it.", "Two-step verification",
                  "Enter the 6-digit code"], [27, 33, 46, 36], "Two-step verification",
                 id="notification-above-heading"),
])
def test_the_title_is_one_of_the_first_two_rows_that_could_be_one(rows, heights, title):
    assert evidence(rows, heights).title == title


def test_heights_must_match_rows():
    with pytest.raises(ValueError, match="2 heights for 3 rows"):
        extract_evidence(["a", "b", "c"], [1, 2])


# --- summary and serialisation --------------------------------------------------------------


def test_summary_of_a_declined_payment():
    rows = ["支付失败", "RISK_REJECTED (E-3301)", "实付款 ¥1,288.00", "订单号：DD2024030588812",
            "卡号 4539 1488 0343 6467", "邮箱 a.b@example.com", "2024-03-05 14:22"]
    hidden = find_sensitive(rows)
    found = replace(extract_evidence(rows, None, hidden),
                    redacted=tuple({"kind": f.kind, "last4": f.last4} for f in hidden))
    assert found.summary() == ("RISK_REJECTED (E-3301), ¥1,288.00, order DD2024030588812, 2024-03-05 14:22, "
                               "card •••• 6467, email hidden")


@pytest.mark.parametrize(("found", "summary"), [
    pytest.param(Evidence(error_codes=("CARD_DECLINED", "E-4012")), "CARD_DECLINED (E-4012)", id="pair"),
    pytest.param(Evidence(error_codes=("E-4012", "CARD_DECLINED")), "E-4012, CARD_DECLINED", id="code-first-no-pair"),
    pytest.param(Evidence(error_codes=("CARD_DECLINED", "RISK_REJECTED", "E-3301")),
                 "CARD_DECLINED, RISK_REJECTED (E-3301)", id="two-names"),
    pytest.param(Evidence(tracking=("SF1234567890123",), dates=("Mar 5",)), "tracking SF1234567890123, Mar 5",
                 id="tracking-date"),
    pytest.param(Evidence(redacted=({"kind": "card", "last4": "1881"}, {"kind": "card", "last4": "1881"},
                                    {"kind": "code", "last4": ""})), "card •••• 1881, code hidden", id="redacted"),
    pytest.param(Evidence(title="Only a title"), "", id="title-not-in-summary"),
])
def test_summary_items(found, summary):
    assert found.summary() == summary


def test_summary_is_cut_at_an_item_boundary():
    found = Evidence(error_codes=tuple(f"ERR_NUMBER_{i:02d}" for i in range(30)), amounts=("¥88.00",))
    summary = found.summary()
    assert len(summary) <= SUMMARY_LIMIT
    assert summary.endswith(", …")
    items = summary[:-len(", …")].split(", ")
    assert items == [f"ERR_NUMBER_{i:02d}" for i in range(len(items))]
    assert len(summary) + len(", ERR_NUMBER_99") > SUMMARY_LIMIT


def test_a_summary_item_longer_than_the_line_is_cut():
    summary = Evidence(orders=("X" * 300,)).summary()
    assert len(summary) == SUMMARY_LIMIT and summary.startswith("order XXX") and summary.endswith("…")


def test_round_trip_through_json():
    found = Evidence(title="支付详情", error_codes=("CARD_DECLINED", "E-4012"), amounts=("¥88.00",),
                     orders=("DD1",), tracking=("SF1234567890123",), dates=("2024-03-05",),
                     redacted=({"kind": "card", "last4": "1881"},))
    data = json.loads(json.dumps(found.as_dict()))
    assert Evidence.from_dict(data) == found
    assert data["redacted"] == [{"kind": "card", "last4": "1881"}]


def test_from_dict_of_missing_or_null_fields_is_empty():
    assert Evidence.from_dict({}) == Evidence()
    assert Evidence.from_dict({"title": None, "amounts": None, "unknown": 1}) == Evidence()


@pytest.mark.parametrize(("found", "empty"), [
    pytest.param(Evidence(), True, id="nothing"),
    pytest.param(Evidence(title="Help"), False, id="title"),
    pytest.param(Evidence(dates=("Mar 5",)), False, id="date"),
    pytest.param(Evidence(redacted=({"kind": "email", "last4": ""},)), False, id="redacted"),
])
def test_is_empty(found, empty):
    assert found.is_empty() is empty
