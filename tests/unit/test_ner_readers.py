"""NER readers (CoNLL, JSONL tokens+tags, JSONL text+entities), bad input with file:line, word splitting and alignment."""

import json

import pytest
from transformers import AutoTokenizer

from domaintune.config import DataConfig
from domaintune.data import DataError, Example
from domaintune.data.ner_readers import read_ner, sentence_from_text, split_words
from domaintune.models import resolve_model
from domaintune.tasks import get_task

ACCEPTANCE = "张三在ABC科技有限公司任CTO，电话13800000000"


def read(path, scheme=None, fmt="auto", delimiter=None):
    problems = []
    exs, used = read_ner(path, fmt, delimiter, "utf-8", "text", scheme, problems)
    return exs, used, problems


def errors(problems):
    return [p for p in problems if not p.warning]


def test_conll_english_with_docstart(tmp_path):
    p = tmp_path / "train.conll"
    p.write_text("-DOCSTART-\tO\n\nEmpire\tB-location\nState\tI-location\nBuilding\tI-location\n=\tO\nESB\tB-location\n"
                 "\n\n\nJohn\tB-person\nsaid\tO\n", encoding="utf-8")
    exs, scheme, problems = read(p)
    assert scheme == "BIO" and not problems
    assert [e.line for e in exs] == [3, 11]
    first = exs[0]
    assert first.text == "Empire State Building = ESB" and first.source == str(p)
    assert first.extra.spans == ((0, 3, "location"), (4, 5, "location"))
    assert [first.text[s:e] for s, e in first.extra.offsets] == ["Empire", "State", "Building", "=", "ESB"]
    assert first.extra.lines == (3, 4, 5, 6, 7)


def test_conll2003_style_four_columns_use_the_last_as_tag(tmp_path):
    p = tmp_path / "eng.txt"
    p.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n", encoding="utf-8")
    exs, _, problems = read(p)
    assert not problems and exs[0].extra.spans == ((0, 1, "ORG"), (2, 3, "MISC"))


def test_chinese_bmes_character_file(tmp_path):
    chars = list("张三在ABC科技有限公司任CTO，电话13800000000")
    tags = (["B-NAME", "E-NAME", "O", "B-ORG"] + ["M-ORG"] * 7 + ["E-ORG", "O", "B-TITLE", "M-TITLE", "E-TITLE"]
            + ["O"] * 14)
    p = tmp_path / "train.char.bmes"
    p.write_text("\n".join(f"{c} {t}" for c, t in zip(chars, tags)) + "\n\n刘 S-NAME\n", encoding="utf-8")
    exs, scheme, problems = read(p)
    assert scheme == "BMES" and not problems
    sent = exs[0].extra
    assert sent.words == tuple(chars)
    assert ["".join(sent.words[s:e]) for s, e, _ in sent.spans] == ["张三", "ABC科技有限公司", "CTO"]
    assert [exs[0].text[sent.offsets[s][0]:sent.offsets[e - 1][1]] for s, e, _ in sent.spans][0] == "张 三"
    assert exs[1].extra.spans == ((0, 1, "NAME"),)


def test_jsonl_tokens_tags_and_text_entities(tmp_path):
    p = tmp_path / "train.jsonl"
    rows = [{"tokens": ["Ada", "Lovelace", "lived", "in", "London"], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]},
            {"text": ACCEPTANCE, "entities": [{"start": 0, "end": 2, "label": "NAME"},
                                              {"start": 3, "end": 12, "label": "ORG"}, [13, 16, "TITLE"]]},
            {"text": "Call ACMECorp today", "entities": [{"start": 5, "end": 9, "label": "ORG"}]}]
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    exs, scheme, problems = read(p)
    assert not problems and scheme == "BIO" and len(exs) == 3
    assert exs[0].extra.spans == ((0, 2, "PER"), (4, 5, "LOC"))
    zh = exs[1]
    assert zh.text == ACCEPTANCE
    got = [ACCEPTANCE[zh.extra.offsets[s][0]:zh.extra.offsets[e - 1][1]] for s, e, _ in zh.extra.spans]
    assert got == ["张三", "ABC科技有限公司", "CTO"]
    # An entity boundary inside a Latin run splits the word there, so the span stays exact.
    en = exs[2]
    (s, e, t), = en.extra.spans
    assert en.text[en.extra.offsets[s][0]:en.extra.offsets[e - 1][1]] == "ACME" and t == "ORG"


