"""PII masking (domaintune.data.pii): e-mails, phones, Chinese IDs, bank cards and IPs in English and Chinese text."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re

import pytest

from domaintune.data.pii import KINDS, PiiConfig, PiiMatch, find_pii, mask_pii

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"


def id_check_char(first17: str) -> str:
    return ID_CHECK[sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS)) % 11]


def make_cn_id(region: str = "110101", birth: str = "19900307", seq: str = "451") -> str:
    first17 = region + birth + seq
    return first17 + id_check_char(first17)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def luhn_complete(prefix: str) -> str:
    """`prefix` plus the Luhn check digit."""
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


def wrong_id_checksum_not_luhn(cn_id: str) -> str:
    """The same 17 digits with a wrong check digit that does not pass Luhn either."""
    for d in "0123456789":
        bad = cn_id[:17] + d
        if d != cn_id[17] and not luhn_ok(bad):
            return bad
    raise AssertionError("unreachable")


def spans(text: str, config: PiiConfig | None = None) -> list[tuple[str, str]]:
    return [(m.kind, text[m.start:m.end]) for m in find_pii(text, config)]


def test_kinds_are_listed_in_order_of_precedence():
    assert KINDS == ("EMAIL", "CN_ID", "BANK_CARD", "PHONE", "IP")
    assert [f.name for f in dataclasses.fields(PiiMatch)] == ["kind", "start", "end"]  # no raw value kept


def test_checksum_helpers_agree_with_published_examples():
    assert make_cn_id("110105", "19491231", "002") == "11010519491231002X"  # GB 11643-1999 examples
    assert make_cn_id("440524", "18800101", "001") == "440524188001010014"
    assert luhn_complete("411111111111111") == "4111111111111111"
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize("text, email", [
    ("Please reply to john.doe@example.com by Friday.", "john.doe@example.com"),
    ("Contact: mary+support@mail.eng.example.co.uk, thanks", "mary+support@mail.eng.example.co.uk"),
    ("我的邮箱是zhang.san@example.cn，请查收", "zhang.san@example.cn"),
    ("发到li_si-2024@corp.mail.example.com。谢谢", "li_si-2024@corp.mail.example.com"),
    ("13812345678@163.com是我的邮箱", "13812345678@163.com"),  # digits in the local part: one EMAIL
])
def test_emails(text, email):
    assert spans(text) == [("EMAIL", email)]
    assert mask_pii(text) == text.replace(email, "[EMAIL]")


@pytest.mark.parametrize("text, phone", [
    ("我的手机号是13812345678，请回电", "13812345678"),
    ("电话：+86 138 1234 5678。", "+86 138 1234 5678"),
    ("Call me on 86-139-8765-4321 tomorrow", "86-139-8765-4321"),
    ("国际拨打0086 15912345678即可", "0086 15912345678"),
    ("手机+8618612345678", "+8618612345678"),
    ("办公室电话010-12345678，分机转接", "010-12345678"),
    ("深圳办公室0755-1234567。", "0755-1234567"),
    ("座机(021)62345678有人接", "(021)62345678"),
    ("London office: +44 20 7946 0958.", "+44 20 7946 0958"),
    ("Support line +1 (415) 555-2671, 9am-5pm", "+1 (415) 555-2671"),
    ("Berlin: +49 30 901820", "+49 30 901820"),
    ("Call (415) 555-2671 today", "(415) 555-2671"),
    ("or 415-555-2671.", "415-555-2671"),
    ("Fax 212.555.0199 please", "212.555.0199"),
])
def test_phones(text, phone):
    assert spans(text) == [("PHONE", phone)]
    assert mask_pii(text) == text.replace(phone, "[PHONE]")


VALID_IDS = [make_cn_id("110101", "19900307", "451"), make_cn_id("440305", "20011129", "123"),
             make_cn_id("310104", "19851231", "002"), make_cn_id("510107", "20000229", "888")]
# one whose check character is X, lower-case x accepted too
ID_WITH_X = next(i for s in range(1000) if (i := make_cn_id("320102", "19780615", f"{s:03d}")).endswith("X"))


@pytest.mark.parametrize("cn_id", [*VALID_IDS, ID_WITH_X, ID_WITH_X.lower()])
def test_valid_chinese_ids(cn_id):
    for text in (f"身份证号{cn_id}，请核对", f"ID number: {cn_id}."):
        assert spans(text) == [("CN_ID", cn_id)]
        assert mask_pii(text) == text.replace(cn_id, "[CN_ID]")


@pytest.mark.parametrize("cn_id", VALID_IDS + [ID_WITH_X])
def test_wrong_id_checksum_is_not_masked(cn_id):
    bad = wrong_id_checksum_not_luhn(cn_id)
    text = f"身份证号{bad}，请核对"
    assert find_pii(text) == []
    assert mask_pii(text) == text


def test_id_with_invalid_birth_date_is_not_an_id():
    for birth in ("19900230", "20010229", "19851301"):  # Feb 30, Feb 29 of a non-leap year, month 13
        cn_id = next(i for s in range(1000)
                     if (i := make_cn_id("110101", birth, f"{s:03d}"))[-1] != "X" and not luhn_ok(i))
        assert find_pii(f"证件号{cn_id}。") == []


def test_wrong_id_checksum_but_luhn_valid_is_a_bank_card():
    first17 = "11010119900307451"
    digits = luhn_complete(first17)
    assert digits[-1] != id_check_char(first17)
    assert spans(f"号码{digits}，") == [("BANK_CARD", digits)]


def test_valid_id_that_also_passes_luhn_is_an_id():
    cn_id = next(i for s in range(1000)
                 if (i := make_cn_id("110101", "19900307", f"{s:03d}"))[-1] != "X" and luhn_ok(i))
    assert spans(f"身份证{cn_id}") == [("CN_ID", cn_id)]


CARDS = [luhn_complete("411111111111111"), luhn_complete("622202123456789012"),  # 16, 19 digits
         luhn_complete("55000000000000"), luhn_complete("378282246310005"[:14]),  # 15 (Amex)
         luhn_complete("621483000000")]  # 13


def group(digits: str, sep: str, sizes: tuple[int, ...]) -> str:
    out, pos = [], 0
    for n in sizes:
        out.append(digits[pos:pos + n])
        pos += n
    return sep.join(out)


@pytest.mark.parametrize("card", [
    CARDS[0], CARDS[1], CARDS[2], CARDS[3], CARDS[4],
    group(CARDS[0], "-", (4, 4, 4, 4)), group(CARDS[0], " ", (4, 4, 4, 4)),
    group(CARDS[1], " ", (4, 4, 4, 4, 3)), group(CARDS[3], " ", (4, 6, 5)), group(CARDS[4], "-", (4, 4, 4, 1)),
])
def test_bank_cards(card):
    for text in (f"我的卡号是{card}，谢谢", f"Card: {card}, exp 04/27"):
        assert spans(text) == [("BANK_CARD", card)]
        assert mask_pii(text) == text.replace(card, "[BANK_CARD]")


@pytest.mark.parametrize("card", CARDS)
def test_failing_luhn_is_not_masked(card):
    bad = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert not luhn_ok(bad)
    assert find_pii(f"卡号{bad}。") == []
    # Grouped, it is no card either; digit groups inside it may still be read as a phone number, since
    # numbers may be grouped in any way ("6222 [0212 3456 7890] 129" has a landline's shape) - masking wins.
    assert "BANK_CARD" not in {m.kind for m in find_pii(f"Card {group(bad, ' ', (4, 4, 4, 4, 3))} declined")}


def test_pii_inside_a_longer_digit_run_is_not_masked():
    for text in ("流水号213812345678已入账", "serial 138123456789", "ratio 0.13812345678"):
        assert find_pii(text) == [], text
    longer = next(d + VALID_IDS[0] for d in "123456789" if not luhn_ok(d + VALID_IDS[0]))
    assert find_pii(f"编号{longer}") == []
    assert find_pii(f"编号{VALID_IDS[0]}") != []  # the same ID alone is found


@pytest.mark.parametrize("text, ip", [
    ("Request from 192.168.1.10 at noon", "192.168.1.10"),
    ("服务器IP是10.0.0.1，端口8080", "10.0.0.1"),
    ("Ping 255.255.255.255.", "255.255.255.255"),
    ("地址2001:db8::1。", "2001:db8::1"),
    ("link-local fe80::1ff:fe23:4567:890a on eth0", "fe80::1ff:fe23:4567:890a"),
    ("IPv6:2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("mapped ::ffff:192.0.2.1 here", "::ffff:192.0.2.1"),
    ("http://[2001:db8::42]:8080/", "2001:db8::42"),
])
def test_ip_addresses(text, ip):
    assert spans(text) == [("IP", ip)]
    assert mask_pii(text) == text.replace(ip, "[IP]")


NON_PII = [
    "Order 4521 shipped yesterday.",
    "订单号4521已发货",
    "Total: 1,250.00 USD, paid in 2024.",
    "金额1,250.00元，2024年3月15日到账",
    "Meeting on 2024-03-15 at 14:30:00, room 305.",
    "Released version 1.2.3.4.5 and Python 3.11.4.",
    "Octets too big: 10.0.0.256 and 999.1.1.1",
    "pi is 3.14159265358 and the ratio 0.13812345678",
    "C++17 uses std::vector and a::b, not ::, in 2024",
    "call Base2::run(), vec3::x and Vec3::<f32>::new()",
    "Test card placeholder 0000 0000 0000 0000 or 0000000000000000",
    "MAC 00:1a:2b:3c:4d:5e, timestamp 2024-03-15T12:30:45Z",
    "Invoice INV-2024-0042, qty 12, price 99.99",
    "没有个人信息，只是普通的工单描述。",
    "Phone numbers need more digits: +1 555",
]


@pytest.mark.parametrize("text", NON_PII)
def test_non_pii_is_left_alone(text):
    assert find_pii(text) == []
    assert mask_pii(text) == text


ALL_KINDS_TEXT = (f"Mail bob.smith@example.org, 手机13812345678，身份证{VALID_IDS[0]}，"
                  f"卡号{group(CARDS[0], ' ', (4, 4, 4, 4))}, server 172.16.0.5.")


@pytest.mark.parametrize("off", ["email", "phone", "cn_id", "bank_card", "ip"])
def test_config_switches_leave_that_kind(off):
    full = {k for k, _ in spans(ALL_KINDS_TEXT)}
    assert full == set(KINDS)
    config = PiiConfig(**{off: False})
    kinds = [k for k, _ in spans(ALL_KINDS_TEXT, config)]
    assert off.upper() not in kinds and set(kinds) == set(KINDS) - {off.upper()}


def test_ip_switch_keeps_the_address_text():
    text = "Request from 192.168.1.10 by a@b.com"
    assert mask_pii(text, PiiConfig(ip=False)) == "Request from 192.168.1.10 by [EMAIL]"
    assert mask_pii(text, PiiConfig(ip=False, email=False)) == text


def test_replacement_format():
    text = "call 13812345678 or mail a@b.com"
    assert mask_pii(text, PiiConfig(replacement="<{kind}>")) == "call <PHONE> or mail <EMAIL>"
    assert mask_pii(text, PiiConfig(replacement="***")) == "call *** or mail ***"
    assert mask_pii(text, PiiConfig(replacement="{kind}-x")) == "call PHONE-x or mail EMAIL-x"
    with pytest.raises(ValueError, match="replacement"):
        PiiConfig(replacement="[{name}]")


def test_masked_output_holds_no_raw_pii():
    raw = ["bob.smith@example.org", "13812345678", VALID_IDS[0], group(CARDS[0], " ", (4, 4, 4, 4)), "172.16.0.5"]
    assert all(r in ALL_KINDS_TEXT for r in raw)
    masked = mask_pii(ALL_KINDS_TEXT)
    for r in raw:
        assert r not in masked
    assert not re.search(r"[0-9]{5,}", masked) and "@" not in masked
    assert masked == ("Mail [EMAIL], 手机[PHONE]，身份证[CN_ID]，卡号[BANK_CARD], server [IP].")


def test_find_pii_offsets_slice_the_original_and_are_sorted():
    matches = find_pii(ALL_KINDS_TEXT)
    assert [ALL_KINDS_TEXT[m.start:m.end] for m in matches] == [
        "bob.smith@example.org", "13812345678", VALID_IDS[0], group(CARDS[0], " ", (4, 4, 4, 4)), "172.16.0.5"]
    assert [m.kind for m in matches] == ["EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IP"]
    assert all(a.end <= b.start for a, b in zip(matches, matches[1:]))
    assert find_pii("") == [] and mask_pii("") == ""


def test_no_regex_compiled_per_call(monkeypatch):
    mask_pii(ALL_KINDS_TEXT)  # warm up

    def refuse(*args, **kwargs):
        raise AssertionError("regex compiled during mask_pii")

    monkeypatch.setattr(re, "compile", refuse)
    monkeypatch.setattr(re, "_compile", refuse)
    assert mask_pii(ALL_KINDS_TEXT).count("[") == 5


# ---- 1,000 generated sentences: only the PII spans change ----

PREFIXES = ["Please contact ", "客户说", "Note: ", "联系方式：", "Order 4521 shipped; reach me at ",
            "金额1,250.00元，备注", "On 2024-03-15 at 14:30 the user wrote ", "v1.2.3.4.5 log, value ", "用户"]
MIDDLES = [" or ", "，或者", "; backup ", "。另外", " (paid 99.99 in 2024) then ", "，订单号4521，"]
SUFFIXES = ["", ".", "，谢谢。", " today, qty 3.", "。请尽快处理", " — see ticket 2024-03-15", "!"]


def random_pii(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(KINDS)
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    if kind == "EMAIL":
        local = rng.choice(["john", "li.na", "ops+alerts", "wang_wei"]) + digits(rng.randint(0, 3))
        return kind, f"{local}@{rng.choice(['example.com', 'mail.corp.example.cn', 'qq.com'])}"
    if kind == "CN_ID":
        birth = f"{rng.randint(1930, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        cn_id = make_cn_id(rng.choice(["110101", "440305", "310104"]), birth, digits(3))
        return kind, cn_id.lower() if rng.random() < 0.2 else cn_id
    if kind == "BANK_CARD":
        # 13, 16, 17 or 19 digits; 18 is left out since such a number could be a valid ID (which wins)
        card = luhn_complete(rng.choice("3456") + digits(rng.choice([11, 14, 15, 17])))
        if len(card) >= 16 and rng.random() < 0.5:
            card = group(card, rng.choice(" -"), (4, 4, 4, 4, len(card) - 16)[: 5 if len(card) > 16 else 4])
        return kind, card
    if kind == "PHONE":
        mobile = "1" + rng.choice("3456789") + digits(9)
        return kind, rng.choice([
            mobile, f"+86 {mobile[:3]} {mobile[3:7]} {mobile[7:]}", f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}",
            f"0{rng.randint(10, 99)}-{rng.randint(2, 9)}{digits(7)}", f"+44 20 {digits(4)} {digits(4)}",
            f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{digits(4)}"])
    if rng.random() < 0.5:
        return kind, ".".join(str(rng.randint(0, 255)) for _ in range(4))
    while not re.search(r"[0-9]", ip := str(ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice([0, 64])))):
        pass
    return kind, ip


def test_thousand_mixed_sentences_change_only_the_pii_spans():
    rng = random.Random(1234)
    changed = 0
    for _ in range(1000):
        text = expected = rng.choice(PREFIXES)
        kinds = []
        for i in range(rng.randint(0, 2)):
            kind, value = random_pii(rng)
            kinds.append(kind)
            glue = rng.choice(MIDDLES) if i == 0 else ""
            text += value + glue
            expected += f"[{kind}]" + glue
        suffix = rng.choice(SUFFIXES)
        text, expected = text + suffix, expected + suffix
        masked = mask_pii(text)
        assert masked == expected, text
        assert [m.kind for m in find_pii(text)] == kinds, text
        changed += masked != text
    assert changed > 500
