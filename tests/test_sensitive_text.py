"""Tests for engine.sensitive: personal data in OCR rows, and the numbers beside it that are not.

Rows are shaped like the OCR's visual rows: fragments of one line joined with a space, the digits
of one number often split across fragments, full-width punctuation, Chinese and English mixed.
Every decoy that is meant to fool the Luhn or mod-97 check is asserted to pass it first.
"""

from __future__ import annotations

import dataclasses

import pytest

from engine.sensitive import KINDS, Finding, find_sensitive
from engine.sensitive import _luhn as luhn

CARD = "4539148803436467"  # a Luhn-valid Visa test number
AMAZON_ORDER = "112-4432871-9930016"  # an order number of Amazon's form that passes Luhn


def found(rows: list[str], kinds=KINDS) -> list[tuple[str, int, int, int]]:
    """find_sensitive's answer as (kind, row, start, end), after checking what every caller relies
    on: each value is exactly its slice of its row, and findings are sorted and never overlap."""
    findings = find_sensitive(rows, kinds)
    for finding in findings:
        assert finding.value == rows[finding.row][finding.start:finding.end]
        assert finding.value and finding.value == finding.value.strip()
    assert findings == sorted(findings, key=lambda f: (f.row, f.start))
    for before, after in zip(findings, findings[1:]):
        assert before.row < after.row or before.end <= after.start
    return [(f.kind, f.row, f.start, f.end) for f in findings]


def at(rows: list[str], kind: str, value: str, row: int = 0) -> tuple[str, int, int, int]:
    """The finding expected for `value`, the first time it shows in rows[row]."""
    start = rows[row].index(value)
    return kind, row, start, start + len(value)


# --- one finding alone in its row, each kind --------------------------------------------------

