"""Readers for NER data: CoNLL column files, JSONL `tokens`+`tags`, and JSONL `text`+character-offset `entities`.

Every sentence becomes an `Example` whose `extra` is a `NerSentence`: words,
their character offsets into `Example.text`, and entity spans over words. The
tag scheme of a file is only needed while reading it (to validate and parse
its tags); afterwards all tasks code works on spans, so BIO, BIOES and BMES
files train the same way.

Like `readers.py`, the readers decode line by line (one bad byte costs one
sentence), keep the line of every token, and collect every problem instead of
stopping at the first. Broken continuations (`I-X` after `O`) are warnings,
read leniently as conlleval does, and are summarised per file rather than
repeated per token.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domaintune.data.readers import Example, Problem, _decode_lines, json_objects
from domaintune.tasks.ner_schemes import SCHEMES, Span, detect_scheme, tag_issues, to_spans

#: Suffixes read as JSONL under `format: auto`; every other file is read as a CoNLL column file.
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}

# Scripts written without spaces: every character is a word of its own.
_CJK = ("\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3040-\u30ff\u3100-\u312f\u31a0-\u31bf\u31f0-\u31ff"
        "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f")
_WORDS = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+|\S", re.UNICODE)
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_COLUMNS = re.compile(r"[ \t]+")  # ASCII blanks only: U+3000 and other Unicode spaces can be tokens in Chinese files


@dataclass(frozen=True)
class NerSentence:
    """One sentence: words, their (start, end) character offsets into the Example's text, and entity spans.

    `tags` keeps the file's own tags (None for `text`+`entities` input) and
    `lines` the line of every word in a CoNLL file, for precise problem reports.
    """

    words: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    spans: tuple[Span, ...]
    tags: tuple[str, ...] | None = None
    lines: tuple[int, ...] | None = None


def split_words(text: str, char_level: bool = False, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Word offsets of raw text: CJK characters one by one, runs of letters/digits, single punctuation marks.

    With `char_level` (a model trained on character-level Chinese files) every
    non-space character is a word, so prediction sees exactly the units the
    model was trained on (a digit run is then digits, as in the training files).
    """
    end = len(text) if end is None else end
    if char_level:
        return [(i, i + 1) for i in range(start, end) if not text[i].isspace()]
    return [(m.start(), m.end()) for m in _WORDS.finditer(text, start, end)]


def is_cjk(ch: str) -> bool:
    return bool(_CJK_CHAR.match(ch))


def sentence_from_words(words: list[str], spans: list[Span] | tuple = (), tags=None, lines=None) -> tuple[str, NerSentence]:
    """Text (words joined by single spaces) and the NerSentence with offsets into it."""
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), NerSentence(tuple(words), tuple(offsets), tuple(spans),
                                        tuple(tags) if tags is not None else None, tuple(lines) if lines else None)


def sentence_from_text(text: str, char_level: bool = False) -> NerSentence:
    """An unlabelled sentence from raw text, for prediction."""
    offsets = split_words(text, char_level)
    return NerSentence(tuple(text[s:e] for s, e in offsets), tuple(offsets), ())


def ner_format(path: Path, fmt: str) -> str:
    """`jsonl` or `conll` for a configured data.format (`tsv`/`txt` files are column files too)."""
    if fmt in ("jsonl", "conll"):
        return fmt
    if fmt in ("tsv", "auto"):
        return "jsonl" if fmt == "auto" and path.suffix.lower() in JSONL_SUFFIXES else "conll"
    return fmt  # csv / parquet: rejected by the caller


# ---- tags ------------------------------------------------------------------------------------------
@dataclass
class _Raw:
    """A sentence as read, before its tags are checked against the scheme."""

    words: list[str]
    tags: list[str] | None
    lines: list[int] | None
    line: int
    text: str | None = None
    spans: list[Span] | None = None
    offsets: list[tuple[int, int]] | None = None


def _check_tags(raw: list[_Raw], name: str, scheme: str, problems: list[Problem]) -> list[Example]:
    """Tag errors as problems (with the token's line), continuation issues as one summarised warning."""
    out: list[Example] = []
    warned: dict[str, list[int]] = {}
    for r in raw:
        if r.tags is None:  # text + entities: spans are already known
            out.append(Example(r.text, None, name, r.line, extra=NerSentence(
                tuple(r.words), tuple(r.offsets), tuple(r.spans))))
            continue
        bad = False
        for i, msg, is_error in tag_issues(r.tags, scheme):
            line = r.lines[i] if r.lines else r.line
            if is_error:
                bad = True
                problems.append(Problem(name, line, msg, f"use {'/'.join(sorted(SCHEMES[scheme]))} tags "
                                        f"(e.g. B-PER) or set data.tag_scheme to the file's scheme"))
            else:
                kind = "continue an entity that was not opened" if "continues" in msg else "leave an entity unclosed"
                warned.setdefault(kind, []).append(line)
        if bad:
            continue
        text, sent = sentence_from_words(r.words, to_spans(r.tags, scheme), r.tags, r.lines)
        out.append(Example(text, None, name, r.line, extra=sent))
    for kind, lines in warned.items():
        shown = ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")
        problems.append(Problem(name, lines[0], f"{len(lines)} {scheme} tag(s) {kind} (lines {shown}); "
                                f"read leniently (such a tag opens or ends an entity, as conlleval does)",
                                "check these tags if the file should be a strict " + scheme, warning=True))
    return out


