"""NER tag schemes (BIO, BIOES, BMES): validation, detection, conversion and constrained decoding.

Everything goes through entity spans: a tag sequence in any scheme is read
into `(start, end, type)` spans (end exclusive, in words) and written back in
another scheme, so conversion is lossless for valid input and repairs invalid
continuations the way conlleval does (an `I-X` after `O` opens an entity).

Internally the model is trained on BIO when the user's files are BIO, and on
BIOES otherwise (BMES is BIOES with `M` for `I`, so the two share a label set
and seqeval's IOBES strict matching). Predicted sequences are decoded with a
Viterbi pass that forbids invalid transitions (no `I-X` after `O`, no `E-Y`
after `B-X`...): every prediction is then a well-formed entity sequence, and
the entities a user gets from `predict` are exactly the ones that are scored.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

SCHEMES: dict[str, frozenset[str]] = {
    "BIO": frozenset("BIO"),
    "BIOES": frozenset("BIOES"),
    "BMES": frozenset("BMESO"),
}
#: Order in which auto-detection breaks ties (BIO is the most common, BMES the most specific).
DETECT_ORDER = ("BIO", "BIOES", "BMES")

Span = tuple[int, int, str]  # (start word, end word exclusive, entity type)


def split_tag(tag: str) -> tuple[str, str | None]:
    """`B-creative-work` -> ('B', 'creative-work'); `O` -> ('O', None); a bare type -> ('', type).

    Only the first '-' separates: entity types may contain dashes (WNUT's `creative-work`).
    """
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or not kind or len(prefix) != 1:
        return "", tag
    return prefix, kind


def internal_scheme(scheme: str) -> str:
    """The scheme the model is trained on: BIO stays BIO, BIOES and BMES become BIOES."""
    return "BIO" if scheme == "BIO" else "BIOES"


def _continues(scheme: str) -> str:
    return "M" if scheme == "BMES" else "I"


def tag_issues(tags: Sequence[str], scheme: str) -> list[tuple[int, str, bool]]:
    """(index, message, is_error) for each tag: unknown prefixes are errors, broken continuations warnings.

    Continuation rules (an `I-X` must follow `B-X`/`I-X`, a `B-X` in BIOES must
    be closed by `E-X`...) are only warnings because many published corpora
    break them and every NER toolkit reads such files leniently.
    """
    allowed = SCHEMES[scheme]
    cont = _continues(scheme)
    out: list[tuple[int, str, bool]] = []
    prev_prefix, prev_type = "O", None
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix not in allowed:
            if prefix == "":
                msg = f"tag {tag!r} has no scheme prefix"
            else:
                msg = f"tag {tag!r} is not a {scheme} tag (prefixes {'/'.join(sorted(allowed))})"
            out.append((i, msg, True))
            prev_prefix, prev_type = "O", None
            continue
        open_entity = prev_prefix in ("B", cont) if scheme != "BIO" else prev_prefix in ("B", "I")
        if prefix in (cont, "E") and (not open_entity or prev_type != kind):
            out.append((i, f"{tag!r} continues an entity that was not opened (previous tag "
                           f"{'O' if prev_type is None else prev_prefix + '-' + prev_type})", False))
        elif scheme != "BIO" and open_entity and prefix not in (cont, "E"):
            out.append((i, f"{prev_prefix}-{prev_type} before {tag!r} is never closed with E-{prev_type}", False))
        prev_prefix, prev_type = prefix, kind
    if scheme != "BIO" and tags and prev_prefix in ("B", cont):
        out.append((len(tags) - 1, f"the sentence ends inside an entity ({prev_prefix}-{prev_type} needs E-{prev_type})", False))
    return out


def detect_scheme(sequences: Iterable[Sequence[str]], prefer: str | None = None) -> str:
    """The scheme under which the sequences have the fewest issues (errors count double); ties -> BIO first.

    Counting violations instead of looking for one telltale prefix means a BIO
    file with one stray `S-PER` is still read as BIO (and that tag reported),
    not as BIOES with hundreds of unclosed entities. `prefer` (from a file
    suffix such as `.bmes`) breaks ties: a BMES file whose entities are all
    one or two characters long is also valid BIOES.
    """
    seqs = list(sequences)
    cost = {}
    for scheme in DETECT_ORDER:
        errors = warnings = 0
        for tags in seqs:
            for _i, _msg, is_error in tag_issues(tags, scheme):
                errors += is_error
                warnings += not is_error
        cost[scheme] = errors * 2 + warnings
    return min(DETECT_ORDER, key=lambda s: (cost[s], s != prefer, DETECT_ORDER.index(s)))


def to_spans(tags: Sequence[str], scheme: str) -> list[Span]:
    """Entity spans from a tag sequence, read leniently (a continuation of another type opens a new entity)."""
    cont = _continues(scheme)
    spans: list[Span] = []
    start, kind = None, None

    def close(end: int) -> None:
        nonlocal start, kind
        if start is not None:
            spans.append((start, end, kind))
        start, kind = None, None

    for i, tag in enumerate(tags):
        prefix, t = split_tag(tag)
        if prefix == "O" or prefix == "":
            close(i)
        elif prefix == "S":
            close(i)
            spans.append((i, i + 1, t))
        elif prefix == "B":
            close(i)
            start, kind = i, t
        elif prefix in (cont, "E"):
            if start is None or kind != t:
                close(i)
                start, kind = i, t
            if prefix == "E":
                close(i + 1)
    close(len(tags))
    return spans


def from_spans(spans: Iterable[Span], n: int, scheme: str) -> list[str]:
    """A tag sequence of length `n` in `scheme` for non-overlapping spans."""
    cont = _continues(scheme)
    tags = ["O"] * n
    for start, end, kind in spans:
        if scheme == "BIO":
            tags[start] = f"B-{kind}"
            for j in range(start + 1, end):
                tags[j] = f"I-{kind}"
        elif end - start == 1:
            tags[start] = f"S-{kind}"
        else:
            tags[start] = f"B-{kind}"
            for j in range(start + 1, end - 1):
                tags[j] = f"{cont}-{kind}"
            tags[end - 1] = f"E-{kind}"
    return tags


def convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    return from_spans(to_spans(tags, source), len(tags), target)


def label_set(types: Iterable[str], scheme: str) -> list[str]:
    """All tags of `scheme` for `types`: `O` first, then each type's tags (id order of the model head)."""
    prefixes = {"BIO": "BI", "BIOES": "BIES", "BMES": "BMES"}[scheme]
    return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in prefixes]