ONE_FINDING = [
    # cards
    pytest.param("Visa 4539 1488 0343 6467", "card", "4539 1488 0343 6467", id="card-spaced-groups"),
    pytest.param("卡号：4539-1488-0343-6467", "card", "4539-1488-0343-6467", id="card-dashed-fullwidth-colon"),
    pytest.param("4539 14880343 6467", "card", "4539 14880343 6467", id="card-ocr-split-groups"),
    pytest.param(f"Card {CARD} exp 12/26", "card", CARD, id="card-compact-with-expiry"),
    pytest.param("Amex 3782 822463 10005", "card", "3782 822463 10005", id="card-amex-15"),
    pytest.param(f"银行卡{CARD}已绑定", "card", CARD, id="card-chinese-either-side"),
    pytest.param("卡号：４５３９ １４８８ ０３４３ ６４６７", "card", "４５３９ １４８８ ０３４３ ６４６７",
                 id="card-fullwidth-digits"),
    pytest.param("Order placed, paid with card 4539 1488 0343 6467", "card", "4539 1488 0343 6467",
                 id="card-order-word-elsewhere-in-row"),
    pytest.param(f"88 {CARD}", "card", CARD, id="card-number-glued-before"),
    # IBANs
    pytest.param("IBAN DE89 3704 0044 0532 0130 00", "iban", "DE89 3704 0044 0532 0130 00", id="iban-de-grouped"),
    pytest.param("GB82 WEST 1234 5698 7654 32", "iban", "GB82 WEST 1234 5698 7654 32", id="iban-gb-letters-in-bban"),
    pytest.param("账户GB82WEST12345698765432", "iban", "GB82WEST12345698765432", id="iban-compact-after-chinese"),
    pytest.param("FR14 2004 1010 0505 0001 3M02 606", "iban", "FR14 2004 1010 0505 0001 3M02 606",
                 id="iban-fr-short-last-group"),
    pytest.param("IBAN：NL91 ABNA 0417 1643 00，BIC ABNANL2A", "iban", "NL91 ABNA 0417 1643 00",
                 id="iban-fullwidth-around"),
    pytest.param("DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX", "iban", "DE89 3704 0044 0532 0130 00",
                 id="iban-words-after"),
    pytest.param("NL91 ABNA 0417 164300", "iban", "NL91 ABNA 0417 164300", id="iban-ocr-missing-space"),
    # e-mail
    pytest.param("Email: john.doe@example.com", "email", "john.doe@example.com", id="email-plain"),
    pytest.param("邮箱：john.doe+tag@mail.example.co.uk，谢谢", "email", "john.doe+tag@mail.example.co.uk",
                 id="email-plus-subdomains"),
    pytest.param("a_b-c@sub-domain.example.io", "email", "a_b-c@sub-domain.example.io", id="email-underscore-hyphens"),
    pytest.param("用户zhang.san@163.com已绑定", "email", "zhang.san@163.com", id="email-chinese-either-side"),
    pytest.param("Write to support@example.com.", "email", "support@example.com", id="email-sentence-full-stop"),
    pytest.param("zhang.san＠163.com", "email", "zhang.san＠163.com", id="email-fullwidth-at"),
    pytest.param("john.doe @example.com", "email", "john.doe @example.com", id="email-ocr-space-before-at"),
    pytest.param("<JANE.ROE@EXAMPLE.ORG>", "email", "JANE.ROE@EXAMPLE.ORG", id="email-uppercase-in-brackets"),
    pytest.param("13800138000@163.com", "email", "13800138000@163.com", id="email-phone-number-inside"),
    # phones
    pytest.param("电话：138-0013-8000", "phone", "138-0013-8000", id="phone-cn-mobile-dashed"),
    pytest.param("手机 138 0013 8000", "phone", "138 0013 8000", id="phone-cn-mobile-spaced"),
    pytest.param("手机号13800138000", "phone", "13800138000", id="phone-cn-mobile-compact"),
    pytest.param("+86 138 0013 8000", "phone", "+86 138 0013 8000", id="phone-cn-international"),
    pytest.param("客服（010）8888 6666", "phone", "（010）8888 6666", id="phone-cn-landline-fullwidth-brackets"),
    pytest.param("Call (415) 555-0132 today", "phone", "(415) 555-0132", id="phone-us-national"),
    pytest.param("Tel: +1 415-555-0132，谢谢", "phone", "+1 415-555-0132", id="phone-us-international"),
    pytest.param("020 7946 0958", "phone", "020 7946 0958", id="phone-gb-national"),
    pytest.param("+44 20 7946 0958", "phone", "+44 20 7946 0958", id="phone-gb-international"),
    pytest.param("+49 30 901820", "phone", "+49 30 901820", id="phone-de-international"),
    pytest.param("验证码已发送至 138 0013 8000", "phone", "138 0013 8000", id="phone-a-code-was-sent-to"),
    # one-time codes and passwords
    pytest.param("验证码：482913，5分钟内有效", "code", "482913", id="code-cn-colon-fullwidth-comma"),
    pytest.param("【星河】验证码482913,5分钟内有效", "code", "482913", id="code-cn-ascii-comma-then-digit"),
    pytest.param("【Snap】您的验证码为 6048，请勿泄露", "code", "6048", id="code-cn-wei"),
    pytest.param("Your verification code is 4829.", "code", "4829", id="code-en-is"),
    pytest.param("One-time code: 482 913", "code", "482 913", id="code-ocr-split"),
    pytest.param("OTP 839201", "code", "839201", id="code-otp"),
    pytest.param("PIN: 1234", "code", "1234", id="code-pin"),
    pytest.param("Passcode：98765432", "code", "98765432", id="code-passcode-eight-digits"),
    pytest.param("动态码 654321", "code", "654321", id="code-dynamic"),
    pytest.param("校验码1234", "code", "1234", id="code-no-space"),
    pytest.param("Your code is 4829, order 12345678", "code", "4829", id="code-then-order"),
    pytest.param("Password: hunter2!", "code", "hunter2!", id="password-colon"),
    pytest.param("登录密码：Abc@12345，请妥善保管", "code", "Abc@12345", id="password-cn-fullwidth"),
    pytest.param("Your password is s3cret99", "code", "s3cret99", id="password-is-with-digit"),
    pytest.param("支付密码 123456", "code", "123456", id="password-cn-no-separator"),
]


@pytest.mark.parametrize(("row", "kind", "value"), ONE_FINDING)
def test_one_finding_alone_in_its_row(row, kind, value):
    assert found([row]) == [at([row], kind, value)]


