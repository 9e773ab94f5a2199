"""Offline text augmentation of the training split (`augment:`): EDA edits, lexicon synonyms, typo noise.

EDA (Wei & Zou, 2019) showed that cheap label-preserving edits — random swap,
deletion, insertion and synonym replacement — help most when labelled data is
small. Each augmented copy gets ONE operation, drawn among the enabled ones
(as in EDA), so a copy stays close to its original:

* `swap`, `delete`, `insert`: share of the units (English: words; Chinese:
  characters, since no segmenter is needed for character-level edits)
  swapped, deleted, or inserted (a lexicon synonym of a unit, else a copy of one);
* `replace` with `synonyms: FILE`: share of the units replaced by a synonym from
  the user's lexicon (one group per line: `happy, glad, pleased` or
  `高兴 开心 快乐`); Chinese lexicon words are matched as substrings, English
  ones as whole words, case-insensitively;
* `char_noise`: typos — English letters swapped with their neighbour, dropped
  or doubled; Chinese characters dropped, doubled or swapped with a neighbour.

Only the training examples are augmented (copies appended after the
originals; dev and test never change), seeded by `train.seed`; copies equal to
their original are dropped. There is no back-translation: no translation model
is available offline. Tasks whose labels depend on token positions (NER) or on
the relation between two texts (pair, retrieval) are refused with a clear
error, since these edits would corrupt their labels. nlpaug/textattack offer
similar edits but pull large dependency trees (nltk/WordNet downloads) and
have no Chinese character mode, hence this small module.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import replace as dc_replace
from pathlib import Path

log = logging.getLogger("domaintune")

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_IS_CJK = re.compile(f"[{_CJK}]")
_GROUP_SPLIT = re.compile(r"[,，、;；|]")


def units(text: str) -> list[str]:
    """Words, with each Chinese character a unit of its own."""
    return _UNIT.findall(text)


def join(parts: list[str]) -> str:
    """Inverse of `units`: a space between two non-Chinese units only."""
    out = ""
    for p in parts:
        if out and not _IS_CJK.match(p) and not _IS_CJK.match(out[-1]):
            out += " "
        out += p
    return out


def load_lexicon(path: str | Path) -> list[list[str]]:
    """Synonym groups: one per line, comma (，、;|) separated, or whitespace separated; '#' starts a comment."""
    from domaintune.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"augment.synonyms: lexicon file {p} not found (one synonym group per line, e.g. "
                          f"'refund, reimbursement, money back' or '高兴 开心 快乐')")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: the synonym lexicon is not UTF-8 ({e}); re-save it as UTF-8") from None
    groups = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = [w.strip() for w in (_GROUP_SPLIT.split(line) if _GROUP_SPLIT.search(line) else line.split())]
        words = list(dict.fromkeys(w for w in words if w))
        if len(words) >= 2:
            groups.append(words)
    if not groups:
        raise ConfigError(f"{p}: no synonym group with at least two words found")
    return groups


class Augmenter:
    """Seeded EDA-style edits of one text at a time (see the module docstring)."""

    def __init__(self, section, synonyms: list[list[str]] | None = None):
        self.cfg = section
        if synonyms is None and section.synonyms:
            synonyms = load_lexicon(section.synonyms)
        self.syn: dict[str, list[str]] = {}
        for group in synonyms or []:
            for w in group:
                self.syn.setdefault(w.lower(), [])
                self.syn[w.lower()] += [o for o in group if o.lower() != w.lower() and o not in self.syn[w.lower()]]
        self.pattern = None
        if self.syn:
            alts = []
            for w in sorted(self.syn, key=len, reverse=True):
                e = re.escape(w)
                if re.match(r"\w", w, re.ASCII):  # English-like words match whole words only
                    e = r"(?<![A-Za-z0-9_])" + e
                if re.search(r"\w$", w, re.ASCII):
                    e = e + r"(?![A-Za-z0-9_])"
                alts.append(e)
            self.pattern = re.compile("|".join(alts), re.IGNORECASE)
        ops = [("swap", section.swap), ("delete", section.delete), ("insert", section.insert),
               ("char_noise", section.char_noise), ("replace", section.replace if self.syn else 0.0)]
        self.ops = [(name, rate) for name, rate in ops if rate > 0]
        if not self.ops:
            from domaintune.config import ConfigError

            raise ConfigError("augment.enabled is true but every operation rate is 0: set augment.swap, delete, "
                              "insert, char_noise, or replace with augment.synonyms")

    def augment(self, text: str, rng: random.Random) -> str:
        """One augmented version of `text`: ops tried in random order until one changes it."""
        ops = list(self.ops)
        rng.shuffle(ops)
        for name, rate in ops:
            new = getattr(self, "_" + name)(text, rate, rng)
            if new and new != text:
                return new
        return text

    @staticmethod
    def _count(n: int, rate: float) -> int:
        return max(1, round(rate * n))

    def _swap(self, text, rate, rng):
        parts = units(text)
        if len(parts) < 2:
            return text
        for _ in range(self._count(len(parts), rate)):
            i, j = rng.sample(range(len(parts)), 2)
            parts[i], parts[j] = parts[j], parts[i]
        return join(parts)

    def _delete(self, text, rate, rng):
        parts = units(text)
        if len(parts) < 2:
            return text
        keep = [p for p in parts if rng.random() >= rate]
        if len(keep) == len(parts):  # nothing drawn: delete one unit so the copy differs
            keep = list(parts)
            del keep[rng.randrange(len(keep))]
        return join(keep or [rng.choice(parts)])

    def _insert(self, text, rate, rng):
        parts = units(text)
        if not parts:
            return text
        for _ in range(self._count(len(parts), rate)):
            found = self._synonym_of_some_word(text, rng)
            word = found if found is not None else rng.choice(parts)
            parts.insert(rng.randrange(len(parts) + 1), word)
        return join(parts)

    def _synonym_of_some_word(self, text, rng):
        if self.pattern is None:
            return None
        matches = list(self.pattern.finditer(text))
        if not matches:
            return None
        return rng.choice(self.syn[rng.choice(matches).group(0).lower()])

    def _replace(self, text, rate, rng):
        if self.pattern is None:
            return text
        matches = list(self.pattern.finditer(text))
        if not matches:
            return text
        chosen = set(rng.sample(range(len(matches)), min(len(matches), self._count(len(units(text)), rate))))
        out, last = [], 0
        for k, m in enumerate(matches):
            if k in chosen:
                out += [text[last:m.start()], _match_case(rng.choice(self.syn[m.group(0).lower()]), m.group(0))]
                last = m.end()
        return "".join(out) + text[last:]

    def _char_noise(self, text, rate, rng):
        chars = list(text)
        idx = [i for i, c in enumerate(chars) if c.isalnum() or _IS_CJK.match(c)]
        if len(idx) < 2:
            return text
        picked = sorted({i for i in idx if rng.random() < rate} or {rng.choice(idx)}, reverse=True)
        for i in picked:  # right to left, so earlier indices stay valid
            op = rng.choice(("swap", "drop", "double"))
            if op == "swap" and i + 1 < len(chars) and not chars[i + 1].isspace():
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
            elif op == "drop":
                del chars[i]
            else:
                chars.insert(i, chars[i])
        return "".join(chars)


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def augment_examples(examples: list, section, seed: int, synonyms: list[list[str]] | None = None) -> list:
    """`examples` followed by `section.copies` augmented copies of each (labels unchanged; duplicates dropped)."""
    aug = Augmenter(section, synonyms)
    rng = random.Random(seed)
    out = list(examples)
    for ex in examples:
        seen = {ex.text}
        for _ in range(section.copies):
            new = aug.augment(ex.text, rng)
            if new not in seen:
                seen.add(new)
                out.append(dc_replace(ex, text=new))
    return out


def augment_training(task, examples: list, cfg) -> list:
    """The training examples with augmented copies when `augment.enabled`; unchanged otherwise."""
    section = cfg.augment
    if not section.enabled:
        return examples
    if not task.augmentable:  # declared by the task, with its reason (tasks/base.py)
        from domaintune.config import ConfigError
        from domaintune.tasks import task_names_where

        raise ConfigError(f"augment.enabled is true but task {task.name!r} cannot be augmented: "
                          f"{task.not_augmentable_reason}; set augment.enabled: false (augmentation works for "
                          f"{', '.join(task_names_where(lambda t: t.augmentable))})")
    out = augment_examples(examples, section, cfg.train.seed)
    log.info("augment: %d copies added to %d training examples (swap %s, delete %s, insert %s, char_noise %s, "
             "replace %s, lexicon %s)", len(out) - len(examples), len(examples), section.swap, section.delete,
             section.insert, section.char_noise, section.replace, section.synonyms)
    return out
