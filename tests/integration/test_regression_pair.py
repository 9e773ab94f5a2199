"""Real training runs (packaged minilm-l6 / m3e-small, a few steps) for task: regression and task: pair."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

from domaintune.config import load_config
from domaintune.predictor import Predictor
from domaintune.run import train_run

ROOT = Path(__file__).resolve().parents[2]


def sales_module():
    """The synthetic sales generator shared with the benchmark (bench/make_sales_data.py)."""
    spec = importlib.util.spec_from_file_location("make_sales_data", ROOT / "bench" / "make_sales_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_numeric_features_beat_the_same_run_without_them(tmp_path):
    sales = sales_module()
    paths = sales.write_splits(tmp_path / "data", n_train=240, n_dev=40, n_test=100, seed=1)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in paths["train"].read_text(encoding="utf-8"))  # Chinese rows too
    common = ("task: regression\nmodel: minilm-l6\ndata:\n"
              f"  train: {paths['train']}\n  dev: {paths['dev']}\n  test: {paths['test']}\n"
              "  text_column: description\n  label_column: sales\n{feats}"
              "train:\n  max_steps: 16\n  batch_size: 16\n  lr: 1.0e-4\n  max_length: 24\n  log_every: 4\n")
    text_only = train_run(load_config(write_config(tmp_path / "text.yaml", (
        f"output_dir: {tmp_path / 'text_only'}\nbaseline: false\n" + common.replace("{feats}", "")))))
    with_feats = train_run(load_config(write_config(tmp_path / "feats.yaml", (
        f"output_dir: {tmp_path / 'features'}\nbaseline: true\n"
        + common.replace("{feats}", "  feature_columns: [price, week, store_m2]\n")))))

    for m in (text_only, with_feats):
        assert set(m["test"]) >= {"mae", "rmse", "r2", "pearson", "spearman"} and m["metric_for_best"] == "spearman"
    print("features", {k: round(v, 3) for k, v in with_feats["test"].items()}, "text only",
          {k: round(v, 3) for k, v in text_only["test"].items()}, {k: round(v["mae"], 3) for k, v in with_feats["baseline"].items()})
    assert with_feats["test"]["mae"] < text_only["test"]["mae"], (with_feats["test"], text_only["test"])
    assert with_feats["test"]["r2"] > text_only["test"]["r2"]
    base = with_feats["baseline"]
    assert set(base) == {"mean", "features_only", "frozen_ridge_text_only", "frozen_ridge"}
    assert base["frozen_ridge"]["mae"] < base["frozen_ridge_text_only"]["mae"]  # features help the frozen encoder too
    assert with_feats["test"]["mae"] < base["mean"]["mae"]

    run = tmp_path / "features"
    state = json.loads((run / "task.json").read_text())
    assert state["feature_columns"] == ["price", "week", "store_m2"] and len(state["feature_scaling"]["mean"]) == 3
    assert "standardised" in state["model_output"]
    assert (run / "model" / "regression_head.safetensors").is_file() and (run / "plots" / "predicted_vs_true.png").is_file()
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "plots/predicted_vs_true.png" in report and "text + features" in report and "`store_m2`" in report
    # No feature model: a plain HF regressor.
    assert not (tmp_path / "text_only" / "model" / "regression_head.json").exists()

    # Prediction undoes the target standardisation and needs the features.
    pred = Predictor(run)
    cheap, dear = pred.predict([{"text": "bottled spring water 6-pack", "features": {"price": 3.5, "week": 30, "store_m2": 2500}},
                                {"text": "矿泉水六瓶装", "price": 8.5, "week": 30, "store_m2": 400}])
    assert cheap["prediction"] > dear["prediction"] > -50  # on the sales scale, not the standardised one
    assert Predictor(tmp_path / "text_only").predict("dark chocolate gift box")[0]["prediction"] > 0
    with pytest.raises(ValueError, match="numeric features"):
        pred.predict("bottled spring water 6-pack")


def _sts_rows(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    subjects = ["A man", "A woman", "A child", "A dog", "Two people", "A cat"]
    actions = ["is playing a guitar", "is riding a horse", "is slicing an onion", "is running on the beach", "is cooking pasta"]
    rows = []
    for i in range(n):
        s, a = rng.choice(subjects), rng.choice(actions)
        kind = i % 3
        if kind == 0:
            other, score = f"{s} {a}.", rng.uniform(4.2, 5.0)
        elif kind == 1:
            other, score = f"{rng.choice(subjects)} {a}.", rng.uniform(2.0, 3.5)
        else:
            other, score = f"{rng.choice(subjects)} {rng.choice([x for x in actions if x != a])}.", rng.uniform(0.0, 1.2)
        rows.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score:.3f}\t{s} {a}.\t{other}")
    return rows


def test_pair_scoring_sts_layout(tmp_path):
    data = tmp_path / "sts.csv"
    data.write_text("\n".join(_sts_rows(60)) + "\n", encoding="utf-8")
    cfg = write_config(tmp_path / "sts.yaml", (
        f"task: pair\nmodel: minilm-l6\noutput_dir: {tmp_path / 'sts'}\nbaseline: true\n"
        f"data:\n  train: {data}\n  format: tsv\n  has_header: false\n  text_column: 5\n  text_pair_column: 6\n"
        "  label_column: 4\n  test_fraction: 0.2\n  dev_fraction: 0.15\n"
        "train:\n  max_steps: 6\n  batch_size: 8\n  lr: 1.0e-4\n  max_length: 32\n"))
    metrics = train_run(load_config(cfg))
    run = tmp_path / "sts"
    state = json.loads((run / "task.json").read_text())
    assert state["mode"] == "scoring" and metrics["metric_for_best"] == "spearman"
    assert "spearman" in metrics["test"] and "accuracy" not in metrics["test"]
    assert set(metrics["baseline"]) == {"mean", "frozen_ridge", "frozen_cosine"}
    assert metrics["baseline"]["frozen_cosine"]["spearman"] > 0.3  # the pretrained bi-encoder already ranks these pairs
    assert "mode **scoring" in (run / "report.md").read_text(encoding="utf-8")
    pred = Predictor(run).predict(("A man is playing a guitar.", "A man is playing a guitar."))
    assert set(pred[0]) == {"prediction"} and -1.0 < pred[0]["prediction"] < 6.0


def test_chinese_pair_classification(tmp_path):
    same = [("花呗怎么还款", "花呗如何还钱"), ("借呗可以提前还吗", "蚂蚁借呗能提前还款吗"), ("怎么开通花呗", "如何开通蚂蚁花呗"),
            ("花呗账单在哪里看", "在哪查看花呗账单"), ("借呗额度怎么提高", "如何提升借呗额度")]
    diff = [("花呗怎么还款", "余额宝收益怎么算"), ("借呗可以提前还吗", "花呗能分期吗"), ("怎么开通花呗", "借呗利息多少"),
            ("花呗账单在哪里看", "支付宝怎么转账"), ("借呗额度怎么提高", "花呗逾期会怎样")]
    rows = [f"{a}\t{b}\t1" for a, b in same] * 3 + [f"{a}\t{b}\t0" for a, b in diff] * 3
    data = tmp_path / "afqmc.txt"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = write_config(tmp_path / "afqmc.yaml", (
        f"task: pair\nmodel: m3e-small\noutput_dir: {tmp_path / 'afqmc'}\nbaseline: true\n"
        f"data:\n  train: {data}\n  format: tsv\n  has_header: false\n  text_column: 0\n  text_pair_column: 1\n"
        "  label_column: 2\n  test_fraction: 0.2\n  dev_fraction: 0.2\n"
        "train:\n  max_steps: 4\n  batch_size: 8\n  lr: 1.0e-4\n  max_length: 32\n"))
    metrics = train_run(load_config(cfg))
    assert json.loads((tmp_path / "afqmc" / "task.json").read_text())["mode"] == "classification"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and set(metrics["baseline"]) == {"majority", "frozen_linear", "frozen_cosine"}
    pred = Predictor(tmp_path / "afqmc").predict([("花呗怎么还款", "花呗如何还钱"), ("怎么开通花呗", "借呗利息多少")])
    assert [p["label"] in {"0", "1"} for p in pred] == [True, True] and 0.5 <= pred[0]["score"] <= 1.0


def test_pair_scoring_with_a_bi_encoder(tmp_path):
    """data.pair_encoder: bi - cosine of two embeddings; reloads identically, order-free, loads in sentence-transformers."""
    data = tmp_path / "sts.csv"
    data.write_text("\n".join(_sts_rows(60, seed=1)) + "\n", encoding="utf-8")
    cfg = write_config(tmp_path / "sts.yaml", (
        f"task: pair\nmodel: minilm-l6\noutput_dir: {tmp_path / 'bi'}\nbaseline: true\n"
        f"data:\n  train: {data}\n  format: tsv\n  has_header: false\n  text_column: 5\n  text_pair_column: 6\n"
        "  label_column: 4\n  test_fraction: 0.2\n  dev_fraction: 0.15\n  pair_encoder: bi\n"
        "train:\n  max_steps: 6\n  batch_size: 8\n  lr: 1.0e-4\n  max_length: 32\n"))
    metrics = train_run(load_config(cfg))
    run = tmp_path / "bi"
    assert json.loads((run / "task.json").read_text())["pair_encoder"] == "bi"
    assert json.loads((run / "model" / "domaintune_head.json").read_text())["kind"] == "pair_biencoder"
    assert set(metrics["baseline"]) == {"mean", "frozen_cosine"}
    pairs = [("A man is playing a guitar.", "A woman is cooking pasta."), ("A dog is riding a horse.", "A dog is riding a horse.")]
    predictor = Predictor(run)
    ab = [p["prediction"] for p in predictor.predict(pairs)]
    ba = [p["prediction"] for p in predictor.predict([(b, a) for a, b in pairs])]
    assert ab == pytest.approx(ba, abs=1e-4)
    assert ab[1] > ab[0]  # identical sentences score above unrelated ones
    # The tuned encoder is a sentence-transformers model too (mean pooling + normalisation files).
    from sentence_transformers import SentenceTransformer

    emb = SentenceTransformer(str(run / "model"), device="cpu").encode(["A cat sleeps.", "一只猫在睡觉。"])
    assert emb.shape == (2, 384)


def test_bi_encoder_rejects_class_labels(tmp_path):
    from domaintune.data import DataError

    data = tmp_path / "afqmc.tsv"
    data.write_text("花呗怎么还款\t花呗如何还钱\t1\n借呗额度怎么提升\t花呗可以分期吗\t0\n" * 10, encoding="utf-8")
    cfg = write_config(tmp_path / "c.yaml", (
        f"task: pair\noutput_dir: {tmp_path / 'c'}\ndata:\n  train: {data}\n  format: tsv\n  has_header: false\n"
        "  text_column: 0\n  text_pair_column: 1\n  label_column: 2\n  pair_encoder: bi\n"))
    with pytest.raises(DataError, match="pair_encoder"):
        train_run(load_config(cfg))