def test_bad_conll_lines_are_reported_with_file_and_line(tmp_path):
    p = tmp_path / "bad.conll"
    clean = "".join("New B-LOC\nYork I-LOC\nis O\n\n" for _ in range(3))
    p.write_bytes("Ada B-PER\nLovelace I-PER\nNew York B-LOC\n\nParis X-LOC\nis O\n\nLima S-LOC\n\n"
                  "Bob B-PER\n".encode() + b"caf\xe9 O\n" + f"Rome B-LOC\n\n{clean}".encode())
    exs, scheme, problems = read(p)
    msgs = {p_.line: str(p_) for p_ in errors(problems)}
    assert set(msgs) == {3, 5, 8, 11}, msgs
    assert "3 columns, the rest of the file has 2" in msgs[3] and f"{p}:3" in msgs[3]
    assert "'X-LOC' is not a BIO tag" in msgs[5] and "'S-LOC' is not a BIO tag" in msgs[8]
    assert "not valid utf-8" in msgs[11]
    assert scheme == "BIO" and [e.line for e in exs] == [14, 18, 22]  # only the clean sentences survive
    with pytest.raises(DataError) as err:
        raise DataError(problems)
    assert "4 data problems" in str(err.value)


def test_continuation_rules_are_only_warnings(tmp_path):
    p = tmp_path / "loose.conll"
    p.write_text("the O\nGreat I-ORG\nCorp I-ORG\n\nin O\nRome B-LOC\n", encoding="utf-8")
    exs, _, problems = read(p)
    assert not errors(problems) and len(problems) == 1 and problems[0].warning and problems[0].line == 2
    assert exs[0].extra.spans == ((1, 3, "ORG"),)


def test_bmes_tag_in_declared_bio_file(tmp_path):
    p = tmp_path / "mixed.conll"
    p.write_text("Ada B-PER\nLovelace I-PER\n\nLima M-LOC\n", encoding="utf-8")
    _, _, problems = read(p, scheme="BIO")
    (e,) = errors(problems)
    assert e.line == 4 and "'M-LOC' is not a BIO tag" in e.message


