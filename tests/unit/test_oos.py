"""Out-of-scope detection: threshold selection, metrics and the classification task's OOS behaviour (no training)."""

import json

import numpy as np
import pytest
import torch

from domaintune.config import DataConfig
from domaintune.data.readers import Example
from domaintune.evaluation.oos import MAX_IN_SCOPE_DROP, decide, oos_metrics, select_threshold
from domaintune.tasks import get_task
from domaintune.tasks.classification import OOS_HEADLINE


def test_threshold_maximises_mean_of_in_scope_accuracy_and_oos_recall():
    # 10 in-scope rows (all right), confidences 0.55..1.0; 4 OOS rows at 0.2, 0.3, 0.4, 0.9.
    conf = [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 0.2, 0.3, 0.4, 0.9]
    correct = [True] * 10 + [False] * 4
    is_oos = [False] * 10 + [True] * 4
    chosen = select_threshold(conf, correct, is_oos, max_drop=0.5)
    # abstaining below 0.5 catches 3/4 OOS at no in-scope cost; going further costs more in-scope than it wins
    assert 0.4 < chosen["threshold"] <= 0.55
    assert chosen["in_scope_accuracy"] == 1.0 and chosen["oos_recall"] == 0.75
    assert chosen["objective"] == pytest.approx(0.875)


def test_threshold_respects_the_in_scope_accuracy_cap():
    rng = np.random.default_rng(0)
    conf_in, conf_oos = rng.uniform(0.3, 1.0, 500), rng.uniform(0.0, 0.8, 100)
    conf = np.r_[conf_in, conf_oos]
    correct = np.r_[conf_in > 0.35, np.zeros(100, bool)]  # low-confidence in-scope rows are wrong anyway
    is_oos = np.r_[np.zeros(500, bool), np.ones(100, bool)]
    capped = select_threshold(conf, correct, is_oos)
    free = select_threshold(conf, correct, is_oos, max_drop=1.0)
    assert capped["in_scope_accuracy"] >= capped["in_scope_accuracy_never_abstain"] - MAX_IN_SCOPE_DROP - 1e-9
    assert free["objective"] >= capped["objective"] and free["in_scope_accuracy"] < capped["in_scope_accuracy"]
    # the chosen threshold really gives the reported dev figures
    pred_ok = (conf >= capped["threshold"]) & correct
    assert pred_ok[~is_oos].mean() == pytest.approx(capped["in_scope_accuracy"])
    assert (conf[is_oos] < capped["threshold"]).mean() == pytest.approx(capped["oos_recall"])


def test_no_oos_rows_in_dev_means_never_abstain():
    chosen = select_threshold([0.9, 0.4], [True, False], [False, False])
    assert chosen["threshold"] == 0.0 and "no out-of-scope" in chosen["reason"]


def test_oos_metrics_by_hand():
    names = ["退款", "查询余额", "oos"]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.6, 0.4], [0.8, 0.2]])
    y = [0, 1, 0, 2, 2]
    m = oos_metrics(y, probs, 0.58, names, oos_id=2)
    # row 2 (in-scope, 0.55) abstains -> wrong; row 3 (OOS, 0.6) is claimed by 退款; row 4 (OOS, 0.8) too
    assert m["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert m["oos_recall"] == 0.0 and m["oos_precision"] == 0.0 and m["abstain_rate"] == pytest.approx(0.2)
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["per_class"]["退款"] == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4), "support": 2}
    assert set(m["per_class"]) == set(names) and "confusion_matrix" not in m
    # macro F1 averages the in-scope classes only: (0.4 + 1.0) / 2
    assert m["macro_f1"] == pytest.approx(0.7)
    m2 = oos_metrics(y, probs, 0.85, names, oos_id=2)
    assert m2["oos_recall"] == 1.0 and m2["in_scope_accuracy"] == pytest.approx(1 / 3) and m2["oos_auroc"] == pytest.approx(0.5)


def test_decide_with_a_model_oos_class():
    pred, conf, abstain = decide(np.array([[0.2, 0.7, 0.1], [0.6, 0.1, 0.3]]), 0.5, oos_class=1)
    assert abstain.tolist() == [True, False] and conf.tolist() == [0.2, 0.6]


def _ex(label, line, source="train.csv"):
    return Example(f"text {line}", label, source, line)


def _oos_task():
    task = get_task("classification")
    task._set_oos("oos")
    return task


