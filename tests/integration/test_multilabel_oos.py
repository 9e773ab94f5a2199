"""Real MiniLM, a few steps: `task: multilabel` and out-of-scope detection end to end (run dir, Predictor, CLI, HF reload)."""

import csv
import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from conftest import write_csv
from data_multilabel import LABELS, OUT_OF_SCOPE, write_multilabel_splits
from domaintune.cli import app
from domaintune.config import load_config
from domaintune.evaluate import evaluate_run
from domaintune.predictor import Predictor
from domaintune.run import train_run

ML_TEXTS = ["the guard rail next to the press is missing; also please order two new drive belts",
            "三号线主电机突然停转，并且操作工差点在地面油渍上滑倒", "例行巡检完成，无异常"]
OOS_TEXTS = ["Breaker on the welding cell tripped twice this morning", "what is the capital of Australia", "给我讲个笑话"]


def _config(tmp, splits, out, extra_data=(), **train):
    settings = {"batch_size": 8, "lr": 3e-4, "max_length": 48, "log_every": 1, "max_steps": 14, "epochs": 2, **train}
    lines = ["model: minilm-l6", f"output_dir: {out}", "baseline: true", "data:",
             f"  train: {splits['train']}", f"  dev: {splits['dev']}", f"  test: {splits['test']}", *extra_data, "train:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    path = tmp / f"{out.name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    return write_multilabel_splits(tmp_path_factory.mktemp("ml_data"))


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, ml_data):
    root = tmp_path_factory.mktemp("ml_run")
    cfg = load_config(_config(root, ml_data, root / "ml"), ["task=multilabel"])
    train_run(cfg)
    return root / "ml"


@pytest.fixture(scope="module")
def oos_data(tmp_path_factory, demo_rows):
    keep = ("electrical_fault", "safety_incident", "spare_parts_request")
    rows = [r for r in demo_rows if r[1] in keep]
    random.Random(0).shuffle(rows)
    by = {k: [r for r in rows if r[1] == k] for k in keep}
    oos = [(t, "oos") for t in OUT_OF_SCOPE]
    root = tmp_path_factory.mktemp("oos_data")
    return {"train": write_csv(root / "train.csv", [r for k in keep for r in by[k][:24]] + oos[:4]),
            "dev": write_csv(root / "dev.csv", [r for k in keep for r in by[k][24:30]] + oos[4:8]),
            "test": write_csv(root / "test.csv", [r for k in keep for r in by[k][30:40]] + oos[8:])}


@pytest.fixture(scope="module")
def oos_run(tmp_path_factory, oos_data):
    root = tmp_path_factory.mktemp("oos_run")
    train_run(load_config(_config(root, oos_data, root / "oos", ["  oos_label: oos"], lr=1e-4)))
    return root / "oos"


# ---- multi-label


def test_multilabel_run_directory(ml_run):
    m = json.loads((ml_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["labels"] == sorted(LABELS) and m["headline"] == ["micro_f1", "macro_f1", "subset_accuracy"]
    for split in ("dev", "test"):
        for key in ("micro_f1", "macro_f1", "subset_accuracy"):
            assert 0.0 <= m[split][key] <= 1.0, (split, key)
        assert set(m[split]["per_class"]) == set(LABELS)
    assert m["metric_for_best"] == "micro_f1" and m["train"]["best_dev_metric"] is not None
    for name in ("majority", "frozen_linear"):
        assert "micro_f1" in m["baseline"][name]
    state = json.loads((ml_run / "task.json").read_text(encoding="utf-8"))
    assert set(state["thresholds"]) == set(LABELS) and state["separator"] == "|"
    assert all(0.0 < t < 1.0 for t in state["thresholds"].values())
    assert state["thresholds"] == m["calibration"]["thresholds"]
    losses = [r["loss"] for r in map(json.loads, (ml_run / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0], losses  # binary cross-entropy went down
    report = (ml_run / "report.md").read_text(encoding="utf-8")
    assert "Decision thresholds" in report and "| 设备故障 |" in report and "micro_f1 %" in report


def test_multilabel_profile_counts_each_label_of_a_text(ml_run, ml_data):
    from domaintune.monitoring.profile import load_profile
    from domaintune.tasks.multilabel import parse_labels

    profile = load_profile(ml_run)
    assert set(LABELS) <= set(profile.labels)
    rows = []
    for split in ("dev", "test"):
        with open(ml_data[split], encoding="utf-8", newline="") as f:
            rows += [parse_labels(r["label"]) for r in csv.DictReader(f)]
    for label in LABELS:  # gold share = fraction of reference texts carrying the label (not of label strings)
        assert profile.gold_share[label] == pytest.approx(sum(label in r for r in rows) / len(rows)), label
    assert sum(profile.predicted_share.values()) >= 1.0 - 1e-9   # every text counts once per label (or as "(none)")


def test_multilabel_predictor_matches_plain_transformers(ml_run):
    state = json.loads((ml_run / "task.json").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(ml_run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(ml_run / "model").eval()
    assert model.config.problem_type == "multi_label_classification"
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert labels == state["labels"]
    with torch.inference_mode():
        probs = torch.sigmoid(model(**tok(ML_TEXTS, padding=True, return_tensors="pt")).logits)
    preds = Predictor(ml_run).predict(ML_TEXTS)
    for pred, row in zip(preds, probs.tolist()):
        assert [pred["scores"][l] for l in labels] == pytest.approx(row, abs=1e-4)
        expected = sorted((l for l, p in zip(labels, row) if p >= state["thresholds"][l]), key=lambda l: -pred["scores"][l])
        assert [c["label"] for c in pred["labels"]] == expected and pred["label"] == "|".join(expected)


def test_multilabel_predict_file_and_evaluate(ml_run, ml_data, tmp_path):
    src = write_csv(tmp_path / "in.csv", [(i, t) for i, t in enumerate(ML_TEXTS)], header=("id", "text"))
    r = CliRunner().invoke(app, ["predict", str(ml_run), "--input", str(src), "--output", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert list(rows[0]) == ["id", "text", "labels", "scores"]
    assert [row["labels"] for row in rows] == Predictor(ml_run).predict_labels(ML_TEXTS)
    assert set(json.loads(rows[0]["scores"])) == set(LABELS)
    r = CliRunner().invoke(app, ["predict", str(ml_run), "--text", ML_TEXTS[1]])
    assert r.exit_code == 0 and "设备故障" in r.output, r.output
    m = json.loads((ml_run / "metrics.json").read_text(encoding="utf-8"))
    again = evaluate_run(ml_run, ml_data["test"])
    assert again["micro_f1"] == pytest.approx(m["test"]["micro_f1"], abs=1e-6)


# ---- out-of-scope


def test_oos_run_directory(oos_run):
    m = json.loads((oos_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["labels"][-1] == "oos" and len(m["labels"]) == 4  # OOS training rows: one extra class, last
    assert m["headline"][:2] == ["in_scope_accuracy", "oos_recall"]
    for key in ("in_scope_accuracy", "oos_recall", "accuracy", "macro_f1", "oos_auroc"):
        assert 0.0 <= m["test"][key] <= 1.0, key
    assert m["test"]["n_oos"] == 4 and m["test"]["n_in_scope"] == 30 and "oos" in m["test"]["per_class"]
    for name in ("majority", "frozen_linear"):
        assert "in_scope_accuracy" in m["baseline"][name] and "oos_recall" in m["baseline"][name]
    state = json.loads((oos_run / "task.json").read_text(encoding="utf-8"))
    assert state["oos_label"] == "oos" and isinstance(state["oos_threshold"], float)
    assert state["oos_threshold"] == m["calibration"]["oos_threshold"]["threshold"] == m["test"]["threshold"]
    report = (oos_run / "report.md").read_text(encoding="utf-8")
    assert "in_scope_accuracy %" in report and "## Out-of-scope detection" in report


def test_oos_predictor_abstains_below_the_saved_threshold(oos_run):
    p = Predictor(oos_run)
    thr = p.task.oos_threshold
    for pred in p.predict(OOS_TEXTS, top_k=2):
        assert len(pred["top_k"]) == 2
        if pred["top_k"][0]["label"] == "oos":  # the model's own OOS class
            assert pred["label"] is None and pred["reason"].startswith("out of scope: the top class is 'oos'")
        elif pred["score"] < thr:
            assert pred["label"] is None and pred["reason"].startswith("out of scope: confidence")
        else:
            assert pred["label"] in p.labels[:-1] and "reason" not in pred
    p.task.oos_threshold = 1.01  # nothing is that confident: every text abstains, top-k still given
    preds = p.predict(OOS_TEXTS, top_k=3)
    assert all(x["label"] is None and "out of scope" in x["reason"] and len(x["top_k"]) == 3 for x in preds)


def test_oos_evaluate_and_predict_file(oos_run, oos_data, tmp_path):
    m = json.loads((oos_run / "metrics.json").read_text(encoding="utf-8"))
    again = evaluate_run(oos_run, oos_data["test"])  # gold 'oos' rows are not "unknown labels"
    assert again["in_scope_accuracy"] == pytest.approx(m["test"]["in_scope_accuracy"])
    assert again["oos_recall"] == pytest.approx(m["test"]["oos_recall"])
    src = write_csv(tmp_path / "in.csv", [(i, t) for i, t in enumerate(OOS_TEXTS)], header=("id", "text"))
    r = CliRunner().invoke(app, ["predict", str(oos_run), "--input", str(src), "--output", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert list(rows[0]) == ["id", "text", "label", "score", "reason"]
    for row in rows:
        assert bool(row["label"]) != bool(row["reason"])  # either a label or the reason it abstained
    model = AutoModelForSequenceClassification.from_pretrained(oos_run / "model")
    assert model.config.num_labels == 4 and model.config.id2label[3] == "oos"  # plain HF predicts 'oos' too