@pytest.mark.parametrize(("rows", "code"), [
    pytest.param(["Your verification code", "482913"], "482913", id="code-below"),
    pytest.param(["验证码：", "  6048"], "6048", id="cn-code-below-indented"),
    pytest.param(["登录密码", "Abc12345"], "Abc12345", id="password-below"),
])
def test_a_code_alone_on_the_row_below_its_label(rows, code):
    assert found(rows) == [at(rows, "code", code, row=1)]


def test_two_cards_in_one_row_are_two_findings():
    rows = ["4539 1488 0343 6467 5500 0000 0000 0004"]
    assert found(rows) == [at(rows, "card", "4539 1488 0343 6467"), at(rows, "card", "5500 0000 0000 0004")]


# --- nothing to hide ------------------------------------------------------------------------

NOTHING = [
    # not full cards
    pytest.param(["4539 1488 0343 6468"], id="card-luhn-fails"),
    pytest.param([f"ORD-{CARD}-02"], id="card-hyphen-joined-id"),
    pytest.param([f"ID ORD-{CARD}"], id="card-hyphen-prefixed-id"),
    pytest.param([f"A{CARD}"], id="card-letter-before"),
    pytest.param([f"{CARD}B"], id="card-letter-after"),
    pytest.param([f"0x{CARD}"], id="card-hex"),
    pytest.param([f"{CARD}-X"], id="card-dash-suffix"),
    pytest.param([f"Total {CARD}.50"], id="card-decimal"),
    pytest.param([AMAZON_ORDER], id="card-amazon-order-form"),
    pytest.param(["•••• 1881"], id="card-masked-dots"),
    pytest.param(["**** **** **** 1881"], id="card-masked-stars"),
    pytest.param(["4539 **** **** 6467"], id="card-masked-middle"),
    pytest.param(["尾号 1881 的银行卡"], id="card-tail-number"),
    pytest.param(["0000 0000 0000 0000"], id="card-leading-zero"),
    pytest.param(["4539 1488 0343"], id="card-too-short"),
    pytest.param(["订单编号", CARD], id="card-order-label-on-the-row-above"),
    pytest.param(["Tracking number", "4539 1488 0343 6467 顺丰速运"], id="card-tracking-label-on-the-row-above"),
    # IBANs failing mod-97 or their shape
    pytest.param(["DE89 3704 0044 0532 0130 01"], id="iban-last-digit"),
    pytest.param(["GB83 WEST 1234 5698 7654 32"], id="iban-check-digits"),
    pytest.param(["DE89 3704 0044 0532 0103 00"], id="iban-swapped-digits"),
    pytest.param(["DE89 3704 00"], id="iban-too-short"),
    pytest.param(["de89 3704 0044 0532 0130 00"], id="iban-lowercase-country"),
    # not e-mail addresses
    pytest.param(["john@localhost"], id="email-no-tld"),
    pytest.param(["thanks @mention"], id="email-mention"),
    pytest.param(["user@ then"], id="email-no-domain"),
    pytest.param(["a@b.c"], id="email-one-letter-tld"),
    pytest.param(["v2.3.1 release"], id="email-version"),
    # not phones
    pytest.param(["482913"], id="phone-bare-six-digits"),
    pytest.param(["下单时间 2024-03-05 14:22"], id="phone-date-time"),
    pytest.param(["Last checked:2024-03-0514:22"], id="phone-ocr-glued-date-time"),
    pytest.param(["Paid ¥1,288.00"], id="phone-amount"),
    pytest.param(["订单号：13800138000"], id="phone-order-number"),
    pytest.param(["Tracking No. 13800138000"], id="phone-tracking-number"),
    pytest.param(["Error E-4012 0x80070005"], id="phone-error-codes"),
    pytest.param(["You have 1234 points"], id="phone-count"),
    pytest.param(["Version 2024.03.05"], id="phone-dotted-date"),
    # not secrets next to a label
    pytest.param(["code: E-4012"], id="code-error-code-value"),
    pytest.param(["Error code 0x80070005"], id="code-hex-error"),
    pytest.param(["Error code 4012"], id="code-numeric-error"),
    pytest.param(["错误码：1001"], id="code-cn-error"),
    pytest.param(["ZIP code 94107"], id="code-zip"),
    pytest.param(["Promo code 2024"], id="code-promo"),
    pytest.param(["code 1234.56"], id="code-decimal"),
    pytest.param(["code 1234,567"], id="code-thousands"),
    pytest.param(["code 123"], id="code-three-digits"),
    pytest.param(["Barcode 12345678"], id="code-inside-word"),
    pytest.param(["Enter the code", "Resend in 60s"], id="code-sentence-below"),
    pytest.param(["Password: ••••••"], id="password-masked-dots"),
    pytest.param(["Password: ******"], id="password-masked-stars"),
    pytest.param(["Password is incorrect"], id="password-is-word"),
    pytest.param(["密码错误，请重试"], id="password-cn-wrong"),
    pytest.param(["Forgot password?"], id="password-forgot"),
    pytest.param(["Password", "Sign in"], id="password-word-below"),
    # nothing at all
    pytest.param([], id="no-rows"),
    pytest.param(["", "   ", "Payment failed", "今天 9:41"], id="plain-text"),
]