# ---- CoNLL -----------------------------------------------------------------------------------------
def _read_conll(text: str, name: str, delimiter: str | None, bad: set[int], problems: list[Problem]) -> list[_Raw]:
    rows: list[tuple[int, list[str] | None]] = []  # (line, columns) or (line, None) for a sentence break
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r\n")
        if i in bad:
            rows.append((i, ["\0bad"]))
            continue
        if not line.strip(" \t"):
            rows.append((i, None))
            continue
        cols = line.split(delimiter) if delimiter else _COLUMNS.split(line.strip(" \t"))
        if cols[0] == "-DOCSTART-":
            rows.append((i, None))
            continue
        rows.append((i, cols))
    widths = Counter(len(c) for _, c in rows if c is not None and c != ["\0bad"])
    if not widths:
        problems.append(Problem(name, None, "file has no tokens",
                                "write one `token tag` per line with a blank line between sentences"))
        return []
    width = widths.most_common(1)[0][0]
    sep = repr(delimiter) if delimiter else "spaces/tabs"
    if width < 2:
        problems.append(Problem(name, None, f"lines have {width} column(s); need a token and a tag",
                                f"write `token{' ' if not delimiter else delimiter}tag` per line, or set data.delimiter"))
        return []
    out: list[_Raw] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    broken = False

    def flush() -> None:
        nonlocal words, tags, lines, broken
        if words and not broken:
            out.append(_Raw(words, tags, lines, lines[0]))
        words, tags, lines, broken = [], [], [], False

    for i, cols in rows:
        if cols is None:
            flush()
            continue
        if cols == ["\0bad"]:
            broken = True  # already reported by the decoder
            continue
        if len(cols) != width:
            problems.append(Problem(name, i, f"line has {len(cols)} columns, the rest of the file has {width} "
                                    f"(separator: {sep})",
                                    "a token must not contain the separator: fix this line, or set data.delimiter "
                                    "(e.g. '\\t') so that spaces stay inside tokens"))
            broken = True
            continue
        token, tag = cols[0], cols[-1].strip()
        if not token.strip() and delimiter:
            problems.append(Problem(name, i, "empty token", "write the token before the separator, or remove the line"))
            broken = True
            continue
        if not tag:
            problems.append(Problem(name, i, "empty tag", "write a tag such as O or B-PER after the token"))
            broken = True
            continue
        words.append(token)
        tags.append(tag)
        lines.append(i)
    flush()
    return out


# ---- JSONL -----------------------------------------------------------------------------------------
def _entity(item: Any) -> tuple[Any, Any, Any] | None:
    if isinstance(item, dict):
        return item.get("start"), item.get("end"), item.get("label", item.get("type"))
    if isinstance(item, (list, tuple)) and len(item) == 3:
        return item[0], item[1], item[2]
    return None


