"""Tag schemes: round trips, validation, auto-detection, constrained decoding."""

import numpy as np
import pytest

from domaintune.tasks.ner_schemes import (convert, detect_scheme, from_spans, label_set, split_tag, tag_issues, to_spans,
                                          transitions, viterbi)

BIO = ["B-PER", "I-PER", "O", "B-ORG", "B-LOC", "I-LOC", "I-LOC", "O", "B-creative-work"]
BIOES = ["B-PER", "E-PER", "O", "S-ORG", "B-LOC", "I-LOC", "E-LOC", "O", "S-creative-work"]
BMES = ["B-PER", "E-PER", "O", "S-ORG", "B-LOC", "M-LOC", "E-LOC", "O", "S-creative-work"]
SPANS = [(0, 2, "PER"), (3, 4, "ORG"), (4, 7, "LOC"), (8, 9, "creative-work")]


def test_split_tag_keeps_dashes_in_types():
    assert split_tag("I-creative-work") == ("I", "creative-work")
    assert split_tag("O") == ("O", None)
    assert split_tag("PER") == ("", "PER")


@pytest.mark.parametrize("tags,scheme", [(BIO, "BIO"), (BIOES, "BIOES"), (BMES, "BMES")])
def test_spans_and_round_trips(tags, scheme):
    assert to_spans(tags, scheme) == SPANS
    assert from_spans(SPANS, len(tags), scheme) == tags
    assert tag_issues(tags, scheme) == []
    for other, expected in (("BIO", BIO), ("BIOES", BIOES), ("BMES", BMES)):
        assert convert(tags, scheme, other) == expected
        assert convert(convert(tags, scheme, other), other, scheme) == tags


def test_chinese_bmes_round_trip():
    chars = list("张三在ABC科技有限公司任CTO")
    tags = ["B-NAME", "E-NAME", "O"] + ["B-ORG"] + ["M-ORG"] * 7 + ["E-ORG", "O", "B-TITLE", "M-TITLE", "E-TITLE"]
    assert len(tags) == len(chars)
    spans = to_spans(tags, "BMES")
    assert ["".join(chars[s:e]) for s, e, _ in spans] == ["张三", "ABC科技有限公司", "CTO"]
    assert convert(convert(tags, "BMES", "BIO"), "BIO", "BMES") == tags


def test_invalid_tags_are_errors_and_broken_continuations_warnings():
    issues = tag_issues(["B-PER", "X-PER", "O", "M-LOC", "PER"], "BIO")
    assert [(i, err) for i, _m, err in issues] == [(1, True), (3, True), (4, True)]
    assert "not a BIO tag" in issues[0][1] and "no scheme prefix" in issues[2][1]
    warn = tag_issues(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"], "BIO")
    assert [(i, err) for i, _m, err in warn] == [(1, False), (4, False)]
    assert to_spans(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"], "BIO") == [(1, 3, "PER"), (3, 4, "LOC"), (4, 5, "ORG")]
    unclosed = tag_issues(["B-LOC", "M-LOC", "O"], "BMES")
    assert unclosed and not unclosed[0][2] and "never closed" in unclosed[0][1]
    assert tag_issues(["I-PER"], "BIOES")[0][2] is False


def test_detection_counts_violations_not_prefixes():
    assert detect_scheme([BIO, ["O", "B-PER", "I-PER"]]) == "BIO"
    assert detect_scheme([BIOES]) == "BIOES"
    assert detect_scheme([BMES]) == "BMES"
    # A BIO file with one stray S- tag stays BIO (the S- tag is then reported), not BIOES.
    assert detect_scheme([BIO, BIO, ["S-PER", "O"], ["B-PER", "O"], ["B-X", "I-X", "O"]]) == "BIO"


def test_viterbi_never_produces_invalid_sequences():
    labels = label_set(["LOC", "PER"], "BIOES")
    assert labels[0] == "O" and len(labels) == 9
    allowed = transitions(labels, "BIOES")
    rng = np.random.default_rng(0)
    for _ in range(50):
        lp = np.log(rng.dirichlet(np.ones(len(labels)), size=7))
        tags = [labels[i] for i in viterbi(lp, allowed)]
        assert tag_issues(tags, "BIOES") == [], tags
    # A greedy argmax of I-PER after O is repaired into a valid entity.
    bio = label_set(["PER"], "BIO")
    lp = np.log(np.array([[0.9, 0.05, 0.05], [0.1, 0.3, 0.6], [0.1, 0.2, 0.7]]))
    assert [bio[i] for i in viterbi(lp, transitions(bio, "BIO"))] == ["O", "B-PER", "I-PER"]