@pytest.mark.parametrize("rows", NOTHING)
def test_nothing_to_hide(rows):
    assert found(rows) == []


ID_LABELS = ["Order", "Order No.", "Order No.:", "Order #", "Order ID", "Tracking", "Tracking No.",
             "Tracking number:", "Waybill", "Invoice", "Invoice No.", "Ref:", "Reference", "Transaction ID：",
             "订单号：", "订单编号", "运单号", "快递单号：", "物流单号", "交易号：", "流水号", "发票号："]


@pytest.mark.parametrize("label", ID_LABELS)
@pytest.mark.parametrize("number", [CARD, "4539 1488 0343 6467"], ids=["compact", "spaced"])
def test_luhn_valid_ids_with_their_label_are_not_cards(label, number):
    assert found([f"{label} {number}"]) == []
    assert found([f"{label}{number}"]) == []


def test_the_luhn_decoys_pass_luhn():
    assert luhn(CARD) and luhn(AMAZON_ORDER.replace("-", ""))


def test_an_iban_keeps_its_digits_from_being_a_card_even_when_only_cards_are_asked_for():
    row = "IBAN GB93 WEST 4539 1410 0000 04"
    assert luhn("45391410000004")
    assert found([row], ("card",)) == []
    assert found([row]) == [at([row], "iban", "GB93 WEST 4539 1410 0000 04")]


# --- together -------------------------------------------------------------------------------


def test_mixed_rows_are_sorted_by_row_then_position():
    rows = [
        "支付失败 CARD_DECLINED (E-4012)",
        "Card 4539 1488 0343 6467, email a.b@example.com, tel 138 0013 8000",
        "订单号：DD2024030588812  金额 ¥1,288.00",
        "验证码：482913",
    ]
    assert found(rows) == [
        at(rows, "card", "4539 1488 0343 6467", row=1),
        at(rows, "email", "a.b@example.com", row=1),
        at(rows, "phone", "138 0013 8000", row=1),
        at(rows, "code", "482913", row=3),
    ]


def test_kinds_filter_what_is_returned():
    rows = ["Card 4539 1488 0343 6467, email a.b@example.com, tel 138 0013 8000"]
    assert found(rows, ("email", "phone")) == [at(rows, "email", "a.b@example.com"),
                                               at(rows, "phone", "138 0013 8000")]
    assert found(rows, iter(["card"])) == [at(rows, "card", "4539 1488 0343 6467")]
    assert found(rows, ()) == []


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="passport"):
        find_sensitive(["x"], ("card", "passport"))


@pytest.mark.parametrize(("row", "kind", "last4"), [
    pytest.param("4539 1488 0343 6467", "card", "6467", id="card"),
    pytest.param("４５３９ １４８８ ０３４３ ６４６７", "card", "6467", id="card-fullwidth"),
    pytest.param("GB82 WEST 1234 5698 7654 32", "iban", "5432", id="iban"),
    pytest.param("+1 (415) 555-0132", "phone", "0132", id="phone"),
    pytest.param("a.b@example.com", "email", "", id="email"),
    pytest.param("验证码 482913", "code", "", id="code"),
])
def test_last4(row, kind, last4):
    (finding,) = find_sensitive([row])
    assert (finding.kind, finding.last4) == (kind, last4)


def test_findings_are_frozen():
    finding = Finding("card", 0, 0, 4, "4539")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.value = "x"  # type: ignore[misc]
    assert set(KINDS) == {"card", "iban", "email", "phone", "code"}
