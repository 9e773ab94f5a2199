"""PII masking for prediction-request text before it is stored or logged.

Why: the serving audit store and the logs must never hold raw personal data, so
every request text goes through `mask_pii` first. Each kind is found by a
precompiled regex and, where the format allows, confirmed by a checksum or a
parser (ID numbers: valid birth date and ISO 7064 MOD 11-2; bank cards: Luhn;
IPs: octet ranges and the stdlib `ipaddress`). This keeps false positives low
(order numbers, amounts, dates, versions stay readable), so the masked audit log
stays useful.

Why the text is folded before matching: real input writes the same number in many
ways. Chinese input methods produce full-width digits (`手机１３８００１３８０００`),
pasted text carries zero-width and other invisible characters, and people group
digits with whatever separator is at hand. A regex over the raw text misses all of
these, so matching runs on a folded copy:

* each character is NFKC-normalised (full-width digits, letters, `＠`, `．`, `＋`,
  `（` become ASCII; circled and superscript digits become digits) and any other
  Unicode decimal digit (Arabic-Indic, Devanagari...) becomes its ASCII digit;
* format characters (Unicode category Cf: U+200B..U+200D, U+2060, U+FEFF, soft
  hyphen, bidi controls...), invisible fillers and combining marks are dropped;
* every space (NBSP, ideographic space...) becomes " ", every dash or minus
  (en dash, `－`, `ー`...) "-", middle dots "." and fraction/division slashes "/";
  an ideographic full stop between two digits is a ".".

An index map from the folded copy back to the original puts every match on the
original offsets: the masked span is the original text the folded match came from
(invisible characters inside it included), and everything else is returned exactly
as it was. A text that holds format characters is matched a second time with each
of them read as a separator, so `1\u200b13800138000` still shows its mobile number.
Matches that overlap are merged into one masked span (never trimmed), so no digit
of a detected number is left behind.

Kinds, in order of precedence when candidates overlap (an e-mail whose local
part is a phone number is one EMAIL; a checksum-valid ID that also passes Luhn
is a CN_ID):

* EMAIL: `local@sub.domain.tld`, plus-addressing included;
* CN_ID: 18-char Chinese resident ID with a real birth date (1800-2099) and a
  valid check char, bare or split into at most 6 groups;
* BANK_CARD: 13-19 digits, bare or in groups of 4 (or 4-6-5 / 4-6-4), Luhn-valid,
  not starting with 0;
* PHONE: Chinese mobiles (with +86/86/0086, in any grouping of at most 5 groups),
  Chinese landlines (with an area code: separated, in parentheses or bare),
  `+`- or `00`-prefixed international numbers (7-15 digits), North-American
  numbers such as (415) 555-2671, 415.555.2671 or 4155552671 (also +1/1);
* IP: IPv4 (leading zeros allowed: 192.168.001.010) and IPv6 (an IPv6 candidate
  needs a decimal digit or three groups, so `std::vector`, `a::b` or a bare `::`
  are left alone).

Separators between digit groups: one or two spaces, or one of - . / with at most
a space on either side. A match never starts or ends inside a longer digit run or
decimal number, and a group split only by a single "." is read as a decimal
number (`3.1415926535`, `0.13812345678`), not a phone or ID. Chinese characters
and punctuation may touch a match ("手机13812345678，"). Matches carry offsets
only, never the raw value.

Not covered, deliberately: names, postal addresses and other free-text PII need
an NER model, which has no place at this fast, dependency-free layer; passport
and other national ID formats, numbers spelt in words or Chinese numerals, and
digits separated by commas (which would mask every amount) are also out of scope.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
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
_DIGIT_RUNS = re.compile(r"[0-9]+")
_SEPARATOR_RUNS = re.compile(r"[^0-9Xx]+")
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IDEOGRAPHIC_STOP_IN_NUMBER = re.compile("(?<=[0-9])\u3002(?=[0-9])")
# Not inside a longer digit run or a decimal number ("3.14159265358" holds no phone).
_START = r"(?<![0-9])(?<![0-9]\.)"
_END = r"(?![0-9])(?!\.[0-9])"
# One separator between two digit groups, in the folded text (every space is " ", every dash "-"...):
# one or two spaces, or one of - . / with at most a space on either side ("138 - 0013 - 8000").
_S = r"(?: ?[-./] ?| {1,2})"
_S_OPT = _S + "?"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])")
_CN_ID = re.compile(_START + r"[1-9](?:" + _S_OPT + r"[0-9]){16}" + _S_OPT + r"[0-9Xx]" + _END)
_NO_PLUS = r"(?<!\+)"  # "+8613812345678" is a phone, never a card
_CARD_PLAIN = re.compile(_NO_PLUS + _START + r"[0-9]{13,19}" + _END)
_CARD_GROUPS_OF_4 = re.compile(  # 4-4-4-1..3, 4-4-4-4, 4-4-4-4-1..3 (the Luhn check counts 13-19 digits)
    _NO_PLUS + _START + r"[0-9]{4}" + _S + r"[0-9]{4}" + _S + r"[0-9]{4}(?:" + _S + r"[0-9]{4})?(?:" + _S
    + r"[0-9]{1,3})?" + _END)
_CARD_4_6_5 = re.compile(_NO_PLUS + _START + r"[0-9]{4}" + _S + r"[0-9]{6}" + _S + r"[0-9]{4,5}" + _END)
_PHONE_CN_MOBILE = re.compile(  # 1[3-9] + 9 digits in any grouping, maybe after +86 / 0086 / 86 / (+86)
    _START + r"(?:(?:\((?:\+|00)?86\)|(?:\+|00)?86)" + _S_OPT + r")?"
    r"(?P<nat>1" + _S_OPT + r"[3-9](?:" + _S_OPT + r"[0-9]){9})" + _END)
_PHONE_CN_LANDLINE = re.compile(  # area code (0 + 2-3 digits) then a 7-8 digit number, maybe split 3/4-4
    _START + r"(?:\(0[1-9][0-9]{1,2}\)" + _S_OPT + r"|0[1-9][0-9]{1,2}" + _S + r")[1-9][0-9]{2,3}" + _S_OPT
    + r"[0-9]{4}" + _END)
_PHONE_CN_LANDLINE_BARE = re.compile(  # 010/02x + 8 digits, 0xxx + 7-8 digits; subscriber numbers start 2-8
    _START + r"(?:0(?:10|2[0-9])[2-8][0-9]{7}|0[3-9][0-9]{2}[2-8][0-9]{6,7})" + _END)
_PHONE_NANP = re.compile(
    _START + r"(?:\+?1" + _S_OPT + r")?(?:\([2-9][0-9]{2}\)" + _S_OPT + r"[2-9][0-9]{2}" + _S_OPT + r"[0-9]{4}"
    r"|[2-9][0-9]{2}" + _S + r"[2-9][0-9]{2}" + _S + r"[0-9]{4}|[2-9][0-9]{2}[2-9][0-9]{6})" + _END)
_PHONE_INTERNATIONAL = re.compile(  # +CC then digit groups, maybe one (area) group
    _START + r"\+[1-9][0-9]{0,14}(?:" + _S_OPT + r"\([0-9]{1,5}\)" + _S_OPT + r"[0-9]{1,14})?(?:" + _S
    + r"[0-9]{1,14}){0,7}" + _END)
_PHONE_INTERNATIONAL_00 = re.compile(  # 00 + CC then separated groups ("0044 20 7946 0958"), never mid-number
    _START + r"(?<![0-9][-./ ])(?<![0-9][-./ ] )00[1-9][0-9]{0,3}(?:" + _S + r"[0-9]{1,14}){1,7}" + _END)
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}" + _END)
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_.])(?:(?:[0-9A-Fa-f]{0,4}:){2,6}[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
    r"|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![0-9A-Za-z_])(?!:[0-9A-Za-z_:])(?!\.[0-9])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"  # indexed by (weighted sum mod 11)


# ---- folding: what the detectors see ----------------------------------------------------------------------

# Default-ignorable characters that are not in category Cf (which is dropped as a whole).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
_DASHES = frozenset("\u2212\u2796\u02d7\u30fc\uff70")  # minus signs, the katakana prolonged sound mark
_DOTS = frozenset("\u00b7\u2022\u2027\u2219\u22c5\u30fb")  # middle dots and bullets
_SLASHES = frozenset("\u2044\u2215\u29f8")  # fraction, division and big solidus
# Everything but what folds to itself: ASCII without the tab, CJK ideographs, Hangul syllables.
_NEEDS_FOLDING = re.compile("[^\x00-\x08\x0a-\x7f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3]")


def _fold_nfkc_char(c: str) -> str:
    """One character of an NFKC expansion, as the detectors see it."""
    if c.isascii():
        return " " if c == "\t" else c
    cat = unicodedata.category(c)
    if cat in ("Mn", "Me", "Cf") or c in _INVISIBLE:
        return ""
    if cat == "Zs":
        return " "
    if cat == "Pd" or c in _DASHES:
        return "-"
    if c in _DOTS:
        return "."
    if c in _SLASHES:
        return "/"
    d = unicodedata.decimal(c, None)
    return c if d is None else str(d)


@functools.lru_cache(maxsize=8192)
def _fold_char(ch: str) -> str | None:
    """What one character of the original (one `_NEEDS_FOLDING` matches) becomes: maybe several characters, or
    none; None for an invisible format character (dropped, or read as a separator in the second pass)."""
    cat = unicodedata.category(ch)
    if cat == "Cf" or ch in _INVISIBLE:
        return None
    if cat == "Cs":  # a lone surrogate: nothing to normalise
        return ch
    return "".join(_fold_nfkc_char(c) for c in unicodedata.normalize("NFKC", ch))


def _fold(text: str, hidden: str) -> tuple[str, list[int], bool]:
    """(folded text, original index of each folded character, whether `text` held format characters).

    `hidden` replaces each format character: "" joins what it split, " " reads it as a separator.
    Runs of characters that fold to themselves (ASCII, CJK ideographs, Hangul) are copied in one step."""
    pieces: list[str] = []
    index: list[int] = []
    saw_hidden = False
    pos = 0
    for m in _NEEDS_FOLDING.finditer(text):
        i = m.start()
        if i > pos:
            pieces.append(text[pos:i])
            index.extend(range(pos, i))
        folded = _fold_char(m.group())
        if folded is None:
            saw_hidden = True
            folded = hidden
        pieces.append(folded)
        index.extend([i] * len(folded))
        pos = i + 1
    if pos < len(text):
        pieces.append(text[pos:])
        index.extend(range(pos, len(text)))
    out = "".join(pieces)
    if "\u3002" in out:  # 192。168。1。1: the same length, so the index map holds
        out = _IDEOGRAPHIC_STOP_IN_NUMBER.sub(".", out)
    return out, index, saw_hidden


def _variants(text: str) -> list[tuple[str, list[int] | None]]:
    """The folded texts to match, each with its index map (None: the same offsets as `text`)."""
    if text.isascii():  # the common case: nothing to normalise, offsets unchanged
        return [(text.replace("\t", " ") if "\t" in text else text, None)]
    folded, index, saw_hidden = _fold(text, "")
    out: list[tuple[str, list[int] | None]] = [(folded, index)]
    if saw_hidden:
        spaced, spaced_index, _ = _fold(text, " ")
        out.append((spaced, spaced_index))
    return out


# ---- checks: each takes the regex match and returns the PII's (start, end), or None to reject it ---------

def _digits(s: str) -> str:
    return "".join(ch for ch in s if "0" <= ch <= "9")


def _looks_decimal(s: str) -> bool:
    """One "." and no other separator: `3.1415926535` is a number, not a grouped phone or ID."""
    seps = _SEPARATOR_RUNS.findall(s)
    return len(seps) == 1 and seps[0].strip() == "."


def _cn_id_valid(candidate: str) -> bool:
    if len(candidate) != 18 or not 1800 <= int(candidate[6:10]) <= 2099:
        return False
    try:
        date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    total = sum(int(ch) * w for ch, w in zip(candidate[:17], _ID_WEIGHTS))
    return _ID_CHECK_CHARS[total % 11] == candidate[17].upper()


def _cn_id_span(m: re.Match) -> tuple[int, int] | None:
    s = m.group()
    if len(_DIGIT_RUNS.findall(s)) > 6 or _looks_decimal(s):
        return None
    return m.span() if _cn_id_valid(_digits(s) + (s[-1] if s[-1] in "Xx" else "")) else None


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_span(m: re.Match) -> tuple[int, int] | None:
    digits = _digits(m.group())
    ok = 13 <= len(digits) <= 19 and digits[0] != "0" and _luhn_valid(digits)
    return m.span() if ok else None


def _ipv4_valid(candidate: str) -> bool:
    return all(int(octet) <= 255 for octet in candidate.split("."))  # leading zeros are still an address


def _mobile_span(m: re.Match) -> tuple[int, int] | None:
    national = m.group("nat")
    if len(_DIGIT_RUNS.findall(national)) > 5 or _looks_decimal(national):
        return None
    whole = m.group()
    if _IPV4_SHAPE.fullmatch(whole) and _ipv4_valid(whole):
        return None  # 139.200.10.101 is an address (the IP kind masks it)
    return m.span()


def _nanp_span(m: re.Match) -> tuple[int, int] | None:
    return None if _looks_decimal(m.group()) else m.span()  # "1.3812345678" is a number


def _international_span(m: re.Match, prefix: int = 0, least: int = 7) -> tuple[int, int] | None:
    """Digit groups up to the 15 digits E.164 allows (the rest is another number); at least `least` digits."""
    total, end = -prefix, None
    for g in _DIGIT_RUNS.finditer(m.group()):
        if total + len(g.group()) > 15:
            break
        total += len(g.group())
        end = m.start() + g.end()
    return (m.start(), end) if end is not None and total >= least else None


def _international_00_span(m: re.Match) -> tuple[int, int] | None:
    return _international_span(m, prefix=2, least=8)


def _ipv4_span(m: re.Match) -> tuple[int, int] | None:
    return m.span() if _ipv4_valid(m.group()) else None


def _ipv6_valid(candidate: str) -> bool:
    head, colon, tail = candidate.rpartition(":")
    if "." in tail:  # an embedded IPv4 part: leading zeros are still an address
        if not _ipv4_valid(tail):
            return False
        tail = ".".join(str(int(o)) for o in tail.split("."))
    try:
        ipaddress.IPv6Address(head + colon + tail)
    except ValueError:
        return False
    # "a::b", "dead::beef": more likely code than an address
    return _ANY_DIGIT.search(candidate) is not None or sum(1 for g in candidate.split(":") if g) >= 3


def _ipv6_span(m: re.Match) -> tuple[int, int] | None:
    """The address, without a colon of the text around it ("IP：::1" and "::1：" fold to "IP:::1", "::1:")."""
    candidate, start, end = m.group(), m.start(), m.end()
    for lead, trail in ((0, 0), (1, 0), (0, 1), (1, 1)):
        if (lead and candidate[0] != ":") or (trail and candidate[-1] != ":"):
            continue
        if _ipv6_valid(candidate[lead:len(candidate) - trail]):
            return start + lead, end - trail
    return None


_Check = Callable[[re.Match], tuple[int, int] | None] | None
# (kind, pattern, check), grouped by kind in order of precedence.
_DETECTORS: tuple[tuple[str, re.Pattern[str], _Check], ...] = (
    ("EMAIL", _EMAIL, None),
    ("CN_ID", _CN_ID, _cn_id_span),
    ("BANK_CARD", _CARD_PLAIN, _card_span),
    ("BANK_CARD", _CARD_GROUPS_OF_4, _card_span),
    ("BANK_CARD", _CARD_4_6_5, _card_span),
    ("PHONE", _PHONE_CN_MOBILE, _mobile_span),
    ("PHONE", _PHONE_CN_LANDLINE, None),
    ("PHONE", _PHONE_CN_LANDLINE_BARE, None),
    ("PHONE", _PHONE_NANP, _nanp_span),
    ("PHONE", _PHONE_INTERNATIONAL, _international_span),
    ("PHONE", _PHONE_INTERNATIONAL_00, _international_00_span),
    ("IP", _IPV4, _ipv4_span),
    ("IP", _IPV6, _ipv6_span),
)
_PRECEDENCE = {kind: rank for rank, kind in enumerate(KINDS)}


def _candidates(folded: str, index: list[int] | None, config: PiiConfig,
                out: list[tuple[int, int, int, str]]) -> None:
    """Append (start, end, precedence, kind) of every match in `folded`, on the original text's offsets."""
    has_digit = _ANY_DIGIT.search(folded) is not None
    ready = {"EMAIL": "@" in folded, "IP": has_digit or ":" in folded}
    for kind, pattern, check in _DETECTORS:
        if not config.enabled(kind) or not ready.get(kind, has_digit):
            continue
        for m in pattern.finditer(folded):
            span = m.span() if check is None else check(m)
            if span is None:
                continue
            start, end = span
            if index is not None:
                start, end = index[start], index[end - 1] + 1
            out.append((start, end, _PRECEDENCE[kind], kind))


def find_pii(text: str, config: PiiConfig | None = None) -> list[PiiMatch]:
    """PII spans in `text` (offsets into `text` itself, however it was written): non-overlapping, sorted by
    start. Overlapping candidates become one span, of the kind earlier in `KINDS` (then the longest)."""
    config = config or _DEFAULT
    candidates: list[tuple[int, int, int, str]] = []
    for folded, index in _variants(text):
        _candidates(folded, index, config, candidates)
    candidates.sort()
    merged: list[list] = []  # [start, end, (precedence, -length), kind]
    for start, end, precedence, kind in candidates:
        rank = (precedence, start - end)
        if merged and start < merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], end)
            if rank < last[2]:
                last[2], last[3] = rank, kind
        else:
            merged.append([start, end, rank, kind])
    return [PiiMatch(kind, start, end) for start, end, _, kind in merged]


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