def test_read_enables_oos_only_when_configured(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nrefund please,退款\nweather on mars,oos\n", encoding="utf-8")
    plain = get_task("classification")
    plain.read(path, DataConfig(), [])
    assert plain.oos_label is None and plain.headline == ("accuracy", "macro_f1", "weighted_f1")
    assert plain.state() == {"labels": []}
    task = get_task("classification")
    assert len(task.read(path, DataConfig(oos_label="oos"), [])) == 2
    assert task.oos_label == "oos" and task.headline == OOS_HEADLINE


def test_check_and_fit_treat_the_oos_label_as_no_intent():
    task = _oos_task()
    train = [_ex("退款", 2), _ex("退款", 3), _ex("余额", 4), _ex("余额", 5), _ex("oos", 6)]
    dev = [_ex("oos", 2, "dev.csv"), _ex("余额", 3, "dev.csv")]
    test = [_ex("oos", 2, "test.csv"), _ex("转账", 3, "test.csv")]
    problems = []
    task.check(train, {"dev": dev, "test": test}, problems)
    assert [(p.file, p.line) for p in problems] == [("test.csv", 3)]  # 转账 unseen; one OOS train row is fine
    task.fit(train)
    assert task.labels == ["余额", "退款", "oos"] and task._oos_class() == 2  # OOS rows: one extra class, last
    assert task.targets(dev + test[:1]) == [2, 0, 2]
    no_oos_train = _oos_task()
    no_oos_train.fit(train[:4])
    assert no_oos_train.labels == ["余额", "退款"] and no_oos_train._oos_class() is None
    assert no_oos_train.targets(dev) == [2, 0]  # OOS gets the slot past the last class
    problems = []
    task.check(train, {"dev": [_ex("余额", 2, "dev.csv")], "test": []}, problems)
    assert len(problems) == 1 and problems[0].warning and "never abstain" in problems[0].message


def test_decode_abstains_below_threshold_with_reason_and_top_k():
    task = _oos_task()
    task.labels = ["余额", "退款", "转账"]
    task.oos_threshold = 0.52
    logits = torch.log(torch.tensor([[0.31, 0.29, 0.40], [0.1, 0.8, 0.1]]))
    out = task.decode(logits, top_k=2)
    assert out[0]["label"] is None and out[0]["reason"] == "out of scope: confidence 0.40 < threshold 0.52"
    assert [t["label"] for t in out[0]["top_k"]] == ["转账", "余额"]
    assert out[1]["label"] == "退款" and "reason" not in out[1]
    assert task.output_fields(out[0]) == {"label": None, "score": pytest.approx(0.40), "reason": out[0]["reason"]}
    assert "(abstain)" in task.format_prediction(out[0])
    state = json.loads(json.dumps(task.state()))
    other = get_task("classification")
    other.load_state(state)
    assert other.oos_label == "oos" and other.oos_threshold == 0.52 and other.headline == OOS_HEADLINE
    assert other.decode(logits)[0]["label"] is None


def test_decode_abstains_when_the_model_predicts_its_oos_class():
    task = _oos_task()
    task.labels, task.oos_threshold = ["余额", "退款", "oos"], 0.3
    out = task.decode(torch.log(torch.tensor([[0.2, 0.1, 0.7], [0.2, 0.75, 0.05]])), top_k=3)
    assert out[0]["label"] is None and out[0]["reason"] == "out of scope: the top class is 'oos' (0.70)"
    assert out[0]["top_k"][0]["label"] == "oos" and out[1]["label"] == "退款"


def test_threshold_selection_counts_forced_abstentions():
    # rows 0-2 in scope (row 2 predicted OOS class: forced), rows 3-4 OOS (row 4 forced)
    conf, correct = [0.9, 0.8, 0.95, 0.6, 0.99], [True, True, True, False, False]
    is_oos, forced = [False, False, False, True, True], [False, False, True, False, True]
    chosen = select_threshold(conf, correct, is_oos, max_drop=0.5, always_abstain=forced)
    assert chosen["in_scope_accuracy_never_abstain"] == pytest.approx(2 / 3)
    assert chosen["oos_recall"] == 1.0 and 0.6 < chosen["threshold"] <= 0.8


def test_check_known_accepts_oos_gold_labels():
    task = _oos_task()
    task.labels = ["余额", "退款"]
    problems = []
    task.check_known([_ex("oos", 2), _ex("余额", 3), _ex("转账", 4)], problems)
    assert [p.line for p in problems] == [4]