def test_bad_jsonl_entities(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = ['{"text": "Ada Lovelace", "entities": [{"start": 0, "end": 20, "label": "PER"}]}',
            '{"text": "Ada Lovelace", "entities": [{"start": 0, "end": 8, "label": "PER"}, {"start": 4, "end": 12, "label": "PER"}]}',
            '{"tokens": [], "tags": []}',
            '{"tokens": ["a", "b"], "tags": ["O"]}',
            '{"text": "", "entities": []}',
            'not json',
            '{"text": "fine Ada", "entities": [{"start": 5, "end": 8, "label": "PER"}]}']
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    exs, _, problems = read(p)
    msgs = {q.line: q.message for q in errors(problems)}
    assert set(msgs) == {1, 2, 3, 4, 5, 6}, msgs
    assert "outside the text" in msgs[1] and "overlap" in msgs[2] and "empty" in msgs[3] and "as long as" in msgs[4]
    assert len(exs) == 1 and exs[0].line == 7


def test_split_words_keeps_offsets():
    words = split_words(ACCEPTANCE)
    assert [ACCEPTANCE[s:e] for s, e in words][:6] == ["张", "三", "在", "ABC", "科", "技"]
    assert [ACCEPTANCE[s:e] for s, e in words][-4:] == ["，", "电", "话", "13800000000"]
    en = "Dr. O'Neil met  Acme-Corp in São Paulo!"
    assert [en[s:e] for s, e in split_words(en)] == ["Dr", ".", "O", "'", "Neil", "met", "Acme", "-", "Corp", "in",
                                                     "São", "Paulo", "!"]
    char = sentence_from_text(ACCEPTANCE, char_level=True)
    assert char.words == tuple(ACCEPTANCE) and all(ACCEPTANCE[s:e] == w for (s, e), w in zip(char.offsets, char.words))


# ---- the task on top of the readers --------------------------------------------------------------------
def test_unseen_dev_type_is_a_problem_and_fit_learns_the_scheme(tmp_path):
    train, dev = tmp_path / "train.bmes", tmp_path / "dev.bmes"
    train.write_text("张 B-NAME\n三 E-NAME\n在 O\n京 S-LOC\n\n李 B-NAME\n四 E-NAME\n\n沪 S-LOC\n", encoding="utf-8")
    dev.write_text("王 B-NAME\n五 E-NAME\n\n华 B-ORG\n为 E-ORG\n", encoding="utf-8")
    task, problems = get_task("ner"), []
    tr = task.read(train, DataConfig(), problems)
    dv = task.read(dev, DataConfig(), problems)
    task.check(tr, {"dev": dv}, problems)
    (p,) = errors(problems)
    assert p.file == str(dev) and p.line == 4 and "'ORG' never appears in train" in p.message
    task.fit(tr)
    assert task.scheme == "BMES" and task.internal == "BIOES" and task.char_level
    assert task.labels == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-NAME", "I-NAME", "E-NAME", "S-NAME"]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_model("minilm-l6")))


def test_first_subtoken_labels_and_windows_cover_every_word(minilm_tokenizer):
    task = get_task("ner")
    words = ("Unbelievably long sentence about Wolfeschlegelsteinhausen and Ouagadougou " * 6).split() + ["\u200b", "end"]
    text = " ".join(words)
    from domaintune.data.ner_readers import sentence_from_words

    text, sent = sentence_from_words(words, [(4, 5, "PER"), (len(words) - 3, len(words) - 2, "LOC")])
    ex = Example(text, None, extra=sent)
    task.scheme, task.types = "BIO", ["LOC", "PER"]
    task.labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    feats = task.encode(minilm_tokenizer, [ex], max_length=16)
    assert len(feats) > 3 and all(len(f["input_ids"]) <= 16 for f in feats)
    covered = {w for f in feats for w in f["words"]}
    assert covered == set(range(len(words)))  # the zero-width space became [UNK] and kept its place
    for f in feats:
        assert f["input_ids"][0] == minilm_tokenizer.cls_token_id and f["input_ids"][-1] == minilm_tokenizer.sep_token_id
        labelled = [i for i, l in enumerate(f["labels"]) if l != -100]
        assert labelled == f["pos"]  # only first sub-tokens carry labels
        for w, p in zip(f["words"], f["pos"]):
            assert f["labels"][p] == {4: 3, len(words) - 3: 1}.get(w, 0)
    # Overlap: some word appears in two windows; merging takes the more central one.
    import numpy as np

    per_feature = [np.full((len(f["input_ids"]), 5), float(i)) for i, f in enumerate(feats)]
    (merged,) = task.word_scores(per_feature, feats, [len(words)])
    for w in range(len(words)):
        cent = {i: f["cent"][f["words"].index(w)] for i, f in enumerate(feats) if w in f["words"]}
        assert cent[int(merged[w, 0])] == max(cent.values())
    assert any(sum(w in f["words"] for f in feats) > 1 for w in range(len(words)))


def test_capital_latin_letters_are_not_lost_as_unknown_tokens():
    """m3e-small has no capital letters in its vocabulary; char-level words are retried in lower case."""
    tok = AutoTokenizer.from_pretrained(str(resolve_model("m3e-small")))
    task = get_task("ner")
    task.scheme, task.types, task.labels, task.char_level = "BMES", ["ORG"], ["O", "B-ORG", "I-ORG", "E-ORG", "S-ORG"], True
    (feat,) = task.encode(tok, [Example(ACCEPTANCE, None)], max_length=64, with_targets=False)
    pieces = tok.convert_ids_to_tokens(feat["input_ids"])
    assert pieces[4:7] == ["a", "b", "c"] and tok.unk_token not in pieces
    assert feat["words"] == list(range(len(ACCEPTANCE)))
