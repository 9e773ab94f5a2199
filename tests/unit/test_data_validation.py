"""Data problems are reported all at once, each with file, line and a fix."""

import json
from pathlib import Path

import pytest

from domaintune.config import load_config
from domaintune.data import DataError, ReadOptions, prepare_data, read_examples


def cfg_for(train, test=None, dev=None, **data):
    sets = [f"data.train={train}"] + ([f"data.test={test}"] if test else []) + ([f"data.dev={dev}"] if dev else [])
    sets += [f"data.{k}={v}" for k, v in data.items()]
    return load_config(None, sets)


def rows(n=4, labels=("a", "b")):
    return "".join(f"text number {i} for {l},{l}\n" for l in labels for i in range(n))


def test_missing_file_and_column(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("body,label\n" + rows(), encoding="utf-8")
    with pytest.raises(DataError) as e:
        prepare_data(cfg_for(train, test=tmp_path / "nope.csv"))
    msg = str(e.value)
    assert f"{train}:1: no text column 'text'" in msg and "body" in msg
    assert "nope.csv: file not found" in msg
    assert "2 data problems" in msg  # both reported in one message


def test_invalid_utf8_row_named_by_line(tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes(("text,label\n" + rows()).encode() + b"bad \xff\xfe bytes,a\n")
    with pytest.raises(DataError) as e:
        prepare_data(cfg_for(train))
    assert f"{train}:10: bytes not valid utf-8" in str(e.value)
    assert "data.encoding" in str(e.value)


def test_unseen_label_small_class_and_empty_cells(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + rows() + "only one of these,lonely\n,a\nsome text,\n", encoding="utf-8")
    test = tmp_path / "test.csv"
    test.write_text("text,label\nhello,a\n客户投诉物流太慢,投诉\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        prepare_data(cfg_for(train, test=test))
    msg = str(e.value)
    assert f"{train}:11: empty text" in msg
    assert f"{train}:12: empty label" in msg
    # the one-example class is reported after reading
    with pytest.raises(DataError) as e:
        prepare_data(cfg_for(tmp_path / "ok.csv" if False else _clean(tmp_path, train), test=test))
    msg = str(e.value)
    assert "class 'lonely' has only 1 training example" in msg
    assert f"{test}:3: test label '投诉' never appears in train" in msg


def _clean(tmp_path: Path, train: Path) -> Path:
    lines = [l for l in train.read_text(encoding="utf-8").splitlines() if not l.startswith(",") and not l.endswith(",")]
    p = tmp_path / "clean.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_overlap_is_a_warning_with_count(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + rows(), encoding="utf-8")
    test = tmp_path / "test.csv"
    test.write_text("text,label\ntext number 0 for a,a\ntext number 1 for b,b\nfresh,a\n", encoding="utf-8")
    splits = prepare_data(cfg_for(train, test=test))
    assert any("2 test text(s) also appear in train" in str(w) for w in splits.warnings)


def test_bom_at_delimiter_no_header_splits_on_surplus(tmp_path):
    """financial_phrasebank's shape: `sentence@label`, UTF-8 BOM, an '@' inside a sentence."""
    p = tmp_path / "fpb.txt"
    p.write_bytes("\ufeffProfit rose 5 % ,positive@positive\nEmail ir@company.com for details@neutral\n".encode("utf-8"))
    ex = read_examples(p, ReadOptions(format="csv", text_column=0, label_column=1, delimiter="@", has_header=False), [])
    assert [(e.text, e.label) for e in ex] == [("Profit rose 5 % ,positive", "positive"),
                                                ("Email ir@company.com for details", "neutral")]


def test_tsv_label_first_and_quotes(tmp_path):
    p = tmp_path / "c.tsv"
    p.write_text('label\ttext_a\n1\t这家酒店"很好"，推荐\n0\t房间太小\n', encoding="utf-8")
    ex = read_examples(p, ReadOptions(text_column="text_a", label_column="label"), [])
    assert [(e.text, e.label, e.line) for e in ex] == [('这家酒店"很好"，推荐', "1", 2), ("房间太小", "0", 3)]


def test_jsonl_and_parquet(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text(json.dumps({"text": "机器停机", "label": "故障"}, ensure_ascii=False) + "\n{not json}\n", encoding="utf-8")
    problems = []
    ex = read_examples(j, ReadOptions(), problems)
    assert ex[0].label == "故障" and any(p.line == 2 and "not valid JSON" in p.message for p in problems)
    import pandas as pd

    pq = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a b", "c d"], "y": [1, 2]}).to_parquet(pq)
    ex = read_examples(pq, ReadOptions(label_column="y"), [])
    assert [(e.text, e.label) for e in ex] == [("a b", "1"), ("c d", "2")]


def test_many_problems_one_message(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(",x\n" for _ in range(50)) + rows(), encoding="utf-8")
    with pytest.raises(DataError) as e:
        prepare_data(cfg_for(train))
    msg = str(e.value)
    assert msg.startswith("50 data problems") and "and 20 more" in msg