def seqeval_scheme(scheme: str):
    """seqeval's scheme class for strict matching of sequences in `scheme` (BMES is scored as BIOES)."""
    from seqeval.scheme import IOB2, IOBES

    return IOB2 if scheme == "BIO" else IOBES


def transitions(labels: Sequence[str], scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allowed (start, pairwise, end) transitions between `labels` as boolean arrays, for Viterbi decoding."""
    parts = [split_tag(t) for t in labels]
    cont = _continues(scheme)
    inside = {"B", cont} if scheme != "BIO" else {"B", "I"}

    def can_follow(prev, cur) -> bool:
        (pp, pt), (cp, ct) = prev, cur
        if cp in (cont, "E"):
            return pp in inside and pt == ct
        if scheme != "BIO" and pp in inside:  # an open BIOES entity must be closed first
            return False
        return True

    n = len(labels)
    pair = np.array([[can_follow(parts[i], parts[j]) for j in range(n)] for i in range(n)], dtype=bool)
    start = np.array([p not in (cont, "E") for p, _ in parts], dtype=bool)
    end = np.array([scheme == "BIO" or p not in inside for p, _ in parts], dtype=bool)
    return start, pair, end


def viterbi(log_probs: np.ndarray, allowed: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[int]:
    """The most probable label path (by summed log-probabilities) that uses only allowed transitions."""
    start, pair, end = allowed
    n = log_probs.shape[0]
    if n == 0:
        return []
    neg = -1e9
    trans = np.where(pair, 0.0, neg)
    score = log_probs[0] + np.where(start, 0.0, neg)
    back = np.zeros((n, log_probs.shape[1]), dtype=np.int64)
    for i in range(1, n):
        cand = score[:, None] + trans          # prev x cur
        back[i] = cand.argmax(0)
        score = cand.max(0) + log_probs[i]
    score = score + np.where(end, 0.0, neg)
    path = [int(score.argmax())]
    for i in range(n - 1, 0, -1):
        path.append(int(back[i, path[-1]]))
    return path[::-1]
