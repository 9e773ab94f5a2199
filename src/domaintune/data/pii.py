"""PII masking for prediction-request text before it is stored or logged.

Why: the serving audit store and the logs must never hold raw personal data, so
every request text goes through `mask_pii` first. Each kind is found by a
precompiled regex and, where the format allows, confirmed by a checksum or a
parser (ID numbers: valid birth date and ISO 7064 MOD 11-2; bank cards: Luhn;
IPs: the stdlib `ipaddress`). This keeps false positives low (order numbers,
amounts, dates, versions stay readable), so the masked audit log stays useful.

Kinds, in order of precedence when candidates overlap (an e-mail whose local
part is a phone number is one EMAIL; a checksum-valid ID that also passes Luhn
is a CN_ID):

* EMAIL: `local@sub.domain.tld`, plus-addressing included;
* CN_ID: 18-char Chinese resident ID with a real birth date and a valid check char;
* BANK_CARD: 13-19 digits, bare or in groups of 4 (or 4-6-5 / 4-6-4), Luhn-valid,
  not starting with 0;
* PHONE: Chinese mobiles (with +86/86/0086 and 3-4-4 grouping), Chinese landlines
  with an area code, `+`-prefixed international numbers (7-15 digits) and
  North-American numbers such as (415) 555-2671;
* IP: IPv4 and IPv6 (an IPv6 candidate needs a decimal digit, so `std::vector`,
  `a::b` or a bare `::` are left alone).

A match never starts or ends inside a longer digit run or decimal number, but
Chinese characters and punctuation may touch it ("手机13812345678，"). Matches
carry offsets only, never the raw value.

Not covered, deliberately: names, postal addresses and other free-text PII need
an NER model, which has no place at this fast, dependency-free layer; passport
and other national ID formats are also out of scope.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

__all__ = ["KINDS", "PiiConfig", "PiiMatch", "find_pii", "mask_pii"]

KINDS: tuple[str, ...] = ("EMAIL", "CN_ID", "BANK_CARD", "PHONE", "IP")  # order of precedence


@dataclass(frozen=True)
class PiiConfig:
    """Which kinds to mask, and the text put in place of each (``{kind}`` is the upper-case kind)."""

    email: bool = True
    phone: bool = True
    cn_id: bool = True
    bank_card: bool = True
    ip: bool = True
    replacement: str = "[{kind}]"

    def __post_init__(self) -> None:
        try:
            self.replacement.format(kind="EMAIL")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"replacement {self.replacement!r} must be a format string using only "
                             f"{{kind}}: {e}") from None

    def enabled(self, kind: str) -> bool:
        return bool(getattr(self, kind.lower()))


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One PII span: `text[start:end]` is of `kind` (no raw value is kept)."""

    kind: str
    start: int
    end: int


_DEFAULT = PiiConfig()
_ANY_DIGIT = re.compile(r"[0-9]")
# Not inside a longer digit run or a decimal number ("3.14159265358" holds no phone).
_START = r"(?<![0-9])(?<![0-9]\.)"
_END = r"(?![0-9])(?!\.[0-9])"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])")
_CN_ID = re.compile(
    _START + r"[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]"
    + _END)
_CARD_PLAIN = re.compile(r"(?<!\+)" + _START + r"[0-9]{13,19}" + _END)
_CARD_GROUPS_OF_4 = re.compile(  # 4-4-4-1..3, 4-4-4-4, 4-4-4-4-1..3 (the Luhn check counts 13-19 digits)
    r"(?<!\+)" + _START + r"[0-9]{4}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?:(?P=sep)[0-9]{4})?"
    r"(?:(?P=sep)[0-9]{1,3})?" + _END)
_CARD_4_6_5 = re.compile(r"(?<!\+)" + _START + r"[0-9]{4}(?P<sep>[ -])[0-9]{6}(?P=sep)[0-9]{4,5}" + _END)
_PHONE_CN_MOBILE = re.compile(
    _START + r"(?:(?:\+|00)?86[ -]?)?1[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}" + _END)
_PHONE_CN_LANDLINE = re.compile(
    _START + r"(?:\(0[1-9][0-9]{1,2}\)[ -]?|0[1-9][0-9]{1,2}[ -])[1-9][0-9]{6,7}" + _END)
