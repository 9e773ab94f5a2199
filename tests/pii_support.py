"""Hypothesis strategies for PII written the way people and input methods write it (tests/security).

Each kind strategy draws `(text, identifiers)`: the PII as written (grouped, with separators of every kind)
and the identifiers that must never be readable again - the plain digit sequence of a number, the
address of an e-mail or IP. `disguised` then writes some of it full-width and/or splits it with format
characters. `canon` and `squeeze` are what a reader of stored text can trivially undo: NFKC, format
characters, separators.
"""

from __future__ import annotations

import datetime
import ipaddress
import string
import unicodedata

from hypothesis import strategies as st


ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
FORMAT_CHARS = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u202a", "\u180e", "\u2063"]
# Separators between digit groups, as typed or pasted (those that read as "." are DOT_LIKE).
SPACE_LIKE = [" ", "  ", "-", " - ", "/", "\u00a0", "\u3000", "\u2009", "\u202f", "\u2013", "\u2014", "\u2010",
              "\u2212", "\uff0d", "\u30fc"]
DOT_LIKE = [".", "\uff0e", "\u30fb", "\u00b7", " . "]

ZH_TEMPLATES = ["我的联系方式是{pii}，请尽快回复。", "客户留言：{pii}（2024年3月15日，订单号4521）", "请把{pii}登记一下，金额1,250.00元",
                "备注：{pii}：已核实", "{pii}"]
EN_TEMPLATES = ["Please reach me at {pii} tomorrow.", "Contact: {pii}; order 4521 shipped on 2024-03-15.",
                "My details are {pii}, thanks!", "({pii})"]


# ---- what the output may hold ------------------------------------------------------------------------------

def canon(s: str) -> str:
    """NFKC, without format characters: what a reader of the stored text can trivially recover."""
    return "".join(c for c in unicodedata.normalize("NFKC", s) if unicodedata.category(c) != "Cf")


def squeeze(s: str) -> str:
    """`canon` without any separator, so a number split by spaces, dashes, dots or slashes reads as one."""
    return "".join(c for c in canon(s) if not (unicodedata.category(c)[0] == "Z" or unicodedata.category(c) == "Pd"
                                               or c in "./()+\u00b7\u30fb\u30fc\u2212"))


# ---- rendering: groups, separators, full-width, format characters -----------------------------------------

@st.composite
def groups_of(draw, digits: str, max_groups: int) -> list[str]:
    """`digits` cut into 1..max_groups non-empty groups at random places."""
    n = draw(st.integers(1, min(max_groups, len(digits))))
    cuts = sorted(draw(st.lists(st.integers(1, len(digits) - 1), min_size=n - 1, max_size=n - 1, unique=True)))
    bounds = [0, *cuts, len(digits)]
    return [digits[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def joined(draw, groups: list[str], dotted: bool) -> str:
    """Groups joined by one separator kind; a dotted number has at least 3 groups (one dot is a decimal point)."""
    if len(groups) == 1:
        return groups[0]
    if dotted and len(groups) >= 3:
        return draw(st.sampled_from(DOT_LIKE)).join(groups)
    return draw(st.sampled_from(SPACE_LIKE)).join(groups)


@st.composite
def disguised(draw, text: str) -> str:
    """`text` with some characters full-width and/or format characters inserted anywhere."""
    rnd = draw(st.randoms(use_true_random=False))
    if draw(st.booleans()):  # full-width: every printable ASCII character has a form at U+FF01..U+FF5E
        share = draw(st.sampled_from([0.3, 1.0]))
        text = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and rnd.random() < share
                       else ("\u3000" if c == " " and rnd.random() < share else c) for c in text)
    if draw(st.booleans()):  # zero-width split
        chars = list(text)
        for _ in range(draw(st.integers(1, 6))):
            chars.insert(rnd.randint(1, len(chars) - 1) if len(chars) > 1 else 0, rnd.choice(FORMAT_CHARS))
        text = "".join(chars)
    return text


def digit_string(n: int, first: str = "0123456789"):
    return st.tuples(st.sampled_from(first), st.text("0123456789", min_size=n - 1, max_size=n - 1)).map("".join)


# ---- the kinds -----------------------------------------------------------------------------------------------

@st.composite
def cn_mobile(draw) -> tuple[str, list[str]]:
    number = "1" + draw(st.sampled_from("3456789")) + draw(digit_string(9))
    body = draw(joined(draw(groups_of(number, 5)), draw(st.booleans())))
    prefix = draw(st.sampled_from(["", "+86", "86", "0086", "(+86)", "+86 ", "+86-", "0086 ", "(+86) "]))
    return prefix + body, [number]


@st.composite
def cn_landline(draw) -> tuple[str, list[str]]:
    area = draw(st.sampled_from(["010", "020", "021", "022", "023", "024", "025", "027", "028", "029",
                                 "0755", "0571", "0512", "0731", "0351", "0991"]))
    sub = draw(digit_string(8 if len(area) == 3 else draw(st.sampled_from([7, 8])), first="2345678"))
    split = draw(st.booleans())
    sub_text = f"{sub[:-4]}{draw(st.sampled_from(SPACE_LIKE))}{sub[-4:]}" if split else sub
    sep = draw(st.sampled_from(SPACE_LIKE + DOT_LIKE[:1]))
    form = draw(st.sampled_from(["bare", "sep", "paren", "paren_sep", "dotted"]))
    text = {"bare": area + sub, "sep": f"{area}{sep}{sub_text}", "paren": f"({area}){sub_text}",
            "paren_sep": f"({area}) {sub_text}", "dotted": f"{area}.{sub[:-4]}.{sub[-4:]}"}[form]
    return text, [area + sub]


@st.composite
def nanp(draw) -> tuple[str, list[str]]:
    area, exchange = draw(digit_string(3, "23456789")), draw(digit_string(3, "23456789"))
    line = draw(digit_string(4))
    sep = draw(st.sampled_from(SPACE_LIKE + DOT_LIKE))
    body = draw(st.sampled_from([f"{area}{exchange}{line}", f"{area}{sep}{exchange}{sep}{line}",
                                 f"({area}) {exchange}-{line}", f"({area}){exchange}{sep}{line}"]))
    prefix = draw(st.sampled_from(["", "+1", "+1 ", "1-", "1 ", "+1-", "1."]))
    if prefix == "1." and "." not in body:  # "1.4155552671" reads as a decimal number
        prefix = "1 "
    return prefix + body, [area + exchange + line]


@st.composite
def international(draw) -> tuple[str, list[str]]:
    cc = draw(st.sampled_from(["44", "49", "33", "81", "61", "7", "91", "852", "886", "65", "971", "39", "34", "55"]))
    national = draw(digit_string(draw(st.integers(max(6, 8 - len(cc)), 15 - len(cc))), first="123456789"))
    body = draw(joined(draw(groups_of(national, 5)), draw(st.booleans())))
    sep = draw(st.sampled_from(["", " ", "-", "\u00a0", "\u3000", "."]))
    if sep == "." and len(body) == len(national):  # "+44.2079460958" is still a phone, kept simple here
        sep = " "
    return f"+{cc}{sep}{body}", [cc + national]


@st.composite
def cn_id(draw) -> tuple[str, list[str]]:
    region = draw(digit_string(6, "123456789"))
    birth = draw(st.dates(datetime.date(1900, 1, 1), datetime.date(2024, 12, 31))).strftime("%Y%m%d")
    first17 = region + birth + draw(digit_string(3))
    check = ID_CHECK[sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS)) % 11]
    number = first17 + (check.lower() if check == "X" and draw(st.booleans()) else check)
    grouping = draw(st.sampled_from(["plain", "6-8-4", "any"]))
    if grouping == "plain":
        return number, [first17]
    groups = [number[:6], number[6:14], number[14:]] if grouping == "6-8-4" else draw(groups_of(number, 6))
    return draw(joined(groups, draw(st.booleans()))), [first17]


def luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        digits = prefix + d
        total = 0
        for i, ch in enumerate(reversed(digits)):
            v = int(ch) * (2 if i % 2 else 1)
            total += v - 9 if v > 9 else v
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


@st.composite
def bank_card(draw) -> tuple[str, list[str]]:
    length = draw(st.integers(13, 19))
    start = draw(st.sampled_from(["4", "51", "55", "62", "3", "6011"]))
    number = luhn_complete(start + draw(st.text("0123456789", min_size=length - 1 - len(start),
                                                max_size=length - 1 - len(start))))
    grouping = draw(st.sampled_from(["plain", "4s"] + (["4-6-5"] if length in (14, 15) else [])))
    if grouping == "plain":
        return number, [number]
    groups = [number[i:i + 4] for i in range(0, length, 4)] if grouping == "4s" else \
        [number[:4], number[4:10], number[10:]]
    sep = draw(st.sampled_from(SPACE_LIKE + DOT_LIKE))
    return sep.join(groups), [number]


@st.composite
def email(draw) -> tuple[str, list[str]]:
    local = draw(st.text(string.ascii_lowercase + string.digits + "._%+-", min_size=1, max_size=16))
    label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?\Z")
    domain = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
    tld = draw(st.text(string.ascii_lowercase, min_size=2, max_size=6))
    value = f"{local}@{domain}.{tld}"
    return value, [value]


@st.composite
def ipv4(draw) -> tuple[str, list[str]]:
    octets = draw(st.lists(st.integers(0, 255), min_size=4, max_size=4))
    padded = [f"{o:03d}" if draw(st.booleans()) else str(o) for o in octets]
    dot = draw(st.sampled_from([".", ".", "\uff0e", "\u3002"]))  # 。 between digits, as Chinese IMEs type it
    plain = ".".join(str(o) for o in octets)
    return dot.join(padded), [plain, ".".join(padded)]


def _ipv6_is_address_like(ip: ipaddress.IPv6Address) -> bool:
    """The masker leaves digit-free addresses of fewer than 3 groups ("a::b" is code more often than an address)."""
    s = str(ip)
    return any(c.isdigit() for c in s) or sum(1 for g in s.split(":") if g) >= 3


@st.composite
def ipv6(draw) -> tuple[str, list[str]]:
    ip = draw(st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address).filter(_ipv6_is_address_like))
    text = draw(st.sampled_from([ip.compressed, ip.exploded, ip.compressed.upper()]))
    return text, [ip.compressed, ip.exploded]


KINDS = {"cn_mobile": cn_mobile(), "cn_landline": cn_landline(), "nanp": nanp(), "international": international(),
         "cn_id": cn_id(), "bank_card": bank_card(), "email": email(), "ipv4": ipv4(), "ipv6": ipv6()}
