"""Multi-label task: label parsing, validation, splitting, thresholds, metrics and decoding (no training)."""

import json

import numpy as np
import pytest
import torch

from data_multilabel import FAULT, LABELS, PARTS, SAFETY, make_rows, write_csv
from domaintune.config import DataConfig
from domaintune.data.readers import Example
from domaintune.tasks import get_task
from domaintune.tasks.multilabel import multilabel_metrics, parse_labels, tune_thresholds


def test_parse_delimited_json_and_chinese_labels():
    assert parse_labels("设备故障|安全隐患") == ("设备故障", "安全隐患")
    assert parse_labels(" billing | refund |") == ("billing", "refund")  # blanks and a trailing separator are ignored
    assert parse_labels('["设备故障", "备件申请"]') == ("设备故障", "备件申请")
    assert parse_labels("[]") == ()  # an explicit empty list: no label
    assert parse_labels("a;b;a", separator=";") == ("a", "b")  # custom separator, duplicates dropped
    assert parse_labels("a|b", separator=";") == ("a|b",)
    for bad in ('["a", 3]', "[a, b", "|", '["a|b"]'):
        with pytest.raises(ValueError):
            parse_labels(bad)


def test_read_reports_every_bad_cell_with_its_line(tmp_path):
    path = write_csv(tmp_path / "t.csv", [("电机停转", "设备故障|安全隐患"), ("guard missing", '["安全隐患"]'),
                                          ("nothing", "[]"), ("broken json", '["安全隐患"'), ("only pipes", "||")])
    task, problems = get_task("multilabel"), []
    examples = task.read(path, DataConfig(), problems)
    assert [ex.extra for ex in examples] == [("设备故障", "安全隐患"), ("安全隐患",), ()]
    assert [(p.line, "JSON" in p.message) for p in problems] == [(5, True), (6, False)]
    assert all(p.fix for p in problems)


def _ex(labels, line, source="train.csv"):
    return Example(f"text {line}", "|".join(labels) if labels else "[]", source, line, extra=tuple(labels))


def test_check_flags_rare_and_unseen_labels_with_file_and_line():
    task = get_task("multilabel")
    train = [_ex([FAULT], 2), _ex([FAULT, SAFETY], 3), _ex([SAFETY], 4), _ex([PARTS], 5), _ex([], 6)]
    dev = [_ex(["漏油"], 7, "dev.csv"), _ex([FAULT], 8, "dev.csv")]
    problems = []
    task.check(train, {"dev": dev, "test": []}, problems)
    msgs = {(p.file, p.line): p.message for p in problems}
    assert ("train.csv", 5) in msgs and PARTS in msgs[("train.csv", 5)]  # only one example
    assert ("dev.csv", 7) in msgs and "never appears in train" in msgs[("dev.csv", 7)]
    assert len(problems) == 2


def test_split_is_seeded_and_keeps_two_training_rows_per_label():
    task = get_task("multilabel")
    examples = [_ex(list(labels), i) for i, labels in enumerate([[FAULT]] * 20 + [[SAFETY, PARTS]] * 3 + [[]] * 5)]
    train, held = task.split(examples, 0.3, seed=7)
    assert len(train) + len(held) == len(examples) and held
    assert sum(SAFETY in ex.extra for ex in train) >= 2 and sum(PARTS in ex.extra for ex in train) >= 2
    assert [ex.line for ex in held] == [ex.line for ex in task.split(examples, 0.3, seed=7)[1]]


def test_targets_collate_state_roundtrip():
    task = get_task("multilabel")
    rows = [Example(t, c, "x.csv", i) for i, (t, c) in enumerate(make_rows(40, seed=5))]
    rows = [Example(ex.text, ex.label, ex.source, ex.line, extra=parse_labels(ex.label)) for ex in rows]
    task.fit(rows)
    assert task.labels == sorted(LABELS) and set(task.thresholds.values()) == {0.5}
    feats = [{"input_ids": [1, 2, 3], "labels": t} for t in task.targets([_ex([SAFETY, FAULT], 1), _ex([], 2)])]
    batch = task.collate(feats, pad_id=0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].sum(1).tolist() == [2.0, 0.0]
    task.thresholds[SAFETY] = 0.25
    other = get_task("multilabel")
    other.load_state(json.loads(json.dumps(task.state(), ensure_ascii=False)))
    assert other.labels == task.labels and other.thresholds[SAFETY] == 0.25 and other.separator == "|"


def test_tune_thresholds_maximises_per_label_f1_and_falls_back_to_half():
    probs = np.array([[0.9, 0.2, 0.7], [0.8, 0.3, 0.1], [0.35, 0.1, 0.2], [0.3, 0.05, 0.6]])
    y = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 1]])
    t = tune_thresholds(probs, y)
    # label 0: positives score 0.9, 0.8, 0.35, the negative 0.3 -> cut between 0.35 and 0.3
    assert t[0] == pytest.approx(0.325)
    assert t[1] == 0.5  # no positive on dev: default
    # label 2: positives 0.7 and 0.6, negatives 0.2 and 0.1 -> cut between 0.6 and 0.2
    assert t[2] == pytest.approx(0.4)
    f1 = [multilabel_metrics(y, probs >= th, ["a", "b", "c"])["per_class"]["a"]["f1"] for th in (0.5, t)]
    assert f1[1] == 1.0 > f1[0]


def test_multilabel_metrics_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    m = multilabel_metrics(y, p, ["设备故障", "安全隐患"])
    # TP=3 (r0 a, r1 a, r2 b), FP=1 (r3 a), FN=1 (r1 b): micro P=R=F1=0.75
    assert m["micro_f1"] == pytest.approx(0.75)
    # label a: P=2/3 R=1 F1=0.8; label b: P=1 R=0.5 F1=2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["subset_accuracy"] == pytest.approx(0.5)  # rows 0 and 2 exactly right
    assert m["per_class"]["安全隐患"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


def test_decode_returns_every_label_above_its_own_threshold():
    task = get_task("multilabel")
    task.labels, task.separator = [PARTS, SAFETY, FAULT], "|"
    task.thresholds = {PARTS: 0.5, SAFETY: 0.3, FAULT: 0.9}
    out = task.decode_probs(np.array([[0.6, 0.35, 0.85], [0.1, 0.2, 0.3]]))
    assert [c["label"] for c in out[0]["labels"]] == [PARTS, SAFETY]  # best first; 设备故障 0.85 < 0.9
    assert out[0]["label"] == f"{PARTS}|{SAFETY}" and out[0]["scores"][FAULT] == pytest.approx(0.85)
    assert out[1]["labels"] == [] and out[1]["label"] == ""
    fields = task.output_fields(out[0])
    assert list(fields) == ["labels", "scores"] and fields["labels"] == f"{PARTS}|{SAFETY}"
    assert "(no label" in task.format_prediction(out[1])


def test_jsonl_label_lists_are_read_as_multilabel_cells(tmp_path):
    import json as _json

    from domaintune.data.readers import ReadOptions, read_examples
    from domaintune.tasks.multilabel import parse_labels

    p = tmp_path / "t.jsonl"
    rows = [{"text": "主轴异响且漏油", "label": ["设备故障", "安全隐患"]}, {"text": "weekly report attached", "label": []}]
    p.write_text("\n".join(_json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    problems = []
    ex = read_examples(p, ReadOptions(), problems)
    assert not problems
    assert parse_labels(ex[0].label) == ("设备故障", "安全隐患") and parse_labels(ex[1].label) == ()