_PHONE_NANP = re.compile(
    _START + r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}" + _END)
_PHONE_INTERNATIONAL = re.compile(  # +CC then digit groups split by one space/hyphen, maybe one (area) group
    _START + r"\+[1-9][0-9]{0,14}(?:[ -]?\([0-9]{1,5}\)[ -]?[0-9]{1,14})?(?:[ -][0-9]{1,14}){0,6}" + _END)
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}" + _END)
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_.])(?:(?:[0-9A-Fa-f]{0,4}:){2,6}[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
    r"|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![0-9A-Za-z_:])(?!\.[0-9])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"  # indexed by (weighted sum mod 11)


def _cn_id_valid(candidate: str) -> bool:
    try:
        date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    total = sum(int(ch) * w for ch, w in zip(candidate[:17], _ID_WEIGHTS))
    return _ID_CHECK_CHARS[total % 11] == candidate[17].upper()


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_valid(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] != "0" and _luhn_valid(digits)


def _international_phone_valid(candidate: str) -> bool:
    return 7 <= sum(ch.isdigit() for ch in candidate) <= 15


def _ipv4_valid(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)  # rejects octets > 255 and leading zeros
    except ValueError:
        return False
    return True


def _ipv6_valid(candidate: str) -> bool:
    if _ANY_DIGIT.search(candidate) is None:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


_Validator = Callable[[str], bool] | None
# (kind, pattern, validator), grouped by kind in order of precedence.
_DETECTORS: tuple[tuple[str, re.Pattern[str], _Validator], ...] = (
    ("EMAIL", _EMAIL, None),
    ("CN_ID", _CN_ID, _cn_id_valid),
    ("BANK_CARD", _CARD_PLAIN, _card_valid),
    ("BANK_CARD", _CARD_GROUPS_OF_4, _card_valid),
    ("BANK_CARD", _CARD_4_6_5, _card_valid),
    ("PHONE", _PHONE_CN_MOBILE, None),
    ("PHONE", _PHONE_CN_LANDLINE, None),
    ("PHONE", _PHONE_NANP, None),
    ("PHONE", _PHONE_INTERNATIONAL, _international_phone_valid),
    ("IP", _IPV4, _ipv4_valid),
    ("IP", _IPV6, _ipv6_valid),
)
_PRECEDENCE = {kind: rank for rank, kind in enumerate(KINDS)}


def find_pii(text: str, config: PiiConfig | None = None) -> list[PiiMatch]:
    """PII spans in `text`: non-overlapping, sorted by start; overlaps go to the kind earlier in `KINDS`."""
    config = config or _DEFAULT
    has_digit = _ANY_DIGIT.search(text) is not None
    has_at = "@" in text
    if not (has_digit or has_at):
        return []
    candidates: list[tuple[int, int, int, str]] = []  # (precedence, -length, start, kind)
    for kind, pattern, validator in _DETECTORS:
        if not config.enabled(kind) or not (has_at if kind == "EMAIL" else has_digit):
            continue
        for m in pattern.finditer(text):
            if validator is None or validator(m.group()):
                candidates.append((_PRECEDENCE[kind], m.start() - m.end(), m.start(), kind))
    candidates.sort()
    starts: list[int] = []  # accepted spans, sorted by start
    ends: list[int] = []
    kinds: list[str] = []
    for _, neg_length, start, kind in candidates:
        end = start - neg_length
        i = bisect.bisect_left(starts, start)
        if (i > 0 and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
            continue  # overlaps a span of higher precedence (or a longer one of the same kind)
        starts.insert(i, start)
        ends.insert(i, end)
        kinds.insert(i, kind)
    return [PiiMatch(k, s, e) for k, s, e in zip(kinds, starts, ends)]


def mask_pii(text: str, config: PiiConfig | None = None) -> str:
    """`text` with every PII span found by `find_pii` replaced by `config.replacement`."""
    config = config or _DEFAULT
    matches = find_pii(text, config)
    if not matches:
        return text
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos:m.start])
        parts.append(config.replacement.format(kind=m.kind))
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts)