def _text_entities(obj: dict, text_key: str, name: str, line: int, problems: list[Problem]) -> _Raw | None:
    text, ents = obj[text_key], obj.get("entities", [])
    if not isinstance(text, str) or not text.strip():
        problems.append(Problem(name, line, f"empty or non-text {text_key!r}", "give the sentence as a non-empty string"))
        return None
    if not isinstance(ents, list):
        problems.append(Problem(name, line, "'entities' is not a list", 'write "entities": [{"start": 0, "end": 2, "label": "PER"}]'))
        return None
    n_before = len(problems)
    spans_chr: list[tuple[int, int, str]] = []
    for k, item in enumerate(ents):
        e = _entity(item)
        if e is None:
            problems.append(Problem(name, line, f"entity {k}: {str(item)[:60]!r} is not {{start, end, label}}",
                                    'write {"start": 0, "end": 2, "label": "PER"} (end exclusive)'))
            continue
        s, t, lab = e
        if not (isinstance(s, int) and isinstance(t, int)) or isinstance(s, bool) or isinstance(t, bool):
            problems.append(Problem(name, line, f"entity {k}: start/end must be integers, got {s!r}, {t!r}",
                                    "give character offsets as integers"))
        elif not (0 <= s < t <= len(text)):
            problems.append(Problem(name, line, f"entity {k} ({lab}) offsets {s}..{t} fall outside the text "
                                    f"(length {len(text)}) or are empty",
                                    "offsets count characters (not bytes) from 0, end exclusive: 0 <= start < end <= len(text)"))
        elif not isinstance(lab, str) or not lab.strip() or lab.strip() == "O":
            problems.append(Problem(name, line, f"entity {k}: label {lab!r} is not an entity type",
                                    "give a type name such as PER or ORG"))
        elif not text[s:t].strip():
            problems.append(Problem(name, line, f"entity {k} ({lab}) covers only whitespace ({s}..{t})",
                                    "fix the offsets"))
        else:
            spans_chr.append((s, t, lab.strip()))
    spans_chr.sort()
    for a, b in zip(spans_chr, spans_chr[1:]):
        if b[0] < a[1]:
            problems.append(Problem(name, line, f"entities overlap: {a[2]} {a[0]}..{a[1]} and {b[2]} {b[0]}..{b[1]}",
                                    "flat NER needs non-overlapping entities: keep one of them"))
    if len(problems) > n_before:
        return None
    # Cut words at entity boundaries too, so every word is wholly inside or outside an entity.
    cuts = sorted({0, len(text), *(s for s, _, _ in spans_chr), *(t for _, t, _ in spans_chr)})
    offsets = [o for a, b in zip(cuts, cuts[1:]) for o in split_words(text, start=a, end=b)]
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    spans: list[Span] = []
    for s, t, lab in spans_chr:
        s2 = s + len(text[s:t]) - len(text[s:t].lstrip())
        t2 = t - (len(text[s:t]) - len(text[s:t].rstrip()))
        spans.append((starts[s2], ends[t2] + 1, lab))
    return _Raw([text[a:b] for a, b in offsets], None, None, line, text, spans, offsets)


def _read_jsonl(text: str, name: str, text_key: str, bad: set[int], problems: list[Problem]) -> list[_Raw]:
    out: list[_Raw] = []
    for i, obj in json_objects(text.split("\n"), name, problems, '{"tokens": [...], "tags": [...]}', bad):
        if "tokens" in obj:
            toks, tags = obj.get("tokens"), obj.get("tags", obj.get("ner_tags"))
            if not isinstance(toks, list) or not toks:
                problems.append(Problem(name, i, "'tokens' is empty or not a list", "give the words as a non-empty list"))
            elif not isinstance(tags, list) or len(tags) != len(toks):
                problems.append(Problem(name, i, f"'tags' must be a list as long as 'tokens' ({len(toks)}), "
                                        f"got {type(tags).__name__}{f' of {len(tags)}' if isinstance(tags, list) else ''}",
                                        "give one tag per token"))
            elif not all(isinstance(t, str) and t.strip() for t in toks):
                problems.append(Problem(name, i, "every token must be a non-empty string", "remove empty tokens"))
            elif not all(isinstance(t, str) for t in tags):
                problems.append(Problem(name, i, "tags must be strings such as 'B-PER' (not numbers)",
                                        "map tag ids to their names before writing the file"))
            else:
                out.append(_Raw(list(toks), [t.strip() for t in tags], None, i))
            continue
        key = text_key if text_key in obj else "text"
        if key in obj:
            r = _text_entities(obj, key, name, i, problems)
            if r is not None:
                out.append(r)
            continue
        problems.append(Problem(name, i, f"neither 'tokens' + 'tags' nor {key!r} + 'entities' (keys: {sorted(obj)})",
                                'write {"tokens": [...], "tags": [...]} or {"text": "...", "entities": [...]}'))
    return out


def read_ner(path: str | Path, fmt: str, delimiter: str | None, encoding: str, text_key: str,
             scheme: str | None, problems: list[Problem]) -> tuple[list[Example], str | None]:
    """Read one NER file; return its sentences and the tag scheme used (`scheme`, or detected when None)."""
    p, name = Path(path), str(path)
    if not p.is_file():
        problems.append(Problem(name, None, "file not found", "check data.train/dev/test; relative paths start from the current directory"))
        return [], scheme
    kind = ner_format(p, fmt)
    if kind not in ("conll", "jsonl"):
        problems.append(Problem(name, None, f"task ner reads CoNLL column files or JSONL, not {fmt}",
                                "set data.format to conll or jsonl (or auto)"))
        return [], scheme
    text, bad = _decode_lines(p.read_bytes(), name, encoding, problems)
    raw = _read_conll(text, name, delimiter, bad, problems) if kind == "conll" else _read_jsonl(text, name, text_key, bad, problems)
    tagged = [r.tags for r in raw if r.tags is not None]
    if scheme is None and tagged:
        suffix = p.suffix.lower().lstrip(".")
        scheme = detect_scheme(tagged, {"bmes": "BMES", "bioes": "BIOES", "iobes": "BIOES", "bio": "BIO", "iob": "BIO"}.get(suffix))
    if not raw and not [q for q in problems if q.file == name]:
        problems.append(Problem(name, None, "file has no sentences", "check the path and data.format"))
    return _check_tags(raw, name, scheme or "BIO", problems), scheme
